/**
 * GraphQL of account statements (addition): Account.statement(periodStart) and the types
 * AccountStatement / StatementGrant. The resolver calls one service (src/services/
 * account-statement.ts); the field needs the accountData scope like every Account field that is
 * not an identity field, so a `read` key and the account's own end users read it, as the balance.
 */
import { builder } from './builder.js';
import { AccountRef, UsageSummaryRowRef } from './types/account.js';
import { GrantSourceEnum } from './types/enums.js';
import { readAccountStatement, statementUsage, type AccountStatement, type GrantSource } from '../services/account-statement.js';

/** GraphQL type `StatementGrant` (addition): credit granted in a statement's period from one source. */
export const StatementGrantRef = builder.objectRef<{ source: GrantSource; amountMicroCredits: bigint }>('StatementGrant').implement({
  description: 'Credit granted in the period from one grant source (GRANT ledger entries of batches of that source).',
  fields: (t) => ({
    source: t.field({ type: GrantSourceEnum, resolve: (g) => g.source }),
    credits: t.field({ type: 'Credits', resolve: (g) => g.amountMicroCredits }),
  }),
});

/** GraphQL type `AccountStatement` (addition), resolved from AccountStatement (amounts in micro-credits). */
export const AccountStatementRef = builder.objectRef<AccountStatement>('AccountStatement').implement({
  description:
    'What the account\'s credit did in one billing period. openingTotal + granted + consumed + expired + refunded + voided + debtRepaid + adjusted = closingTotal, exactly. ' +
    'Movements are sums of ledger entries, signed as in the ledger (credit in positive, out negative). An entry belongs to the period its createdAt falls in ' +
    '(periodStart <= createdAt < periodEnd), except an EXPIRE dated exactly at a boundary, which belongs to the period that ends there (periodStart < createdAt <= periodEnd): ' +
    'credit that expires at the period end is part of the period. EXPIRE entries are dated at the batch\'s expiresAt; credit past its expiresAt whose EXPIRE is not written yet counts as expired there already. ' +
    'RESERVE and RELEASE (holds) do not change the total and are not movements.',
  fields: (t) => ({
    periodStart: t.field({ type: 'DateTime', resolve: (s) => s.periodStart }),
    periodEnd: t.field({ type: 'DateTime', description: 'Exclusive.', resolve: (s) => s.periodEnd }),
    final: t.boolean({
      description:
        'True once the period has ended (by the account\'s clock). A late plan roll may still date entries in an ended period (its grant and rollover trim at the period start); refunds and voids are dated when made.',
      resolve: (s) => s.final,
    }),
    asOf: t.field({ type: 'DateTime', description: 'The instant closingTotal is for: periodEnd when final, else the account\'s now.', resolve: (s) => s.asOf }),
    openingTotal: t.field({
      type: 'Credits',
      description: 'The account total (credit less debt, holds not deducted) at periodStart, expiries dated at periodStart deducted.',
      resolve: (s) => s.openingTotalMicroCredits,
    }),
    closingTotal: t.field({
      type: 'Credits',
      description: 'The account total at asOf; for the current period, Balance.total now.',
      resolve: (s) => s.closingTotalMicroCredits,
    }),
    granted: t.field({ type: 'Credits', description: 'GRANT entries (>= 0): credit granted, less the part that repaid debt (see debtRepaid).', resolve: (s) => s.grantedMicroCredits }),
    // One row per grant source (7, the enum's values), so counted as 1 in the query cost estimate.
    grantedBySource: t.field({
      type: [StatementGrantRef],
      description: 'granted split by grant source: every source, in the enum\'s order, 0 where none.',
      resolve: (s) => s.grantedBySource,
    }),
    consumed: t.field({ type: 'Credits', description: 'CONSUME entries (<= 0): usage charged, dated when recorded.', resolve: (s) => s.consumedMicroCredits }),
    expired: t.field({ type: 'Credits', description: 'EXPIRE entries (<= 0), dated at the batch\'s expiresAt (a rollover trim: at the period start).', resolve: (s) => s.expiredMicroCredits }),
    refunded: t.field({
      type: 'Credits',
      description: 'REFUND entries (>= 0), dated when the refund was made, whichever period the refunded event was charged in.',
      resolve: (s) => s.refundedMicroCredits,
    }),
    voided: t.field({ type: 'Credits', description: 'VOID entries (<= 0): what voidGrant took back.', resolve: (s) => s.voidedMicroCredits }),
    debtRepaid: t.field({ type: 'Credits', description: 'DEBT_REPAY entries (>= 0): the part of grants that repaid debt.', resolve: (s) => s.debtRepaidMicroCredits }),
    adjusted: t.field({ type: 'Credits', description: 'ADJUST entries (signed).', resolve: (s) => s.adjustedMicroCredits }),
    entries: t.int({ description: 'Ledger entries counted in the movements (due expiries not written yet not counted).', resolve: (s) => s.entryCount }),
    // One row per category used in the period (the price book's categories, a handful): counted as 1, as UsageMonth.byCategory.
    usageByCategory: t.field({
      type: [UsageSummaryRowRef],
      description:
        'Usage by category of events that occurred (occurredAt) in [periodStart, periodEnd), biggest first, as usageSummary: refunded events are left out, whenever refunded (a refund also changes the usage of an ended period). ' +
        'Not a movement: consumed counts events when recorded and keeps refunded ones (their credit coming back shows in refunded of the period of the refund).',
      resolve: (s, _args, ctx) => statementUsage(ctx.services.pool, s),
    }),
  }),
});

builder.objectField(AccountRef, 'statement', (t) =>
  t.field({
    type: AccountStatementRef,
    description:
      'The statement of the billing period that contains periodStart (default: the current period). Periods are calendar months from the account\'s billing anchor (counted backwards before it). ' +
      'A periodStart in a period after the current one, or before the account\'s first period, is BAD_USER_INPUT. Reads the account\'s ledger entries of the period (README "Statements").',
    args: { periodStart: t.arg({ type: 'DateTime', required: false }) },
    resolve: (a, args, ctx) => readAccountStatement(ctx.services.pool, a.id, ctx.services.clock(), args.periodStart ?? null),
  }),
);
