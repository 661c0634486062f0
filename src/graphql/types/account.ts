/**
 * The Account node and its reports (balance, batches, grants, usage, summaries, ledger,
 * reservations). Every field here serves data of this one account only; entry points check
 * that the caller may read it (src/graphql/access.ts), and every field but the identity ones
 * (id, externalId, name, kind, testMode, createdAt) needs the accountData scope, so a write-only
 * key holding an Account (createAccount, UsageEvent.account) sees nothing more.
 */
import { builder } from '../builder.js';
import type { Prisma } from '../../generated/prisma/client.js';
import { readAccountClock, readBalance, reconcileAccount } from '../../services/read-balance.js';
import { USAGE_SUMMARY_MAX_ROWS, usageHistory, usageSummary, type UsageSummaryRow, type UsageMonth } from '../../services/usage-summary.js';
import { compareDrawdownOrder } from '../../ledger/drawdown.js';
import { badInput } from '../../ledger/errors.js';
import { cappedList, listSizedBy } from '../cost-limit.js';
import { assertRowCursors, newestFirstRows, rowsOfCursorAccount, type CursorArgs } from '../ids.js';
import {
  BalanceRef,
  CreditBatchRef,
  ReconciliationRef,
  ReservationRef,
  effectiveBatchStatus,
} from './ledger.js';
import { AccountKindEnum, BatchStatusEnum, ReservationStatusEnum, UsageDimensionEnum } from './enums.js';

/** GraphQL type `UsageSummaryRow` (contract), resolved from UsageSummaryRow (amounts in micro-credits). */
export const UsageSummaryRowRef = builder.objectRef<UsageSummaryRow>('UsageSummaryRow').implement({
  fields: (t) => ({
    category: t.exposeString('category', { nullable: true }),
    tier: t.exposeString('tier', { nullable: true }),
    model: t.exposeString('model', { nullable: true }),
    agentId: t.exposeString('agentId', { nullable: true }),
    userId: t.exposeString('userId', { nullable: true }),
    taskId: t.exposeString('taskId', { nullable: true }),
    credits: t.field({ type: 'Credits', resolve: (r) => r.creditsMicroCredits }),
    events: t.exposeInt('events'),
  }),
});

/** GraphQL type `UsageMonth` (contract), resolved from UsageMonth (amounts in micro-credits). */
export const UsageMonthRef = builder.objectRef<UsageMonth>('UsageMonth').implement({
  fields: (t) => ({
    month: t.exposeString('month', { description: 'YYYY-MM in UTC.' }),
    total: t.field({ type: 'Credits', resolve: (m) => m.totalMicroCredits }),
    // One row per category used in the month: categories are those of the price book's rules
    // (an event without a matching rule is refused), a handful; counted as 1 (cost-limit.ts).
    byCategory: t.field({ type: [UsageSummaryRowRef], resolve: (m) => m.byCategory }),
  }),
});

/** GraphQL input `UsageFilter` (contract); fields parsed by the scalars (Credits -> bigint micro-credits). */
export const UsageFilterInput = builder.inputType('UsageFilter', {
  fields: (t) => ({
    category: t.string(),
    model: t.string(),
    tier: t.string(),
    agentId: t.string(),
    userId: t.string(),
    taskId: t.string(),
    from: t.field({ type: 'DateTime', description: 'Events that occurred at or after this instant.' }),
    to: t.field({ type: 'DateTime', description: 'Events that occurred before this instant (exclusive). Before from: BAD_USER_INPUT.' }),
  }),
});

const MAX_PAGE = 500;

/** Most rows Account.batches serves (the first ones in drawdown order; README "Limits"). */
export const ACCOUNT_BATCHES_CAP = 1000;

/** Most rows Account.reservations serves (the newest holds of the statuses asked for; README "Limits"). */
export const ACCOUNT_RESERVATIONS_CAP = 1000;

/** Months Account.usageHistory serves when `months` is not given. */
export const USAGE_HISTORY_DEFAULT_MONTHS = 12;

/** Most months Account.usageHistory serves: a larger `months` is BAD_USER_INPUT (README "Limits"). */
export const USAGE_HISTORY_MAX_MONTHS = 120;

/** Batch statuses at `now` as a Prisma filter (ACTIVE past expiresAt counts as EXPIRED). */
function batchStatusWhere(statuses: readonly string[], now: Date): Prisma.CreditBatchWhereInput {
  const or: Prisma.CreditBatchWhereInput[] = [];
  for (const s of new Set(statuses)) {
    if (s === 'ACTIVE') or.push({ status: 'ACTIVE', OR: [{ expiresAt: null }, { expiresAt: { gt: now } }] });
    else if (s === 'EXPIRED') or.push({ status: 'EXPIRED' }, { status: 'ACTIVE', expiresAt: { lte: now } });
    else or.push({ status: s as 'EXHAUSTED' | 'VOIDED' });
  }
  return { OR: or };
}

/**
 * Prisma filters whose union is the reservations whose status as shown (effectiveReservationStatus
 * at `now`) is one of `statuses`: an ACTIVE hold past its expiresAt shows EXPIRED. Each filter
 * names one stored status, so each is one range of the index (account_id, status, created_at, id)
 * read newest first up to the cap: a page of one status costs its rows, not the account's other
 * holds. Disjoint: no hold matches two of them.
 */
function reservationStatusParts(statuses: readonly string[], now: Date): Prisma.ReservationWhereInput[] {
  const parts: Prisma.ReservationWhereInput[] = [];
  const wanted = new Set(statuses);
  if (wanted.has('ACTIVE')) parts.push({ status: 'ACTIVE', expiresAt: { gt: now } });
  if (wanted.has('EXPIRED')) parts.push({ status: 'EXPIRED' }, { status: 'ACTIVE', expiresAt: { lte: now } });
  if (wanted.has('SETTLED')) parts.push({ status: 'SETTLED' });
  if (wanted.has('RELEASED')) parts.push({ status: 'RELEASED' });
  return parts;
}

/** Newest first (createdAt, then id, both descending): the order of Account.reservations. */
function newestHoldFirst(x: { createdAt: Date; id: string }, y: { createdAt: Date; id: string }): number {
  const byTime = y.createdAt.getTime() - x.createdAt.getTime();
  // Prisma gives uuids in lowercase hex: their text order is PostgreSQL's uuid (byte) order.
  return byTime !== 0 ? byTime : y.id < x.id ? -1 : y.id > x.id ? 1 : 0;
}

/** GraphQL node `Account` (contract), backed by the Prisma model Account; id is a Relay global id. */
export const AccountRef = builder.prismaNode('Account', {
  // Account-wide data (every field not marked skipTypeScopes, including those other modules add)
  // needs the accountData scope: an end user (entry points check the account is theirs) or a key
  // with `read`. A write-only key sees only the identity fields below, e.g. of the account that
  // createAccount made or a UsageEvent's account (src/graphql/access.ts, ./account-data-guard.ts).
  authScopes: { accountData: true },
  id: { field: 'id', skipTypeScopes: true },
  fields: (t) => ({
    externalId: t.exposeString('externalId', { skipTypeScopes: true, description: "The platform's own id for this organization or user." }),
    name: t.exposeString('name', { skipTypeScopes: true }),
    kind: t.field({ type: AccountKindEnum, skipTypeScopes: true, resolve: (a) => a.kind }),
    testMode: t.exposeBoolean('testMode', { skipTypeScopes: true, description: 'True for accounts driven by a test clock (advanceTestClock).' }),
    createdAt: t.field({ type: 'DateTime', skipTypeScopes: true, resolve: (a) => a.createdAt }),
    balance: t.field({ type: BalanceRef, resolve: (a, _args, ctx) => readBalance(ctx.services.pool, a.id, ctx.services.clock()) }),
    batches: t.prismaField({
      type: [CreditBatchRef],
      description: 'Credit batches; by default only ACTIVE ones, soonest to be drawn first.',
      args: { status: t.arg({ type: [BatchStatusEnum], required: false }) },
      extensions: cappedList(ACCOUNT_BATCHES_CAP),
      resolve: async (query, a, args, ctx) => {
        // The account's now as Balance reads it (not this server's clock alone): a batch the last
        // change already treated as expired is not listed ACTIVE on a server whose clock is behind.
        const { now } = await readAccountClock(ctx.services.pool, a.id, ctx.services.clock());
        const batches = await ctx.prisma.creditBatch.findMany({
          ...query,
          where: { accountId: a.id, ...batchStatusWhere(args.status ?? ['ACTIVE'], now) },
          // Drawdown order (ledger/drawdown.ts: FREE first, soonest expiry, oldest) before the cap,
          // so the batches drawn first are never the ones cut.
          orderBy: [{ type: 'asc' }, { expiresAt: { sort: 'asc', nulls: 'last' } }, { addedAt: 'asc' }, { id: 'asc' }],
          take: ACCOUNT_BATCHES_CAP,
        });
        const drawable = (b: (typeof batches)[number]) => effectiveBatchStatus(b, now) === 'ACTIVE';
        return batches.sort((x, y) => {
          const ax = drawable(x);
          const ay = drawable(y);
          if (ax !== ay) return ax ? -1 : 1;
          if (ax) return compareDrawdownOrder({ ...x, remainingMicroCredits: x.remainingMicroCredits }, { ...y, remainingMicroCredits: y.remainingMicroCredits });
          return y.addedAt.getTime() - x.addedAt.getTime();
        });
      },
    }),
    grants: t.relatedConnection(
      'grants',
      {
        cursor: 'id',
        maxSize: MAX_PAGE,
        description: 'Every grant ever made, newest first (the Credit Grants table).',
        query: newestFirstRows('grants'),
      },
      { name: 'CreditGrantConnection' },
      { name: 'CreditGrantEdge' },
    ),
    usage: t.relatedConnection(
      'usageEvents',
      {
        cursor: 'id',
        maxSize: MAX_PAGE,
        description: 'Usage events, newest first.',
        args: { filter: t.arg({ type: UsageFilterInput, required: false }) },
        query: (args) => {
          // The connection arguments are there at run time; Pothos types `args` as the field's own.
          // A cursor of another account's event gives an empty page, as one of no event (ids.ts).
          const where: Prisma.UsageEventWhereInput = rowsOfCursorAccount(assertRowCursors(args as CursorArgs), 'usageEvents');
          const f = args.filter;
          if (f) {
            if (f.category != null) where.category = f.category;
            if (f.model != null) where.model = f.model;
            if (f.tier != null) where.tier = f.tier;
            if (f.agentId != null) where.agentId = f.agentId;
            if (f.userId != null) where.userId = f.userId;
            if (f.taskId != null) where.taskId = f.taskId;
            // The same rule as usageSummary's: an empty page would look like no usage in a range the caller mistyped.
            if (f.from && f.to && f.to.getTime() < f.from.getTime()) throw badInput('filter.to', 'must not be before filter.from');
            if (f.from || f.to) where.occurredAt = { ...(f.from ? { gte: f.from } : {}), ...(f.to ? { lt: f.to } : {}) };
          }
          return { where, orderBy: { seq: 'desc' } };
        },
      },
      { name: 'UsageEventConnection' },
      { name: 'UsageEventEdge' },
    ),
    usageSummary: t.field({
      type: [UsageSummaryRowRef],
      description:
        'Credits spent between from and to (default: the current billing period), grouped by the given dimensions (the dropdown breakdown: category, then tier, then model). Refunded events are left out.',
      args: {
        from: t.arg({ type: 'DateTime', required: false }),
        to: t.arg({ type: 'DateTime', required: false }),
        groupBy: t.arg({ type: [UsageDimensionEnum], required: true }),
      },
      extensions: cappedList(USAGE_SUMMARY_MAX_ROWS),
      resolve: async (a, args, ctx) => {
        // The current billing period as Balance names it (the account's now, not this server's clock).
        const period = args.from && args.to ? null : await readAccountClock(ctx.services.pool, a.id, ctx.services.clock());
        const from = args.from ?? period!.periodStart;
        const to = args.to ?? period!.periodEnd;
        if (to.getTime() < from.getTime()) {
          // A half-given range takes its other end from the current billing period; say so rather
          // than name an argument the caller never sent.
          if (!args.from) throw badInput('to', `is before the current billing period's start (${from.toISOString()}), from's default: give from as well`);
          if (!args.to) throw badInput('from', `is after the current billing period's end (${to.toISOString()}), to's default: give to as well`);
          throw badInput('to', 'must not be before from');
        }
        return usageSummary(ctx.services.pool, a.id, { from, to }, args.groupBy);
      },
    }),
    usageHistory: t.field({
      type: [UsageMonthRef],
      description: 'Month-by-month consumption, newest first, with the category breakdown.',
      args: { months: t.arg.int({ required: false, defaultValue: USAGE_HISTORY_DEFAULT_MONTHS }) },
      // One row per month asked for (months without usage included): the estimate counts `months`.
      extensions: listSizedBy('months', USAGE_HISTORY_MAX_MONTHS),
      resolve: async (a, args, ctx) => {
        const months = args.months ?? USAGE_HISTORY_DEFAULT_MONTHS;
        if (months < 1 || months > USAGE_HISTORY_MAX_MONTHS) throw badInput('months', `must be 1 to ${USAGE_HISTORY_MAX_MONTHS}`);
        // Newest month: the account's now's, as Balance reads it (not this server's clock).
        const { now } = await readAccountClock(ctx.services.pool, a.id, ctx.services.clock());
        return usageHistory(ctx.services.pool, a.id, now, months);
      },
    }),
    ledger: t.relatedConnection(
      'ledgerEntries',
      {
        cursor: 'id',
        maxSize: MAX_PAGE,
        description: 'The complete ledger of this account, newest first.',
        query: newestFirstRows('ledgerEntries'),
      },
      { name: 'LedgerEntryConnection' },
      { name: 'LedgerEntryEdge' },
    ),
    reservations: t.prismaField({
      type: [ReservationRef],
      args: { status: t.arg({ type: [ReservationStatusEnum], required: false }) },
      extensions: cappedList(ACCOUNT_RESERVATIONS_CAP),
      resolve: async (query, a, args, ctx) => {
        // The account's now as Balance reads it (as for batches above); no read without a status filter.
        const now = args.status ? (await readAccountClock(ctx.services.pool, a.id, ctx.services.clock())).now : null;
        // The statuses as the API shows them (effectiveReservationStatus), filtered in SQL before the
        // cap, so an old ACTIVE hold is never cut by newer closed ones. Holds of one group-commit
        // transaction share createdAt: the id breaks the tie, so the order (and the cap) is stable.
        // One statement per stored status, each the newest `cap` of one index range, merged here:
        // an OR of statuses in one statement could only be read in order through the account's
        // every hold (filtering out the others) or all of its holds of those statuses sorted, so a
        // rare status cost the account's whole history (issue #6).
        const order = [{ createdAt: 'desc' as const }, { id: 'desc' as const }];
        if (!now) return ctx.prisma.reservation.findMany({ ...query, where: { accountId: a.id }, orderBy: order, take: ACCOUNT_RESERVATIONS_CAP });
        const parts = reservationStatusParts(args.status ?? [], now);
        const pages = await Promise.all(
          parts.map((where) => ctx.prisma.reservation.findMany({ ...query, where: { accountId: a.id, ...where }, orderBy: order, take: ACCOUNT_RESERVATIONS_CAP })),
        );
        return pages.flat().sort(newestHoldFirst).slice(0, ACCOUNT_RESERVATIONS_CAP);
      },
    }),
    referralCode: t.exposeString('referralCode', { description: 'Code that a new account passes to redeemReferral.' }),
    reconciliation: t.field({
      type: ReconciliationRef,
      description: 'Checks the ledger invariant of this account now (batches - debt = total = sum of ledger entries).',
      resolve: (a, _args, ctx) => reconcileAccount(ctx.services.pool, a.id),
    }),
  }),
});
