/**
 * GraphQL of credit packs, payment methods, purchases and auto top-up (issue #4; contract:
 * CreditPack, AutoTopUpSettings, CreateCreditPackInput, SetAutoTopUpInput, Query.creditPacks,
 * Mutation.createCreditPack / purchaseCreditPack / setAutoTopUp, Account.autoTopUp; additions:
 * PaymentMethodInfo, Mutation.attachPaymentMethod, Account.paymentMethod, AutoTopUpSettings.pausedAt).
 * Resolvers translate and call one service each.
 */
import { builder } from './builder.js';
import { decodeId } from './ids.js';
import { CreditGrantRef } from './types/ledger.js';
import { canonicalUsd, createCreditPack } from '../services/credit-packs.js';
import { attachPaymentMethod, purchaseCreditPack } from '../services/purchase-pack.js';
import { setAutoTopUp, topUpsUsedThisPeriod } from '../services/auto-top-up.js';

/** GraphQL node `CreditPack` (contract), backed by the Prisma model CreditPack; id is a Relay global id. */
export const CreditPackRef = builder.prismaNode('CreditPack', {
  id: { field: 'id' },
  fields: (t) => ({
    name: t.exposeString('name'),
    credits: t.field({ type: 'Credits', resolve: (p) => p.microCredits }),
    bonusCredits: t.field({ type: 'Credits', description: 'Volume bonus, granted with the pack.', resolve: (p) => p.bonusMicroCredits }),
    priceUsd: t.field({ type: 'Decimal', resolve: (p) => canonicalUsd(p.priceUsd.toFixed()) }),
    expiresAfterDays: t.exposeInt('expiresAfterDays', { nullable: true, description: "Null: the pack's credit never expires." }),
  }),
});

/** GraphQL type `AutoTopUpSettings` (contract), backed by the Prisma model AutoTopUpSetting. */
export const AutoTopUpSettingsRef = builder.prismaObject('AutoTopUpSetting', {
  name: 'AutoTopUpSettings',
  fields: (t) => ({
    enabled: t.exposeBoolean('enabled', {
      description:
        "False when turned off, or paused (see pausedAt): after 3 failed charges in a row, or by a full refund or a dispute of one of the account's payments (lastError names it); setAutoTopUp re-enables it.",
    }),
    thresholdCredits: t.field({
      type: 'Credits',
      description: 'When available falls below this, one top-up is charged.',
      resolve: (s) => s.thresholdMicroCredits,
    }),
    pack: t.relation('pack'),
    maxPerPeriod: t.exposeInt('maxPerPeriod', { description: 'At most this many automatic top-ups per billing period (a spending cap).' }),
    usedThisPeriod: t.int({
      description: 'Top-ups that succeeded in the current billing period.',
      resolve: (s, _args, ctx) => topUpsUsedThisPeriod(ctx.services.pool, s.accountId, ctx.services.clock()),
    }),
    lastAttemptAt: t.field({ type: 'DateTime', nullable: true, resolve: (s) => s.lastAttemptAt }),
    lastError: t.exposeString('lastError', {
      nullable: true,
      description:
        "Set when the last charge attempt failed (why), or when a full refund or a dispute of one of the account's payments paused auto top-up (names the payment); cleared by the next top-up that succeeds.",
    }),
    pausedAt: t.field({
      type: 'DateTime',
      nullable: true,
      description:
        "When auto top-up was paused (enabled turned false) by 3 failed charges in a row, or by a full refund or a dispute of one of the account's payments (lastError names it); null when not paused. setAutoTopUp re-enables it.",
      resolve: (s) => s.pausedAt,
    }),
  }),
});

/** `pm_…4242`: the reference's kind prefix and its last 4 characters, never the whole reference. */
function maskReference(reference: string): string {
  return `${/^[A-Za-z]+_/.exec(reference)?.[0] ?? ''}…${reference.slice(-4)}`;
}

/** GraphQL type `PaymentMethodInfo` (addition): the saved payment method, masked. */
export const PaymentMethodInfoRef = builder.prismaObject('PaymentMethod', {
  name: 'PaymentMethodInfo',
  description: 'The payment method charged for pack purchases and automatic top-ups.',
  fields: (t) => ({
    provider: t.exposeString('provider', { description: 'The payment provider: simulator or stripe.' }),
    reference: t.string({ description: "The provider's reference, masked (kind prefix and last 4 characters).", resolve: (m) => maskReference(m.reference) }),
    attachedAt: t.field({ type: 'DateTime', resolve: (m) => m.createdAt }),
  }),
});

/** GraphQL input `CreateCreditPackInput` (contract). */
export const CreateCreditPackInputRef = builder.inputType('CreateCreditPackInput', {
  fields: (t) => ({
    name: t.string({ required: true }),
    credits: t.field({ type: 'Credits', required: true }),
    bonusCredits: t.field({ type: 'Credits', defaultValue: 0n }),
    priceUsd: t.field({ type: 'Decimal', required: true }),
    expiresAfterDays: t.int(),
  }),
});

/** GraphQL input `SetAutoTopUpInput` (contract). */
export const SetAutoTopUpInputRef = builder.inputType('SetAutoTopUpInput', {
  fields: (t) => ({
    accountId: t.id({ required: true }),
    enabled: t.boolean({ required: true }),
    thresholdCredits: t.field({ type: 'Credits', required: true }),
    packId: t.id({ required: true }),
    maxPerPeriod: t.int({ defaultValue: 3 }),
  }),
});

builder.prismaObjectFields('Account', (t) => ({
  autoTopUp: t.relation('autoTopUp', { nullable: true }),
  paymentMethod: t.relation('paymentMethod', { nullable: true }),
}));

builder.queryFields((t) => ({
  // The catalog, counted as 1 in the query cost estimate: a root field whose items hold scalars
  // only, so its size never multiplies another list's.
  creditPacks: t.prismaField({
    type: [CreditPackRef],
    description: 'The packs for sale, cheapest first.',
    authScopes: { authenticated: true },
    resolve: (query, _root, _args, ctx) => ctx.prisma.creditPack.findMany({ ...query, orderBy: [{ priceUsd: 'asc' }, { name: 'asc' }] }),
  }),
}));

builder.mutationFields((t) => ({
  createCreditPack: t.prismaField({
    type: CreditPackRef,
    description: 'Creating the same name again with the same terms returns the pack; other terms: IDEMPOTENCY_CONFLICT (packs never change).',
    authScopes: { admin: true },
    args: { input: t.arg({ type: CreateCreditPackInputRef, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const pack = await createCreditPack(ctx.services, {
        name: input.name,
        microCredits: input.credits,
        bonusMicroCredits: input.bonusCredits ?? 0n,
        priceUsd: input.priceUsd,
        expiresAfterDays: input.expiresAfterDays ?? null,
      });
      return ctx.prisma.creditPack.findUniqueOrThrow({ ...query, where: { id: pack.id } });
    },
  }),
  attachPaymentMethod: t.prismaField({
    type: PaymentMethodInfoRef,
    description: "Saves (or replaces) the account's payment method: the provider's reference (Stripe: pm_… or cus_…/pm_…; the simulator takes any).",
    authScopes: { creditsWrite: true },
    args: { accountId: t.arg.id({ required: true }), reference: t.arg.string({ required: true }) },
    resolve: async (query, _root, args, ctx) => {
      const accountId = decodeId(String(args.accountId), 'Account', 'account');
      await attachPaymentMethod(ctx.services, accountId, args.reference);
      return ctx.prisma.paymentMethod.findUniqueOrThrow({ ...query, where: { accountId } });
    },
  }),
  purchaseCreditPack: t.prismaField({
    type: CreditGrantRef,
    description:
      "Charges the account's payment method and grants the pack as PAID credit: one batch of credits + bonus. Idempotent on idempotencyKey (a replay returns the same grant and charges nothing; another pack: IDEMPOTENCY_CONFLICT). Declined or needing the customer: PAYMENT_FAILED (extensions.reason). No answer from the provider: UNAVAILABLE, retry with the same key.",
    authScopes: { creditsWrite: true },
    args: { accountId: t.arg.id({ required: true }), packId: t.arg.id({ required: true }), idempotencyKey: t.arg.string({ required: true }) },
    resolve: async (query, _root, args, ctx) => {
      const { grantId } = await purchaseCreditPack(ctx.services, {
        accountId: decodeId(String(args.accountId), 'Account', 'account'),
        packId: decodeId(String(args.packId), 'CreditPack', 'credit pack'),
        idempotencyKey: args.idempotencyKey,
      });
      return ctx.prisma.creditGrant.findUniqueOrThrow({ ...query, where: { id: grantId } });
    },
  }),
  setAutoTopUp: t.prismaField({
    type: AutoTopUpSettingsRef,
    description:
      'Saves auto top-up settings; saving re-enables a paused one. Enabling needs a payment method. When available credit is already below the threshold, one top-up starts at once.',
    authScopes: { creditsWrite: true },
    args: { input: t.arg({ type: SetAutoTopUpInputRef, required: true }) },
    resolve: async (query, _root, { input }, ctx) => {
      const accountId = decodeId(String(input.accountId), 'Account', 'account');
      await setAutoTopUp(ctx.services, {
        accountId,
        enabled: input.enabled,
        thresholdMicroCredits: input.thresholdCredits,
        packId: decodeId(String(input.packId), 'CreditPack', 'credit pack'),
        maxPerPeriod: input.maxPerPeriod ?? 3,
      });
      return ctx.prisma.autoTopUpSetting.findUniqueOrThrow({ ...query, where: { accountId } });
    },
  }),
}));
