/**
 * Shape: free web search next to paid LLM calls. An assistant that does not charge for the
 * searches its agent runs, only for the model's tokens (catalog price + 15%).
 */
import type { PriceBookInput } from '../price-book.js';
import type { ExampleEvent } from './types.js';

/** Example book: FREE web_search. */
export const freeSearchBook: PriceBookInput = {
  name: 'Free search',
  rules: [
    { category: 'web_search', kind: 'FREE' },
    { category: 'llm', kind: 'PER_TOKEN', markupPercent: '15', fallbackCredits: '2' },
  ],
};

/** One search. */
export const freeSearchSample: ExampleEvent = {
  category: 'web_search',
  sku: 'search_query',
  quantities: { units: '1' },
};
