/**
 * The price book the demo and the bench publish, and the model each trace is billed as.
 * Model ids are ids the @pydantic/genai-prices catalog (0.1.8) resolves; the server prices
 * PER_TOKEN rules from that catalog, so recordUsage must send exactly these names.
 */
import type { PriceBookInput } from '../src/generated/graphql.js';

/** Chat model for the Azure conversation trace (OpenAI gpt-4o-mini: $0.15 in / $0.60 out per Mtok). */
export const CHAT_MODEL = 'gpt-4o-mini';
/** Code model for the Azure code trace (Mistral Codestral: $0.30 in / $0.90 out per Mtok). */
export const CODE_MODEL = 'codestral-latest';
/** Kimi model for the Mooncake trace, which came from Moonshot AI's Kimi service ($0.60 in / $0.15 cache read / $2.50 out per Mtok). */
export const KIMI_MODEL = 'kimi-k2-0711-preview';

/** Markup on the provider's catalog price, in percent (decimal string). */
export const LLM_MARKUP_PERCENT = '20';
/** Credits charged per tool call (FLAT rule, decimal string). */
export const TOOL_CALL_CREDITS = '0.05';

/**
 * The demo/bench price book: PER_TOKEN for the three models (+20 %), web search FREE,
 * tool calls FLAT 0.05 credits.
 * @param name the book's name (shown by `priceBook`)
 */
export function demoPriceBook(name: string): PriceBookInput {
  return {
    name,
    byokFeePercent: '5',
    rules: [
      ...[CHAT_MODEL, CODE_MODEL, KIMI_MODEL].map((model) => ({
        category: 'llm',
        model,
        kind: 'PER_TOKEN' as const,
        markupPercent: LLM_MARKUP_PERCENT,
      })),
      { category: 'web_search', kind: 'FREE' as const },
      { category: 'tool_call', kind: 'FLAT' as const, credits: TOOL_CALL_CREDITS },
    ],
  };
}
