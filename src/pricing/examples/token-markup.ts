/**
 * Shape: per-token pass-through plus markup. A chat or agent app that resells LLM tokens at
 * the provider's list price (from the genai-prices catalog) plus 20%, with cheaper markup on
 * its budget model. Prices come from the catalog, not from this file.
 */
import type { PriceBookInput } from '../price-book.js';
import type { ExampleEvent } from './types.js';

/** Example book: PER_TOKEN with markup. */
export const tokenMarkupBook: PriceBookInput = {
  name: 'Tokens at cost + 20%',
  byokFeePercent: '5',
  rules: [
    { category: 'llm', kind: 'PER_TOKEN', markupPercent: '20' },
    { category: 'llm', model: 'gpt-4o-mini', kind: 'PER_TOKEN', markupPercent: '10' },
    { category: 'llm', model: 'claude-sonnet-4-5', kind: 'PER_TOKEN', markupPercent: '20' },
  ],
};

/** A chat turn with cached context. */
export const tokenMarkupSample: ExampleEvent = {
  category: 'llm',
  model: 'claude-sonnet-4-5',
  quantities: { inputTokens: 2_000, cacheReadTokens: 10_000, outputTokens: 800 },
};
