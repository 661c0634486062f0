/** Enums of the contract, mirrored from the database enums. */
import { builder } from '../builder.js';

/** GraphQL enum `AccountKind` (contract), same values as the database enum. */
export const AccountKindEnum = builder.enumType('AccountKind', {
  values: {
    ORGANIZATION: { description: 'A shared pool that all members and agents of an organization draw from.' },
    USER: { description: 'A pool owned by one user, across every organization the user works in.' },
  } as const,
});

/** GraphQL enum `CreditType` (contract), same values as the database enum. */
export const CreditTypeEnum = builder.enumType('CreditType', {
  values: {
    FREE: { description: 'Complimentary credit (welcome bonus, promo, referral). Drawn first; usually expires.' },
    PAID: { description: 'Bought or granted by a subscription. Kept in reserve behind FREE credit.' },
  } as const,
});

/** GraphQL enum `GrantSource` (contract), same values as the database enum. */
export const GrantSourceEnum = builder.enumType('GrantSource', {
  values: ['WELCOME_BONUS', 'PROMO_CODE', 'REFERRAL', 'PURCHASE', 'SUBSCRIPTION', 'AUTO_TOP_UP', 'ADJUSTMENT'] as const,
});

/** GraphQL enum `BatchStatus` (contract), same values as the database enum. */
export const BatchStatusEnum = builder.enumType('BatchStatus', {
  values: {
    ACTIVE: {},
    EXHAUSTED: { description: 'Remaining reached 0 by consumption.' },
    EXPIRED: { description: 'expiresAt passed (or a billing cycle reset it) with credit left; the rest was removed.' },
    VOIDED: { description: 'Revoked by an operator (voidGrant).' },
  } as const,
});

/** GraphQL enum `LedgerEntryType` (contract), same values as the database enum. */
export const LedgerEntryTypeEnum = builder.enumType('LedgerEntryType', {
  values: {
    GRANT: {},
    CONSUME: {},
    EXPIRE: {},
    RESERVE: {},
    RELEASE: {},
    REFUND: {},
    VOID: {},
    ADJUST: {},
    DEBT_REPAY: { description: 'Part of a new grant that paid back a negative balance (debt) left by an overage.' },
  } as const,
});

/** GraphQL enum `ReservationStatus` (contract), same values as the database enum. */
export const ReservationStatusEnum = builder.enumType('ReservationStatus', {
  values: ['ACTIVE', 'SETTLED', 'RELEASED', 'EXPIRED'] as const,
});

/** GraphQL enum `PriceKind` (contract), same values as the database enum. */
export const PriceKindEnum = builder.enumType('PriceKind', {
  values: {
    FREE: { description: 'Costs nothing (web search on some platforms, local models).' },
    FLAT: { description: 'A fixed number of credits per event (per request, per block run, per task completion).' },
    PER_UNIT: {
      description:
        'credits x the quantity named by the rule\'s `unit`: "units" (quantities.units), "seconds", "minutes" or "hours" (from quantities.seconds, pro rata), or "tokens" (input + output + reasoning tokens).',
    },
    PER_TOKEN: {
      description:
        "LLM tokens at the provider's catalog price for the model (input, output, reasoning, cache read, cache write), converted to credits, plus markupPercent.",
    },
    PASS_THROUGH: {
      description: 'The provider-reported cost (providerCostUsd) converted to credits plus markupPercent; fallbackCredits when the provider reported no cost.',
    },
  } as const,
});

/** GraphQL enum `UsageDimension` (contract), same values as the database enum. */
export const UsageDimensionEnum = builder.enumType('UsageDimension', {
  values: ['CATEGORY', 'TIER', 'MODEL', 'AGENT', 'USER', 'TASK'] as const,
});
