/**
 * The price book every integration/API test prices with (published by the global setup).
 * "unit" costs exactly 1 credit per event, so tests can count credits on their fingers.
 */
import type { PriceBookInput } from '../../src/pricing/price-book.js';

/** The test price book's input: flat, per-unit, free, per-token (the model's token price plus a markup, with a fallback in credits) and pass-through rules; amounts in credits as decimal strings. */
export const TEST_PRICE_BOOK: PriceBookInput = {
  name: 'test book',
  byokFeePercent: '5',
  rules: [
    { category: 'unit', kind: 'FLAT', credits: '1' },
    { category: 'unit', sku: 'half', kind: 'FLAT', credits: '0.5' },
    { category: 'units', kind: 'PER_UNIT', unit: 'units', credits: '1' },
    { category: 'free', kind: 'FREE' },
    { category: 'llm', kind: 'PER_TOKEN', model: 'gpt-4o-mini', markupPercent: '20' },
    { category: 'llm', kind: 'PER_TOKEN', markupPercent: '20', fallbackCredits: '2' },
    { category: 'voice', kind: 'PER_UNIT', unit: 'minutes', credits: '1' },
    { category: 'passthrough', kind: 'PASS_THROUGH', markupPercent: '10', fallbackCredits: '1' },
  ],
};
