/**
 * Example price books reproducing the pricing SHAPES of real kinds of platforms (not their
 * exact prices), each with one sample event. Used by the docs and the unit tests.
 */
import type { PriceBookInput } from '../price-book.js';
import { freeSearchBook, freeSearchSample } from './free-search.js';
import { imageTiersBook, imageTiersSample } from './image-tiers.js';
import { passThroughBook, passThroughSample } from './pass-through.js';
import { premiumRequestsBook, premiumRequestsSample } from './premium-requests.js';
import { runtimeVoiceBook, runtimeVoiceSample } from './runtime-voice.js';
import { tokenMarkupBook, tokenMarkupSample } from './token-markup.js';
import type { ExampleEvent } from './types.js';
import { workflowBlocksBook, workflowBlocksSample } from './workflow-blocks.js';

export type { ExampleEvent } from './types.js';

/** Every example: a short id, the book, and a sample event it prices. */
export const EXAMPLE_PRICE_BOOKS: ReadonlyArray<{ id: string; book: PriceBookInput; sample: ExampleEvent }> = [
  { id: 'token-markup', book: tokenMarkupBook, sample: tokenMarkupSample },
  { id: 'premium-requests', book: premiumRequestsBook, sample: premiumRequestsSample },
  { id: 'runtime-voice', book: runtimeVoiceBook, sample: runtimeVoiceSample },
  { id: 'image-tiers', book: imageTiersBook, sample: imageTiersSample },
  { id: 'free-search', book: freeSearchBook, sample: freeSearchSample },
  { id: 'workflow-blocks', book: workflowBlocksBook, sample: workflowBlocksSample },
  { id: 'pass-through', book: passThroughBook, sample: passThroughSample },
];
