/**
 * Ledger object types: Balance, CreditBatch, CreditGrant, Drawdown, UsageEvent, LedgerEntry,
 * Reservation and the reconciliation report. Amounts are bigint micro-credits served as
 * Credits; statuses are effective at the account's "now" (a batch or hold past its expiresAt
 * shows EXPIRED even before the expiry job has run).
 */
import { builder } from '../builder.js';
import type { BalanceView, Reconciliation } from '../../services/read-balance.js';
import { toGlobalId } from '../ids.js';
import { accountNowOf, readOnceInFlight } from '../access.js';
import { BatchStatusEnum, CreditTypeEnum, GrantSourceEnum, LedgerEntryTypeEnum, ReservationStatusEnum } from './enums.js';
import type { StoredCostLine } from '../../services/record-usage.js';
import { parseCredits } from '../../ledger/credits.js';
import type { UsageQuantities } from '../../services/usage-command.js';
import { listCountedAs } from '../cost-limit.js';

/** Canonical text of a Prisma Decimal (never exponent notation), or null. */
export function decimalText(v: { toFixed(): string } | null | undefined): string | null {
  return v === null || v === undefined ? null : v.toFixed();
}

/**
 * Type-level auth scopes of the types that hold account-wide data (balance, batches, ledger):
 * an end user or a `read` key only (canReadAccountData in ../access.ts). A write-only key
 * holding a grant, usage event or drawdown cannot follow them into these types.
 */
export const ACCOUNT_DATA = { accountData: true } as const;


/** GraphQL type `ExpiryNotice` (contract), resolved from { amountMicroCredits: bigint; at: Date } (amounts in micro-credits). */
export const ExpiryNoticeRef = builder.objectRef<{ amountMicroCredits: bigint; at: Date }>('ExpiryNotice').implement({
  fields: (t) => ({
    amount: t.field({ type: 'Credits', resolve: (e) => e.amountMicroCredits }),
    at: t.field({ type: 'DateTime', resolve: (e) => e.at }),
  }),
});

/** GraphQL type `Balance` (contract), resolved from BalanceView (amounts in micro-credits). */
export const BalanceRef = builder.objectRef<BalanceView>('Balance').implement({
  description: 'What a live credit bar shows.',
  authScopes: ACCOUNT_DATA,
  fields: (t) => ({
    accountId: t.id({ resolve: (b) => toGlobalId('Account', b.accountId) }),
    available: t.field({ type: 'Credits', description: 'Spendable now: total minus reserved. Negative while the account is in debt.', resolve: (b) => b.availableMicroCredits }),
    total: t.field({ type: 'Credits', description: 'Sum of remaining credit in ACTIVE batches, minus any debt.', resolve: (b) => b.totalMicroCredits }),
    reserved: t.field({ type: 'Credits', description: 'Held by ACTIVE reservations.', resolve: (b) => b.reservedMicroCredits }),
    free: t.field({ type: 'Credits', resolve: (b) => b.freeMicroCredits }),
    paid: t.field({ type: 'Credits', resolve: (b) => b.paidMicroCredits }),
    debt: t.field({ type: 'Credits', description: 'Overage not yet repaid (repaid first by the next grant).', resolve: (b) => b.debtMicroCredits }),
    periodStart: t.field({ type: 'DateTime', resolve: (b) => b.periodStart }),
    periodEnd: t.field({ type: 'DateTime', resolve: (b) => b.periodEnd }),
    periodCredits: t.field({
      type: 'Credits',
      description: 'The denominator of percentRemaining: the total at periodStart plus every grant made during the period, less what voidGrant took back during the period.',
      resolve: (b) => b.periodMicroCredits,
    }),
    percentRemaining: t.float({ description: '100 * available / periodCredits, clamped to [0, 100]; 0 when periodCredits is 0.', resolve: (b) => b.percentRemaining }),
    planName: t.string({ nullable: true, resolve: (b) => b.planName }),
    depleted: t.boolean({ description: 'available <= 0: new paid work is refused with INSUFFICIENT_CREDITS.', resolve: (b) => b.depleted }),
    nextExpiry: t.field({ type: ExpiryNoticeRef, nullable: true, description: 'The next batch expiry with credit left, if any.', resolve: (b) => b.nextExpiry }),
    version: t.field({
      type: 'BigInt',
      description: "Increases by at least 1 on every change of this account's balance; live clients drop any update whose version is not newer than the one they hold.",
      resolve: (b) => b.version,
    }),
    updatedAt: t.field({ type: 'DateTime', resolve: (b) => b.updatedAt }),
  }),
});

/** GraphQL node `CreditBatch` (contract), backed by the Prisma model CreditBatch; id is a Relay global id. */
export const CreditBatchRef = builder.prismaNode('CreditBatch', {
  // A batch's remaining credit and status follow the account's spending: account data, also
  // when reached from a grant or a drawdown a write-only key holds.
  authScopes: ACCOUNT_DATA,
  // An id tells nothing about the account: a write-only key's own results (a drawdown's batch,
  // schema/operations' UsageEventCharge) may carry it.
  id: { field: 'id', skipTypeScopes: true },
  fields: (t) => ({
    type: t.field({ type: CreditTypeEnum, resolve: (b) => b.type }),
    source: t.field({ type: GrantSourceEnum, resolve: (b) => b.source }),
    allocated: t.field({ type: 'Credits', description: "Credit Allocated: what the batch started with, plus what refunds of usage gave it of credit its payment bought that was drawn from the payment's earlier grant (voided by a partial refund or a dispute later won; README \"Refunds and voids\").", resolve: (b) => b.allocatedMicroCredits }),
    remaining: t.field({ type: 'Credits', description: 'Remaining Balance.', resolve: (b) => b.remainingMicroCredits }),
    addedAt: t.field({ type: 'DateTime', description: 'Added Date.', resolve: (b) => b.addedAt }),
    expiresAt: t.field({ type: 'DateTime', nullable: true, description: 'Expiry Date; null never expires.', resolve: (b) => b.expiresAt }),
    status: t.field({
      type: BatchStatusEnum,
      // Only an ACTIVE batch with an expiry can be other than its stored status, so only it reads
      // the account's now: once per list (../access.ts accountNowOf), not as a relation of each row.
      resolve: async (b, _args, ctx) => (b.status === 'ACTIVE' && b.expiresAt ? effectiveBatchStatus(b, await accountNowOf(ctx, b.accountId)) : b.status),
    }),
    grant: t.relation('grant'),
  }),
});

/** A batch's status at `now`: ACTIVE past its expiresAt counts as EXPIRED. */
export function effectiveBatchStatus(b: { status: 'ACTIVE' | 'EXHAUSTED' | 'EXPIRED' | 'VOIDED'; expiresAt: Date | null }, now: Date) {
  return b.status === 'ACTIVE' && b.expiresAt && b.expiresAt.getTime() <= now.getTime() ? 'EXPIRED' : b.status;
}

/** GraphQL node `CreditGrant` (contract), backed by the Prisma model CreditGrant; id is a Relay global id. */
export const CreditGrantRef = builder.prismaNode('CreditGrant', {
  id: { field: 'id' },
  fields: (t) => ({
    source: t.field({ type: GrantSourceEnum, resolve: (g) => g.source }),
    type: t.field({ type: CreditTypeEnum, resolve: (g) => g.type }),
    amount: t.field({ type: 'Credits', resolve: (g) => g.amountMicroCredits }),
    createdAt: t.field({ type: 'DateTime', resolve: (g) => g.createdAt }),
    reference: t.string({
      nullable: true,
      description: "The caller's reference: promo code, referral, payment id, pack id, note.",
      // A referral grant's reference is the other party's account id: another tenant's, so an
      // end user (who may read only its own accounts) is not shown it.
      resolve: (g, _args, ctx) => (g.source === 'REFERRAL' && ctx.principal?.kind === 'user' ? null : g.reference),
    }),
    voidedAt: t.field({ type: 'DateTime', nullable: true, resolve: (g) => g.voidedAt }),
    voidReason: t.exposeString('voidReason', { nullable: true }),
    note: t.string({
      nullable: true,
      description: 'Why the grant looks the way it does (e.g. a referral whose referrer was not rewarded).',
      // A referral grant's note speaks of the other party (that the referrer had used up its
      // rewards): another tenant's, so an end user is not shown it, as the reference.
      resolve: (g, _args, ctx) => (g.source === 'REFERRAL' && ctx.principal?.kind === 'user' ? null : g.note),
    }),
    batch: t.field({
      type: CreditBatchRef,
      select: (_args, _ctx, nestedSelection) => ({ batch: nestedSelection(true) }),
      resolve: (g) => {
        if (!g.batch) throw new Error(`grant ${g.id} has no batch`);
        return g.batch;
      },
    }),
  }),
});

/** GraphQL type `UsageQuantities` (contract), resolved from UsageQuantities (amounts in micro-credits). */
export const UsageQuantitiesRef = builder
  .objectRef<UsageQuantities>('UsageQuantities')
  .implement({
    fields: (t) => ({
      inputTokens: t.exposeInt('inputTokens', { nullable: true }),
      outputTokens: t.exposeInt('outputTokens', { nullable: true }),
      reasoningTokens: t.exposeInt('reasoningTokens', { nullable: true }),
      cacheReadTokens: t.exposeInt('cacheReadTokens', { nullable: true }),
      cacheWriteTokens: t.exposeInt('cacheWriteTokens', { nullable: true }),
      seconds: t.field({ type: 'Decimal', nullable: true, resolve: (q) => q.seconds }),
      units: t.field({ type: 'Decimal', nullable: true, resolve: (q) => q.units }),
    }),
  });

/** GraphQL type `CostLine` (contract), resolved from StoredCostLine (amounts in micro-credits). */
export const CostLineRef = builder.objectRef<StoredCostLine>('CostLine').implement({
  description: 'One priced line of a usage event (the per-message inspect view).',
  fields: (t) => ({
    item: t.exposeString('item', {
      description: 'input_tokens, output_tokens, reasoning_tokens, cache_read_tokens, cache_write_tokens, request, units, seconds, provider_cost, byok_fee, markup',
    }),
    quantity: t.field({ type: 'Decimal', resolve: (l) => l.quantity }),
    unitPrice: t.field({ type: 'Decimal', description: 'Credits per one unit of quantity.', resolve: (l) => l.unitPrice }),
    amount: t.field({ type: 'Credits', description: 'The line rounded half-up to the micro-credit (display).', resolve: (l) => parseCredits(l.amount) }),
    exactAmount: t.field({ type: 'Decimal', description: 'The exact line amount in credits; the event cost is the exact sum of the lines rounded up to the micro-credit.', resolve: (l) => l.exactAmount }),
  }),
});

/** GraphQL type `Drawdown` (contract), backed by the Prisma model Drawdown. */
export const DrawdownRef = builder.prismaObject('Drawdown', {
  fields: (t) => ({
    batch: t.relation('batch'),
    amount: t.field({ type: 'Credits', resolve: (d) => d.amountMicroCredits }),
  }),
});

/** GraphQL node `Reservation` (contract), backed by the Prisma model Reservation; id is a Relay global id. */
export const ReservationRef = builder.prismaNode('Reservation', {
  id: { field: 'id' },
  fields: (t) => ({
    accountId: t.id({ resolve: (r) => toGlobalId('Account', r.accountId) }),
    amount: t.field({ type: 'Credits', resolve: (r) => r.amountMicroCredits }),
    consumed: t.field({ type: 'Credits', description: 'Charged against this hold so far (settled usage).', resolve: (r) => r.consumedMicroCredits }),
    status: t.field({
      type: ReservationStatusEnum,
      // As CreditBatch.status: only an ACTIVE hold reads the account's now (../access.ts
      // accountNowOf); a settled, released or expired one answers its stored status without a read
      // (settleReservation { status }: one statement and one transaction less per settle).
      resolve: async (r, _args, ctx) => (r.status === 'ACTIVE' ? effectiveReservationStatus(r, await accountNowOf(ctx, r.accountId)) : r.status),
    }),
    expiresAt: t.field({ type: 'DateTime', resolve: (r) => r.expiresAt }),
    createdAt: t.field({ type: 'DateTime', resolve: (r) => r.createdAt }),
  }),
});

/** A hold's status at `now`: ACTIVE past its expiresAt counts as EXPIRED (no longer holds). */
export function effectiveReservationStatus(r: { status: 'ACTIVE' | 'SETTLED' | 'RELEASED' | 'EXPIRED'; expiresAt: Date }, now: Date) {
  return r.status === 'ACTIVE' && r.expiresAt.getTime() <= now.getTime() ? 'EXPIRED' : r.status;
}

/**
 * Items UsageEvent.drawdowns counts in the query cost estimate (src/graphql/cost-limit.ts
 * listCountedAs). An event draws from the batches in drawdown order and empties every one it
 * draws from but the last, and a batch is emptied once (again only after a refund gives credit
 * back to it): over any set of events, at most one drawdown per event plus one per batch they
 * emptied. Counted as 2 per event, what a page of events serves when it empties as many batches
 * as it holds events; one event paid from many small batches serves more, but nothing under a
 * drawdown is a list, so that is its own rows once, not a product.
 */
export const DRAWDOWN_COST_ITEMS = 2;

/** GraphQL node `UsageEvent` (contract), backed by the Prisma model UsageEvent; id is a Relay global id. */
export const UsageEventRef = builder.prismaNode('UsageEvent', {
  id: { field: 'id' },
  fields: (t) => ({
    idempotencyKey: t.exposeString('idempotencyKey'),
    // The event's account read once for a list's events (../access.ts readOnceInFlight), not as a
    // relation of each row: usage(first: 300) { edges { node { account { id } } } } read every
    // row of accounts by a sequential scan (3,002 in a database of 3,000 accounts, 5,002 in one
    // of 5,000; now 2: test/api/neighbour-growth-pages-audit.test.ts, "usage(first: 300) with
    // each event's account: ...").
    account: t.prismaField({
      type: 'Account',
      resolve: (query, e, _args, ctx) =>
        readOnceInFlight(ctx, `account:${e.accountId}:${JSON.stringify(query)}`, () => ctx.prisma.account.findUniqueOrThrow({ ...query, where: { id: e.accountId } })),
    }),
    occurredAt: t.field({ type: 'DateTime', resolve: (e) => e.occurredAt }),
    recordedAt: t.field({ type: 'DateTime', resolve: (e) => e.recordedAt }),
    category: t.exposeString('category'),
    model: t.exposeString('model', { nullable: true }),
    tier: t.exposeString('tier', { nullable: true }),
    sku: t.exposeString('sku', { nullable: true }),
    agentId: t.exposeString('agentId', { nullable: true }),
    userId: t.exposeString('userId', { nullable: true, description: 'The end user on whose behalf the work ran, inside an organization pool.' }),
    taskId: t.exposeString('taskId', { nullable: true }),
    conversationId: t.exposeString('conversationId', { nullable: true }),
    messageId: t.exposeString('messageId', { nullable: true }),
    quantities: t.field({
      type: UsageQuantitiesRef,
      resolve: (e) => ({
        inputTokens: e.inputTokens,
        outputTokens: e.outputTokens,
        reasoningTokens: e.reasoningTokens,
        cacheReadTokens: e.cacheReadTokens,
        cacheWriteTokens: e.cacheWriteTokens,
        seconds: decimalText(e.seconds),
        units: decimalText(e.units),
      }),
    }),
    providerCostUsd: t.field({ type: 'Decimal', nullable: true, resolve: (e) => decimalText(e.providerCostUsd) }),
    byok: t.exposeBoolean('byok'),
    cost: t.field({ type: 'Credits', resolve: (e) => e.costMicroCredits }),
    debt: t.field({ type: 'Credits', description: 'Part of the cost no credit covered (overage under a reservation), left as debt.', resolve: (e) => e.debtMicroCredits }),
    // At most one line per item kind (CostLine.item: 11 kinds, a handful per event), stored on
    // the event: counted as 1 in the query cost estimate, like an object of a few fields.
    lines: t.field({ type: [CostLineRef], resolve: (e) => e.lines as unknown as StoredCostLine[] }),
    drawdowns: t.relation('drawdowns', {
      description: 'Which batches paid for this event, in drawdown order.',
      query: { orderBy: { position: 'asc' } },
      extensions: listCountedAs(DRAWDOWN_COST_ITEMS),
    }),
    reservation: t.relation('reservation', { nullable: true }),
    priceBookVersion: t.exposeInt('priceBookVersion'),
    refunded: t.boolean({ resolve: (e) => e.refundedAt !== null }),
    metadata: t.field({ type: 'JSON', nullable: true, resolve: (e) => e.metadata }),
  }),
});

/** GraphQL node `LedgerEntry` (contract), backed by the Prisma model LedgerEntry; id is a Relay global id. */
export const LedgerEntryRef = builder.prismaNode('LedgerEntry', {
  authScopes: ACCOUNT_DATA,
  id: { field: 'id', skipTypeScopes: true }, // an id tells nothing (CreditBatch)
  fields: (t) => ({
    type: t.field({ type: LedgerEntryTypeEnum, resolve: (e) => e.type }),
    amount: t.field({ type: 'Credits', description: 'Signed change of the account total (holds: change of reserved).', resolve: (e) => e.amountMicroCredits }),
    balanceAfter: t.field({ type: 'Credits', description: 'Account total after this entry.', resolve: (e) => e.balanceAfterMicroCredits }),
    batch: t.relation('batch', { nullable: true }),
    usageEvent: t.relation('usageEvent', { nullable: true }),
    reservation: t.relation('reservation', { nullable: true }),
    createdAt: t.field({ type: 'DateTime', resolve: (e) => e.createdAt }),
    note: t.exposeString('note', { nullable: true }),
  }),
});

/** GraphQL type `LedgerReconciliation` (contract), resolved from Reconciliation (amounts in micro-credits). */
export const ReconciliationRef = builder.objectRef<Reconciliation>('LedgerReconciliation').implement({
  description: 'The ledger invariant of one account: batchRemaining - debt = total = ledgerSum.',
  authScopes: ACCOUNT_DATA,
  fields: (t) => ({
    consistent: t.exposeBoolean('consistent'),
    total: t.field({ type: 'Credits', resolve: (r) => r.totalMicroCredits }),
    batchRemaining: t.field({ type: 'Credits', resolve: (r) => r.batchRemainingMicroCredits }),
    debt: t.field({ type: 'Credits', resolve: (r) => r.debtMicroCredits }),
    ledgerSum: t.field({ type: 'Credits', resolve: (r) => r.ledgerSumMicroCredits }),
  }),
});
