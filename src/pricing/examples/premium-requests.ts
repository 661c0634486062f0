/**
 * Shape: flat credits per request, by model. A coding assistant that counts "premium
 * requests": the included model is free, others cost a per-model multiple of one request,
 * whatever the token count. Amounts are illustrative.
 */
import type { PriceBookInput } from '../price-book.js';
import type { ExampleEvent } from './types.js';

/** Example book: FLAT per model. */
export const premiumRequestsBook: PriceBookInput = {
  name: 'Premium requests',
  rules: [
    { category: 'chat', kind: 'FLAT', credits: '1' },
    { category: 'chat', model: 'gpt-4o-mini', kind: 'FREE' },
    { category: 'chat', model: 'claude-sonnet-4-5', kind: 'FLAT', credits: '1' },
    { category: 'chat', model: 'claude-opus-4-1', kind: 'FLAT', credits: '10' },
    { category: 'chat', model: 'gemini-2.5-flash', kind: 'FLAT', credits: '0.33' },
  ],
};

/** One agent-mode request on a premium model. */
export const premiumRequestsSample: ExampleEvent = {
  category: 'chat',
  model: 'claude-opus-4-1',
  quantities: { inputTokens: 40_000, outputTokens: 3_000 },
};
