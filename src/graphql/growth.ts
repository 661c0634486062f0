/**
 * Growth credits and spending controls (issue #5): promo codes, referrals and agent/user
 * budgets. Resolvers translate and call one service each.
 */
import { builder } from './builder.js';
import { decodeId, toGlobalId } from './ids.js';
import { AccountRef } from './types/account.js';
import { CreditGrantRef } from './types/ledger.js';
import type { GraphQLContext } from './context.js';
import { cappedList } from './cost-limit.js';
import { createPromoCode, findPromoCode, redeemPromoCode, type PromoCodeView } from '../services/promo-codes.js';
import { redeemReferral } from '../services/redeem-referral.js';
import { listBudgets, setSpendingBudget, type BudgetSubjectKind, type BudgetView } from '../services/spending-budgets.js';

/** GraphQL type `PromoCode` (contract), from a stored promo code (amounts in micro-credits). */
export const PromoCodeRef = builder.objectRef<PromoCodeView>('PromoCode').implement({
  fields: (t) => ({
    code: t.exposeString('code'),
    credits: t.field({ type: 'Credits', resolve: (p) => p.creditsMicroCredits }),
    expiresAfterDays: t.int({ nullable: true, resolve: (p) => p.expiresAfterDays }),
    maxRedemptions: t.int({ nullable: true, resolve: (p) => p.maxRedemptions }),
    redemptions: t.exposeInt('redemptions', { description: 'Redemptions by live accounts (at most maxRedemptions).' }),
    testRedemptions: t.exposeInt('testRedemptions', {
      description: 'Redemptions by test-mode accounts, counted apart from redemptions: at most maxRedemptions of their own, never a live slot.',
    }),
    validUntil: t.field({ type: 'DateTime', nullable: true, resolve: (p) => p.validUntil }),
  }),
});

/** GraphQL type `AgentBudget` (contract): an agent's per-period limit and its spending. */
export const AgentBudgetRef = builder.objectRef<BudgetView>('AgentBudget').implement({
  fields: (t) => ({
    agentId: t.string({ resolve: (b) => b.subjectId }),
    limit: t.field({
      type: 'Credits',
      description: "Credits this agent may spend per billing period; its usage beyond is refused with BUDGET_EXCEEDED.",
      resolve: (b) => b.limitMicroCredits,
    }),
    spent: t.field({
      type: 'Credits',
      description: 'Spent in the current billing period, plus what its active reservations hold.',
      resolve: (b) => b.spentMicroCredits,
    }),
  }),
});

/** GraphQL type `UserBudget` (addition): an end user's per-period limit inside an organization pool. */
export const UserBudgetRef = builder.objectRef<BudgetView>('UserBudget').implement({
  fields: (t) => ({
    userId: t.string({ resolve: (b) => b.subjectId }),
    limit: t.field({ type: 'Credits', resolve: (b) => b.limitMicroCredits }),
    spent: t.field({ type: 'Credits', resolve: (b) => b.spentMicroCredits }),
  }),
});

/** GraphQL input `CreatePromoCodeInput` (contract). */
export const CreatePromoCodeInputRef = builder.inputType('CreatePromoCodeInput', {
  fields: (t) => ({
    code: t.string({ required: true }),
    credits: t.field({ type: 'Credits', required: true }),
    expiresAfterDays: t.int(),
    maxRedemptions: t.int(),
    validUntil: t.field({ type: 'DateTime' }),
  }),
});

/** Shared resolver of setAgentBudget / setUserBudget (service keys only, via authScopes). */
function setBudget(ctx: GraphQLContext, kind: BudgetSubjectKind, accountGlobalId: string, subjectId: string, limit: bigint | null | undefined) {
  const accountId = decodeId(accountGlobalId, 'Account', 'account');
  return setSpendingBudget(ctx.services, { accountId, subjectKind: kind, subjectId, limitMicroCredits: limit ?? null });
}

/**
 * The most budgets one read of Account.budgets / userBudgets serves: 1,000, as Account.batches
 * and Account.reservations, so a client that reads the list once (as before the cap) gets every
 * budget of all but very large organizations; the query cost estimate weighs it as those lists,
 * min(cap, CAPPED_LIST_COST_ITEMS) items (src/graphql/cost-limit.ts). Nothing bounds how many
 * agents or users an account budgets: the list is in subject id order (bytes) and `after` reads on
 * from the last id of a full answer (README "Limits").
 */
export const ACCOUNT_BUDGETS_CAP = 1_000;

builder.objectFields(AccountRef, (t) => ({
  budgets: t.field({
    type: [AgentBudgetRef],
    description: `At most ${ACCOUNT_BUDGETS_CAP} agent budgets, in agentId order (bytes), those after \`after\` when given: pass the last agentId of a full answer to read on.`,
    args: { after: t.arg.string({ required: false, description: 'Read the budgets whose agentId comes after this one (the last of the previous answer).' }) },
    extensions: cappedList(ACCOUNT_BUDGETS_CAP),
    resolve: (a, args, ctx) => listBudgets(ctx.services.pool, a.id, ctx.services.clock(), 'AGENT', { after: args.after, limit: ACCOUNT_BUDGETS_CAP }),
  }),
  userBudgets: t.field({
    type: [UserBudgetRef],
    description: `Per-member budgets inside this (organization) pool: at most ${ACCOUNT_BUDGETS_CAP}, in userId order (bytes), those after \`after\` when given: pass the last userId of a full answer to read on.`,
    args: { after: t.arg.string({ required: false, description: 'Read the budgets whose userId comes after this one (the last of the previous answer).' }) },
    extensions: cappedList(ACCOUNT_BUDGETS_CAP),
    resolve: (a, args, ctx) => listBudgets(ctx.services.pool, a.id, ctx.services.clock(), 'USER', { after: args.after, limit: ACCOUNT_BUDGETS_CAP }),
  }),
  referralsRewarded: t.int({
    description: 'Referral rewards this account received as the referrer.',
    resolve: async (a, _args, ctx) => {
      const { rows } = await ctx.services.pool.query('SELECT COUNT(*)::int AS n FROM referrals WHERE referrer_account_id = $1 AND referrer_rewarded', [a.id]);
      return rows[0].n as number;
    },
  }),
}));

builder.queryFields((t) => ({
  promoCode: t.field({
    type: PromoCodeRef,
    nullable: true,
    description: 'A promo code and how often it was redeemed (operators).',
    authScopes: { creditsWrite: true },
    args: { code: t.arg.string({ required: true }) },
    resolve: async (_root, args, ctx) => {
      return findPromoCode(ctx.services, args.code);
    },
  }),
}));

builder.mutationFields((t) => ({
  createPromoCode: t.field({
    type: PromoCodeRef,
    authScopes: { admin: true },
    args: { input: t.arg({ type: CreatePromoCodeInputRef, required: true }) },
    resolve: (_root, { input }, ctx) =>
      createPromoCode(ctx.services, {
        code: input.code,
        creditsMicroCredits: input.credits,
        expiresAfterDays: input.expiresAfterDays ?? null,
        maxRedemptions: input.maxRedemptions ?? null,
        validUntil: input.validUntil ?? null,
      }),
  }),
  redeemPromoCode: t.prismaField({
    type: CreditGrantRef,
    description: 'Once per account per code.',
    authScopes: { creditsWrite: true },
    args: { accountId: t.arg.id({ required: true }), code: t.arg.string({ required: true }) },
    resolve: async (query, _root, args, ctx) => {
      const { grantId } = await redeemPromoCode(ctx.services, decodeId(String(args.accountId), 'Account', 'account'), args.code);
      return ctx.prisma.creditGrant.findUniqueOrThrow({ ...query, where: { id: grantId } });
    },
  }),
  redeemReferral: t.prismaField({
    type: CreditGrantRef,
    description:
      "The new account redeems an existing account's referralCode: both are granted Settings.referralRewardCredits as FREE credit, up to referralMaxRewardsPerAccount rewards for the referrer. When the referrer is past that cap, only the new account is rewarded and the returned grant's note says so.",
    authScopes: { creditsWrite: true },
    args: { accountId: t.arg.id({ required: true }), code: t.arg.string({ required: true }) },
    resolve: async (query, _root, args, ctx) => {
      const { grantId } = await redeemReferral(ctx.services, decodeId(String(args.accountId), 'Account', 'account'), args.code, (id) => toGlobalId('Account', id));
      return ctx.prisma.creditGrant.findUniqueOrThrow({ ...query, where: { id: grantId } });
    },
  }),
  setAgentBudget: t.field({
    type: AgentBudgetRef,
    nullable: true,
    description: "Sets an agent's per-billing-period credit limit inside the pool; a null limit removes it (returns null).",
    authScopes: { creditsWrite: true },
    args: { accountId: t.arg.id({ required: true }), agentId: t.arg.string({ required: true }), limit: t.arg({ type: 'Credits', required: false }) },
    resolve: (_root, args, ctx) => setBudget(ctx, 'AGENT', String(args.accountId), args.agentId, args.limit),
  }),
  setUserBudget: t.field({
    type: UserBudgetRef,
    nullable: true,
    description: "Sets an end user's per-billing-period credit limit inside an organization pool (usage with that userId); null removes it.",
    authScopes: { creditsWrite: true },
    args: { accountId: t.arg.id({ required: true }), userId: t.arg.string({ required: true }), limit: t.arg({ type: 'Credits', required: false }) },
    resolve: (_root, args, ctx) => setBudget(ctx, 'USER', String(args.accountId), args.userId, args.limit),
  }),
}));
