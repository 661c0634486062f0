/**
 * Shape: provider-reported cost passed through plus markup. A model router / gateway that
 * charges what the upstream provider billed (providerCostUsd) plus 8%, and a flat fallback
 * when the provider reports no cost.
 */
import type { PriceBookInput } from '../price-book.js';
import type { ExampleEvent } from './types.js';

/** Example book: PASS_THROUGH with markup and fallback. */
export const passThroughBook: PriceBookInput = {
  name: 'Pass-through + 8%',
  byokFeePercent: '5',
  rules: [
    { category: 'llm', kind: 'PASS_THROUGH', markupPercent: '8', fallbackCredits: '3' },
    { category: 'tool_call', kind: 'PASS_THROUGH', fallbackCredits: '0.5' },
  ],
};

/** A routed call whose provider reported $0.0123. */
export const passThroughSample: ExampleEvent = {
  category: 'llm',
  model: 'some-provider/some-model',
  providerCostUsd: '0.0123',
  quantities: { inputTokens: 3_000, outputTokens: 400 },
};
