/**
 * Query fields. Every entry point that takes an account (or an object of an account) checks
 * that the caller may read it; ids of other tenants answer like missing ones.
 */
import { builder } from './builder.js';
import { CreditAlertRef } from './types/alerts.js';
import { PlanRef } from './plans.js';
import { CreditPackRef } from './billing.js';
import { LedgerError } from '../ledger/errors.js';
import { assertAccountReadable, assertCanReadAccount, ownedByReadableAccountWhere, readableAccountWhere } from './access.js';
import { decodeId, tryDecodeId } from './ids.js';
import { AccountRef, UsageSummaryRowRef } from './types/account.js';
import { CreditBatchRef, CreditGrantRef, LedgerEntryRef, ReservationRef, UsageEventRef } from './types/ledger.js';
import { ModelPriceRef, PriceBookRef, QuoteRef, SettingsRef, type QuoteView } from './types/pricing.js';
import { RecordUsageInputRef, toUsageInput } from './inputs.js';
import { usageSummary, type UsageSummaryRow } from '../services/usage-summary.js';
import { optionalLabel } from '../services/usage-command.js';
import { quoteUsage } from '../services/quote-usage.js';
import { modelPrices } from '../pricing/price-book.js';
import { formatCredits } from '../ledger/credits.js';
import type { GraphQLContext } from './context.js';
import { MAX_DATE_TIME, MIN_DATE_TIME } from './input-values.js';
import { cappedList } from './cost-limit.js';

/**
 * Most accounts Viewer.accounts serves: the user's own USER account and its organization's
 * (externalId is unique), so at most 2; also the estimate's count (cost-limit.ts cappedList).
 */
export const VIEWER_ACCOUNTS_MAX = 2;

const ViewerRef = builder.objectRef<{ userId: string; orgId: string | null }>('Viewer').implement({
  fields: (t) => ({
    userId: t.exposeString('userId', { description: "The end user's external id (the token's subject)." }),
    accounts: t.prismaField({
      type: [AccountRef],
      description: 'Accounts this user may read: its own USER account and its organization\'s.',
      extensions: cappedList(VIEWER_ACCOUNTS_MAX),
      resolve: (query, v, _args, ctx) =>
        ctx.prisma.account.findMany({
          ...query,
          where: {
            OR: [{ kind: 'USER', externalId: v.userId }, ...(v.orgId ? [{ kind: 'ORGANIZATION' as const, externalId: v.orgId }] : [])],
          },
          orderBy: { kind: 'asc' },
          take: VIEWER_ACCOUNTS_MAX,
        }),
    }),
  }),
});

const TaskCostRef = builder
  .objectRef<{ taskId: string; creditsMicroCredits: bigint; events: number; byCategory: UsageSummaryRow[] }>('TaskCost')
  .implement({
    fields: (t) => ({
      taskId: t.exposeString('taskId'),
      credits: t.field({ type: 'Credits', resolve: (c) => c.creditsMicroCredits }),
      events: t.exposeInt('events'),
      // One row per category of the task's events, a category of the price book's rules (a
      // handful): counted as 1 in the query cost estimate (cost-limit.ts), as UsageMonth.byCategory.
      byCategory: t.field({ type: [UsageSummaryRowRef], resolve: (c) => c.byCategory }),
    }),
  });

/**
 * Loads any node by global id, or null when missing or not readable by the caller. A row of an
 * account is loaded with the caller's access filter in the same query (access.ts
 * readableAccountWhere), so another tenant's id costs the same one query as an id of nothing.
 */
async function loadNode(ctx: GraphQLContext, globalId: string): Promise<unknown> {
  const d = tryDecodeId(globalId);
  if (!d) return null;
  const p = ctx.prisma;
  const accounts = readableAccountWhere(ctx.principal);
  const owned = ownedByReadableAccountWhere(ctx.principal);
  switch (d.typename) {
    case 'Account': {
      const a = accounts && (await p.account.findUnique({ where: { id: d.id, AND: [accounts] } }));
      return a ? AccountRef.addBrand(a) : null;
    }
    case 'CreditBatch': {
      const r = owned && (await p.creditBatch.findUnique({ where: { id: d.id, ...owned } }));
      return r ? CreditBatchRef.addBrand(r) : null;
    }
    case 'CreditGrant': {
      const r = owned && (await p.creditGrant.findUnique({ where: { id: d.id, ...owned } }));
      return r ? CreditGrantRef.addBrand(r) : null;
    }
    case 'UsageEvent': {
      const r = owned && (await p.usageEvent.findUnique({ where: { id: d.id, ...owned } }));
      return r ? UsageEventRef.addBrand(r) : null;
    }
    case 'LedgerEntry': {
      const r = owned && (await p.ledgerEntry.findUnique({ where: { id: d.id, ...owned } }));
      return r ? LedgerEntryRef.addBrand(r) : null;
    }
    case 'Reservation': {
      const r = owned && (await p.reservation.findUnique({ where: { id: d.id, ...owned } }));
      return r ? ReservationRef.addBrand(r) : null;
    }
    case 'CreditPack': {
      const r = await p.creditPack.findUnique({ where: { id: d.id } });
      return r && CreditPackRef.addBrand(r);
    }
    case 'Plan': {
      const r = await p.plan.findUnique({ where: { id: d.id } });
      return r && PlanRef.addBrand(r);
    }
    case 'CreditAlert': {
      const r = owned && (await p.creditAlert.findUnique({ where: { id: d.id, ...owned } }));
      return r ? CreditAlertRef.addBrand(r) : null;
    }
    default:
      return null;
  }
}

builder.queryType({
  fields: (t) => ({
    node: t.field({
      type: builder.nodeInterfaceRef(),
      nullable: true,
      authScopes: { authenticated: true },
      args: { id: t.arg.id({ required: true }) },
      resolve: (_root, args, ctx) => loadNode(ctx, String(args.id)) as never,
    }),
    account: t.prismaField({
      type: AccountRef,
      nullable: true,
      authScopes: { authenticated: true },
      args: { id: t.arg.id({ required: true }) },
      resolve: async (query, _root, args, ctx) => {
        const d = tryDecodeId(String(args.id));
        const accounts = readableAccountWhere(ctx.principal);
        if (!d || d.typename !== 'Account' || !accounts) return null;
        return ctx.prisma.account.findUnique({ ...query, where: { id: d.id, AND: [accounts] } });
      },
    }),
    accountByExternalId: t.prismaField({
      type: AccountRef,
      nullable: true,
      authScopes: { authenticated: true },
      args: { externalId: t.arg.string({ required: true }) },
      resolve: async (query, _root, args, ctx) => {
        // One query with the access filter: another tenant's external id costs what a missing one does.
        const accounts = readableAccountWhere(ctx.principal);
        return accounts && ctx.prisma.account.findUnique({ ...query, where: { externalId: args.externalId, AND: [accounts] } });
      },
    }),
    viewer: t.field({
      type: ViewerRef,
      nullable: true,
      description: 'The end user behind a user token; null for service keys.',
      authScopes: { authenticated: true },
      resolve: (_root, _args, ctx) => (ctx.principal?.kind === 'user' ? { userId: ctx.principal.userId, orgId: ctx.principal.orgId } : null),
    }),
    usageEvent: t.prismaField({
      type: UsageEventRef,
      nullable: true,
      authScopes: { authenticated: true },
      args: { id: t.arg.id({ required: true }) },
      resolve: async (query, _root, args, ctx) => {
        const d = tryDecodeId(String(args.id));
        const owned = ownedByReadableAccountWhere(ctx.principal);
        if (!d || d.typename !== 'UsageEvent' || !owned) return null;
        return ctx.prisma.usageEvent.findUnique({ ...query, where: { id: d.id, ...owned } });
      },
    }),
    taskCost: t.field({
      type: TaskCostRef,
      description: 'Total credit cost of one task or agent run.',
      authScopes: { authenticated: true },
      args: { accountId: t.arg.id({ required: true }), taskId: t.arg.string({ required: true }) },
      resolve: async (_root, args, ctx) => {
        const accountId = decodeId(String(args.accountId), 'Account', 'account');
        // A task id as a usage event may carry one (1 to 200 characters, one line): an empty one
        // was read as "no task filter" and answered the cost of the account's every event.
        const taskId = optionalLabel(args.taskId, 'taskId')!;
        await assertAccountReadable(ctx, accountId); // a missing account is NOT_FOUND, as for `quote`
        const range = { from: MIN_DATE_TIME, to: MAX_DATE_TIME }; // every instant the API accepts (events dated before 1970 included)
        const [totals] = await usageSummary(ctx.services.pool, accountId, range, [], { taskId });
        const byCategory = await usageSummary(ctx.services.pool, accountId, range, ['CATEGORY'], { taskId });
        return { taskId, creditsMicroCredits: totals?.creditsMicroCredits ?? 0n, events: totals?.events ?? 0, byCategory };
      },
    }),
    quote: t.field({
      type: QuoteRef,
      description: 'What the event would cost now, without recording it.',
      authScopes: { authenticated: true },
      args: { input: t.arg({ type: RecordUsageInputRef, required: true }) },
      resolve: async (_root, args, ctx): Promise<QuoteView> => {
        const input = toUsageInput(args.input);
        await assertCanReadAccount(ctx, input.accountId);
        const { priced, affordable } = await quoteUsage(ctx.services, input);
        return {
          costMicroCredits: priced.costMicroCredits,
          lines: priced.lines.map((l) => ({ item: l.item, quantity: l.quantity, unitPrice: l.unitPrice, amount: formatCredits(l.amountMicroCredits), exactAmount: l.exactAmount })),
          affordable,
        };
      },
    }),
    priceBook: t.field({
      type: PriceBookRef,
      description: 'The price book in force.',
      authScopes: { authenticated: true },
      resolve: async (_root, _args, ctx) => {
        const book = await ctx.services.pricing.priceBook();
        if (!book) throw new LedgerError('NOT_FOUND', 'no price book has been published yet');
        return book;
      },
    }),
    // One row per price book rule with a model and no sku (at most MAX_PRICE_RULES), counted as 1
    // in the query cost estimate: a root field whose items hold scalars only, so its size never
    // multiplies another list's.
    modelPrices: t.field({
      type: [ModelPriceRef],
      description: 'Per-model credit prices for a model picker.',
      authScopes: { authenticated: true },
      resolve: async (_root, _args, ctx) => {
        const [book, settings] = await Promise.all([ctx.services.pricing.priceBook(), ctx.services.pricing.settings()]);
        return book ? modelPrices(book.book, { creditUsdValue: settings.creditUsdValue }, ctx.services.clock()) : [];
      },
    }),
    settings: t.field({
      type: SettingsRef,
      authScopes: { authenticated: true },
      resolve: (_root, _args, ctx) => ctx.services.pricing.settings(),
    }),
  }),
});

