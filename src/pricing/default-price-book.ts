/**
 * The price book a fresh creditpool server seeds (version 1) until an operator publishes
 * its own with `publishPriceBook`. It covers the categories of a typical agent platform:
 * llm, web_search, tool_call, image, voice and runtime.
 *
 * LLM calls are priced at the provider's catalog price (genai-prices, see catalog.ts) plus
 * 20%; the per-model rules name models that exist in the bundled catalog so that the model
 * picker (modelPrices) lists them. Non-LLM amounts are illustrative defaults, not any
 * provider's price.
 */
import { validatePriceBook, type PriceBookDraft, type PriceBookInput } from './price-book.js';

/** The default price book in the contract's PriceBookInput shape. */
export const DEFAULT_PRICE_BOOK_INPUT: PriceBookInput = {
  name: 'Default',
  byokFeePercent: '5',
  rules: [
    // Any LLM call: catalog price + 20%; 5 credits when the model is not in the catalog.
    { category: 'llm', kind: 'PER_TOKEN', markupPercent: '20', fallbackCredits: '5' },
    // Listed explicitly so the model picker shows them (all exist in the catalog).
    { category: 'llm', model: 'gpt-4o-mini', kind: 'PER_TOKEN', markupPercent: '20' },
    { category: 'llm', model: 'gpt-4o', kind: 'PER_TOKEN', markupPercent: '20' },
    { category: 'llm', model: 'claude-sonnet-4-5', kind: 'PER_TOKEN', markupPercent: '20' },
    { category: 'llm', model: 'kimi-k2', kind: 'PER_TOKEN', markupPercent: '20' },
    { category: 'web_search', kind: 'FREE' },
    { category: 'tool_call', kind: 'FLAT', credits: '0.1' },
    { category: 'tool_call', sku: 'code_execution', kind: 'FLAT', credits: '1' },
    { category: 'image', kind: 'PER_UNIT', unit: 'units', credits: '4' },
    { category: 'image', tier: 'hd', kind: 'PER_UNIT', unit: 'units', credits: '8' },
    { category: 'voice', kind: 'PER_UNIT', unit: 'minutes', credits: '6' },
    { category: 'runtime', kind: 'PER_UNIT', unit: 'minutes', credits: '1' },
  ],
};

/**
 * The default price book, validated.
 * @throws LedgerError BAD_USER_INPUT only if the bundled catalog lost one of its models (a bug
 *   caught by the unit tests).
 */
export function defaultPriceBook(): PriceBookDraft {
  return validatePriceBook(DEFAULT_PRICE_BOOK_INPUT);
}
