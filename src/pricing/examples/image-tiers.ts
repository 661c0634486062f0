/**
 * Shape: per-image prices by quality tier. An image-generation app charging a number of
 * credits per image, more for "hd". Amounts are illustrative.
 */
import type { PriceBookInput } from '../price-book.js';
import type { ExampleEvent } from './types.js';

/** Example book: PER_UNIT units by tier. */
export const imageTiersBook: PriceBookInput = {
  name: 'Images by tier',
  rules: [
    { category: 'image', kind: 'PER_UNIT', unit: 'units', credits: '4' },
    { category: 'image', tier: 'standard', kind: 'PER_UNIT', unit: 'units', credits: '4' },
    { category: 'image', tier: 'hd', kind: 'PER_UNIT', unit: 'units', credits: '8' },
  ],
};

/** Four HD images in one request. */
export const imageTiersSample: ExampleEvent = {
  category: 'image',
  tier: 'hd',
  quantities: { units: '4' },
};
