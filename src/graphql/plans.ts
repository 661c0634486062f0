/**
 * GraphQL of plans, billing cycles and test clocks (contract: Plan, PlanSubscription,
 * RolloverPolicy, CreatePlanInput, Query.plans, Mutation.createPlan / subscribeToPlan /
 * cancelSubscription / advanceTestClock, Account.subscription).
 */
import { builder } from './builder.js';
import { decodeId } from './ids.js';
import { AccountRef } from './types/account.js';
import { cancelSubscription, createPlan, listPlans, readSubscription, subscribeToPlan, type PlanRecord, type SubscriptionView } from '../services/plans.js';
import { advanceTestClock } from '../services/test-clock.js';

/** Contract enum RolloverPolicy. */
export const RolloverPolicyEnum = builder.enumType('RolloverPolicy', {
  values: {
    RESET: { description: 'Unused subscription credit expires at the end of the billing period.' },
    ROLLOVER: { description: 'Unused subscription credit carries over, up to rolloverCapCredits.' },
  } as const,
});

/** GraphQL node `Plan` (Relay global id "Plan:<uuid>"). */
export const PlanRef = builder.prismaNode('Plan', {
  id: { field: 'id' },
  fields: (t) => ({
    name: t.exposeString('name'),
    monthlyCredits: t.field({ type: 'Credits', description: 'PAID credit granted at the start of every billing period.', resolve: (p) => p.monthlyMicroCredits }),
    rollover: t.field({ type: RolloverPolicyEnum, resolve: (p) => p.rollover }),
    rolloverCapCredits: t.field({ type: 'Credits', nullable: true, resolve: (p) => p.rolloverCapMicroCredits }),
    priceUsd: t.field({ type: 'Decimal', resolve: (p) => p.priceUsd.toString() }),
  }),
});

/** A PlanRecord as the Prisma row shape PlanRef resolves from. */
function planRow(p: PlanRecord) {
  return { id: p.id, name: p.name, monthlyMicroCredits: p.monthlyMicroCredits, rollover: p.rollover, rolloverCapMicroCredits: p.rolloverCapMicroCredits, priceUsd: p.priceUsd, createdAt: new Date(0) } as never;
}

/** GraphQL type `PlanSubscription`. */
export const PlanSubscriptionRef = builder.objectRef<SubscriptionView>('PlanSubscription').implement({
  fields: (t) => ({
    plan: t.field({ type: PlanRef, resolve: (s) => planRow(s.plan) }),
    currentPeriodStart: t.field({ type: 'DateTime', resolve: (s) => s.currentPeriodStart }),
    currentPeriodEnd: t.field({ type: 'DateTime', resolve: (s) => s.currentPeriodEnd }),
    active: t.exposeBoolean('active'),
  }),
});

const CreatePlanInputRef = builder.inputType('CreatePlanInput', {
  fields: (t) => ({
    name: t.string({ required: true }),
    monthlyCredits: t.field({ type: 'Credits', required: true }),
    rollover: t.field({ type: RolloverPolicyEnum, required: true }),
    rolloverCapCredits: t.field({ type: 'Credits', required: false }),
    priceUsd: t.field({ type: 'Decimal', required: true }),
  }),
});

builder.objectField(AccountRef, 'subscription', (t) =>
  t.field({ type: PlanSubscriptionRef, nullable: true, resolve: (a, _args, ctx) => readSubscription(ctx.services.pool, a.id, ctx.services.clock()) }),
);

builder.queryFields((t) => ({
  // The catalog, counted as 1 in the query cost estimate: a root field whose items hold scalars
  // only, so its size never multiplies another list's.
  plans: t.field({
    type: [PlanRef],
    authScopes: { authenticated: true },
    resolve: async (_root, _args, ctx) => (await listPlans(ctx.services.pool)).map(planRow),
  }),
}));

builder.mutationFields((t) => ({
  createPlan: t.field({
    type: PlanRef,
    authScopes: { admin: true },
    args: { input: t.arg({ type: CreatePlanInputRef, required: true }) },
    resolve: async (_root, { input }, ctx) =>
      planRow(
        await createPlan(ctx.services, {
          name: input.name,
          monthlyMicroCredits: input.monthlyCredits,
          rollover: input.rollover,
          rolloverCapMicroCredits: input.rolloverCapCredits ?? null,
          priceUsd: input.priceUsd,
        }),
      ),
  }),
  subscribeToPlan: t.field({
    type: PlanSubscriptionRef,
    description: "Starts (or changes) the account's plan; the period starts now (or at the test clock's time).",
    authScopes: { creditsWrite: true },
    args: { accountId: t.arg.id({ required: true }), planId: t.arg.id({ required: true }) },
    resolve: (_root, args, ctx) =>
      subscribeToPlan(ctx.services, decodeId(String(args.accountId), 'Account', 'account'), decodeId(String(args.planId), 'Plan', 'plan')),
  }),
  cancelSubscription: t.field({
    type: PlanSubscriptionRef,
    authScopes: { creditsWrite: true },
    args: { accountId: t.arg.id({ required: true }) },
    resolve: (_root, args, ctx) => cancelSubscription(ctx.services, decodeId(String(args.accountId), 'Account', 'account')),
  }),
  advanceTestClock: t.prismaField({
    type: AccountRef,
    description:
      "Test-mode accounts only: moves the account's clock forward to `to` and runs, in order,\neverything due on the way (batch expiries, reservation expiries, period resets and\ngrants, alerts, auto top-ups) before returning.",
    authScopes: { creditsWrite: true },
    args: { accountId: t.arg.id({ required: true }), to: t.arg({ type: 'DateTime', required: true }) },
    resolve: async (query, _root, args, ctx) => {
      // credits:write is the gate (as for grants); the Account returned shows a write-only key
      // its identity fields only (account data needs `read`: src/graphql/access.ts).
      const accountId = decodeId(String(args.accountId), 'Account', 'account');
      await advanceTestClock(ctx.services, accountId, args.to);
      return ctx.prisma.account.findUniqueOrThrow({ ...query, where: { id: accountId } });
    },
  }),
}));
