/**
 * Input types of the contract and their translation to service commands (global ids decoded,
 * Credits already bigint micro-credits by the scalar).
 */
import { builder } from './builder.js';
import { AccountKindEnum, CreditTypeEnum, GrantSourceEnum, PriceKindEnum } from './types/enums.js';
import { decodeId } from './ids.js';
import type { UsageInput } from '../services/usage-command.js';
import { formatCredits } from '../ledger/credits.js';
import type { PriceBookInput } from '../pricing/price-book.js';
import { MAX_RESERVATION_TTL_SECONDS } from '../services/reserve-credits.js';
import { MAX_SETTLE_ITEMS } from '../services/settle-reservation.js';

/** GraphQL input `CreateAccountInput` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const CreateAccountInputRef = builder.inputType('CreateAccountInput', {
  fields: (t) => ({
    externalId: t.string({ required: true }),
    name: t.string({ required: true }),
    kind: t.field({ type: AccountKindEnum, required: true }),
    welcomeBonus: t.boolean({ defaultValue: true, description: 'Grant Settings.welcomeBonusCredits as FREE credit.' }),
    testMode: t.boolean({ defaultValue: false }),
    testClockStart: t.field({ type: 'DateTime', description: "Creation time for test-mode accounts (the test clock's start)." }),
  }),
});

/** GraphQL input `GrantCreditsInput` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const GrantCreditsInputRef = builder.inputType('GrantCreditsInput', {
  fields: (t) => ({
    accountId: t.id({ required: true }),
    amount: t.field({ type: 'Credits', required: true }),
    type: t.field({ type: CreditTypeEnum, required: true }),
    source: t.field({ type: GrantSourceEnum, required: true }),
    expiresAt: t.field({ type: 'DateTime' }),
    reference: t.string(),
    idempotencyKey: t.string({
      required: true,
      description:
        "Same key again returns the first grant and grants nothing. Keys of the engine's own grants are reserved (BAD_USER_INPUT, reason RESERVED_KEY): welcome-bonus, and keys starting with welcome-bonus:, promo:, referral:, plan-period: or payment:.",
    }),
  }),
});

/** GraphQL input `UsageQuantitiesInput` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const UsageQuantitiesInputRef = builder.inputType('UsageQuantitiesInput', {
  fields: (t) => ({
    // The counts are disjoint (docs/pricing.md): a provider's prompt count that includes cached
    // tokens, or an output count that includes reasoning, sent as it is charges that part twice.
    inputTokens: t.int({ description: 'Uncached prompt tokens: NOT including cacheReadTokens or cacheWriteTokens (OpenAI prompt_tokens minus cached_tokens; Anthropic input_tokens).' }),
    outputTokens: t.int({ description: 'Output tokens NOT including reasoningTokens (OpenAI completion_tokens minus reasoning_tokens).' }),
    reasoningTokens: t.int({ description: 'Reasoning (thinking) tokens, priced at the output price unless the catalog has a reasoning price.' }),
    cacheReadTokens: t.int({ description: 'Prompt tokens read from the provider\'s cache (OpenAI cached_tokens; Anthropic cache_read_input_tokens).' }),
    cacheWriteTokens: t.int({ description: 'Prompt tokens written to the provider\'s cache (Anthropic cache_creation_input_tokens), priced at the 5-minute cache-write price.' }),
    seconds: t.field({ type: 'Decimal', description: 'Duration in seconds (runtime, voice); per-minute and per-hour rules charge it pro rata.' }),
    units: t.field({ type: 'Decimal', description: 'Count of units (images, calls, tasks).' }),
  }),
});

/** GraphQL input `RecordUsageInput` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const RecordUsageInputRef = builder.inputType('RecordUsageInput', {
  fields: (t) => ({
    accountId: t.id({ required: true }),
    idempotencyKey: t.string({
      required: true,
      description:
        'Unique per account. A retry with the same key and the same input returns the first event and charges nothing; the same key with different input is IDEMPOTENCY_CONFLICT.',
    }),
    category: t.string({ required: true }),
    model: t.string(),
    tier: t.string(),
    sku: t.string(),
    quantities: t.field({ type: UsageQuantitiesInputRef }),
    providerCostUsd: t.field({ type: 'Decimal' }),
    byok: t.boolean({ defaultValue: false, description: 'Bring-your-own-key: only the platform fee is charged for the model call.' }),
    agentId: t.string(),
    userId: t.string(),
    taskId: t.string(),
    conversationId: t.string(),
    messageId: t.string(),
    reservationId: t.id({
      description:
        'Charge against this ACTIVE reservation; cost beyond the hold is drawn from available credit and, when even that runs out, leaves a negative balance (debt) that the next grant repays. Without a reservation the event is refused with INSUFFICIENT_CREDITS when available credit does not cover it, and nothing is recorded. The event is the hold\'s agent\'s and user\'s: without agentId / userId it records the hold\'s, another than the hold has is BAD_USER_INPUT, and one the hold has none of is checked against its budget like a charge without a reservation.',
    }),
    occurredAt: t.field({ type: 'DateTime' }),
    metadata: t.field({ type: 'JSON' }),
  }),
});

/** The GraphQL shape of RecordUsageInput after scalar parsing. */
export type RecordUsageInputShape = typeof RecordUsageInputRef.$inferInput;

/**
 * Translates a RecordUsageInput into the service's UsageInput (global ids decoded).
 * @throws LedgerError NOT_FOUND for malformed account or reservation ids.
 */
export function toUsageInput(i: RecordUsageInputShape): UsageInput {
  return {
    ...i,
    accountId: decodeId(String(i.accountId), 'Account', 'account'),
    reservationId: i.reservationId == null ? null : decodeId(String(i.reservationId), 'Reservation', 'reservation'),
  };
}

/** GraphQL input `ReserveCreditsInput` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const ReserveCreditsInputRef = builder.inputType('ReserveCreditsInput', {
  fields: (t) => ({
    accountId: t.id({ required: true }),
    amount: t.field({ type: 'Credits', required: true }),
    ttlSeconds: t.int({ defaultValue: 900, description: `Seconds until an unsettled hold expires and its credit is released. Default 900; 1 to ${MAX_RESERVATION_TTL_SECONDS}, else BAD_USER_INPUT.` }),
    idempotencyKey: t.string({ required: true }),
    agentId: t.string({ description: "The agent the hold is for: it counts against the agent's budget while it holds, and usage captured against it is the agent's." }),
    userId: t.string({ description: "The end user the hold is for: it counts against the user's budget while it holds, and usage captured against it is the user's." }),
  }),
});

/** GraphQL input `SettleReservationInput` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const SettleReservationInputRef = builder.inputType('SettleReservationInput', {
  fields: (t) => ({
    reservationId: t.id({ required: true }),
    usage: t.field({ type: [RecordUsageInputRef], required: true, description: `Completed work, charged against the hold; the unused rest is released. At most ${MAX_SETTLE_ITEMS} items, else BAD_USER_INPUT.` }),
  }),
});

/** GraphQL input `PriceRuleInput` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const PriceRuleInputRef = builder.inputType('PriceRuleInput', {
  fields: (t) => ({
    category: t.string({ required: true }),
    model: t.string(),
    tier: t.string(),
    sku: t.string(),
    kind: t.field({ type: PriceKindEnum, required: true }),
    credits: t.field({ type: 'Credits' }),
    unit: t.string(),
    markupPercent: t.field({ type: 'Decimal' }),
    fallbackCredits: t.field({ type: 'Credits' }),
  }),
});

/** GraphQL input `PriceBookInput` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const PriceBookInputRef = builder.inputType('PriceBookInput', {
  fields: (t) => ({
    name: t.string({ required: true }),
    byokFeePercent: t.field({ type: 'Decimal', defaultValue: '0' }),
    rules: t.field({
      type: [PriceRuleInputRef],
      required: true,
      description:
        'The most specific matching rule prices an event: one matching model beats one matching tier, which beats one matching sku, which beats the category-wide rule. An event with no matching rule is BAD_USER_INPUT and nothing is recorded.',
    }),
  }),
});

/** Translates PriceBookInput (Credits as bigint) into the pricing module's input (decimal strings). */
export function toPriceBookInput(i: typeof PriceBookInputRef.$inferInput): PriceBookInput {
  const c = (v: bigint | null | undefined) => (v === null || v === undefined ? null : formatCredits(v));
  return {
    name: i.name,
    byokFeePercent: i.byokFeePercent ?? '0',
    rules: i.rules.map((r) => ({ ...r, credits: c(r.credits), fallbackCredits: c(r.fallbackCredits) })),
  };
}

/** GraphQL input `SettingsInput` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const SettingsInputRef = builder.inputType('SettingsInput', {
  fields: (t) => ({
    creditUsdValue: t.field({ type: 'Decimal' }),
    welcomeBonusCredits: t.field({ type: 'Credits' }),
    welcomeBonusExpiresAfterDays: t.int(),
    referralRewardCredits: t.field({ type: 'Credits' }),
    referralMaxRewardsPerAccount: t.int(),
    alertThresholds: t.intList(),
  }),
});
