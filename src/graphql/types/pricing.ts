/** Price book, model prices, quotes and settings types. */
import { builder } from '../builder.js';
import type { ActivePriceBook, SettingsRecord } from '../../services/pricing-state.js';
import type { ModelPriceEntry, PriceRuleInput } from '../../pricing/price-book.js';
import { parseCredits } from '../../ledger/credits.js';
import { PriceKindEnum } from './enums.js';
import { CostLineRef } from './ledger.js';
import type { StoredCostLine } from '../../services/record-usage.js';

const creditsOrNull = (v: unknown) => (v === null || v === undefined ? null : parseCredits(v));
const textOrNull = (v: unknown) => (v === null || v === undefined ? null : String(v));

/** GraphQL type `PriceRule` (contract), resolved from PriceRuleInput (amounts in micro-credits). */
export const PriceRuleRef = builder.objectRef<PriceRuleInput>('PriceRule').implement({
  fields: (t) => ({
    category: t.exposeString('category'),
    model: t.string({ nullable: true, resolve: (r) => r.model ?? null }),
    tier: t.string({ nullable: true, resolve: (r) => r.tier ?? null }),
    sku: t.string({ nullable: true, resolve: (r) => r.sku ?? null }),
    kind: t.field({ type: PriceKindEnum, resolve: (r) => r.kind }),
    credits: t.field({ type: 'Credits', nullable: true, resolve: (r) => creditsOrNull(r.credits) }),
    unit: t.string({ nullable: true, resolve: (r) => r.unit ?? null }),
    markupPercent: t.field({ type: 'Decimal', nullable: true, resolve: (r) => textOrNull(r.markupPercent) }),
    fallbackCredits: t.field({ type: 'Credits', nullable: true, resolve: (r) => creditsOrNull(r.fallbackCredits) }),
  }),
});

/** GraphQL type `PriceBook` (contract), resolved from ActivePriceBook (amounts in micro-credits). */
export const PriceBookRef = builder.objectRef<ActivePriceBook>('PriceBook').implement({
  fields: (t) => ({
    version: t.int({ resolve: (b) => b.version }),
    name: t.string({ resolve: (b) => b.stored.name }),
    byokFeePercent: t.field({
      type: 'Decimal',
      description: 'Fee in percent of the provider cost, charged instead of the model price for bring-your-own-key calls.',
      resolve: (b) => b.stored.byokFeePercent,
    }),
    // Up to MAX_PRICE_RULES rows, counted as 1 in the query cost estimate: a PriceBook is only
    // reached from the root (priceBook, publishPriceBook), rules hold scalars only, and the book
    // is read from the in-process cache, so no selection can multiply them.
    rules: t.field({ type: [PriceRuleRef], resolve: (b) => b.stored.rules as PriceRuleInput[] }),
    publishedAt: t.field({ type: 'DateTime', resolve: (b) => b.publishedAt }),
  }),
});

/** GraphQL type `ModelPrice` (contract), resolved from ModelPriceEntry (amounts in micro-credits). */
export const ModelPriceRef = builder.objectRef<ModelPriceEntry>('ModelPrice').implement({
  fields: (t) => ({
    model: t.exposeString('model'),
    tier: t.exposeString('tier', { nullable: true }),
    inputPerMillion: t.field({
      type: 'Credits',
      nullable: true,
      description: 'Credits per 1,000,000 input tokens, markup included (null where priced per request).',
      resolve: (m) => m.inputPerMillionMicroCredits,
    }),
    outputPerMillion: t.field({ type: 'Credits', nullable: true, resolve: (m) => m.outputPerMillionMicroCredits }),
    perRequest: t.field({ type: 'Credits', nullable: true, description: 'Credits per request where the price is flat.', resolve: (m) => m.perRequestMicroCredits }),
  }),
});

/** A quote: what an event would cost now. */
export interface QuoteView {
  costMicroCredits: bigint;
  lines: StoredCostLine[];
  affordable: boolean;
}

/** GraphQL type `Quote` (contract), resolved from QuoteView (amounts in micro-credits). */
export const QuoteRef = builder.objectRef<QuoteView>('Quote').implement({
  fields: (t) => ({
    cost: t.field({ type: 'Credits', resolve: (q) => q.costMicroCredits }),
    // At most one line per item kind (as UsageEvent.lines): counted as 1 in the query cost estimate.
    lines: t.field({ type: [CostLineRef], resolve: (q) => q.lines }),
    affordable: t.boolean({
      description:
        "Whether available credit covers it now. With a reservationId: available credit plus what is left of that ACTIVE hold of the account (what recordUsage draws before any debt); false when it names no ACTIVE hold of the account (recordUsage would refuse the capture).",
      resolve: (q) => q.affordable,
    }),
  }),
});

/** GraphQL type `Settings` (contract), resolved from SettingsRecord (amounts in micro-credits). */
export const SettingsRef = builder.objectRef<SettingsRecord>('Settings').implement({
  fields: (t) => ({
    creditUsdValue: t.field({ type: 'Decimal', resolve: (s) => s.creditUsdValue }),
    welcomeBonusCredits: t.field({ type: 'Credits', resolve: (s) => s.welcomeBonusMicroCredits }),
    welcomeBonusExpiresAfterDays: t.int({ nullable: true, resolve: (s) => s.welcomeBonusExpiresAfterDays }),
    referralRewardCredits: t.field({ type: 'Credits', resolve: (s) => s.referralRewardMicroCredits }),
    referralMaxRewardsPerAccount: t.int({ resolve: (s) => s.referralMaxRewardsPerAccount }),
    alertThresholds: t.field({
      type: ['Int'],
      description: 'Percent-remaining thresholds that raise a CreditAlert once per billing period. Default [25, 15, 0].',
      resolve: (s) => s.alertThresholds,
    }),
  }),
});
