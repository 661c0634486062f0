/**
 * Test data factories: accounts with known credit, built through the real services.
 */
import { randomUUID } from 'node:crypto';
import { createAccount } from '../../src/services/create-account.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits } from '../../src/ledger/credits.js';
import type pg from 'pg';
import type { ServiceContext } from '../../src/services/context.js';
import { setSpendingBudget } from '../../src/services/spending-budgets.js';

/** Creates an ORGANIZATION account without welcome bonus (on a test clock if given), then grants the given whole credits. */
export async function createFundedAccount(
  services: ServiceContext,
  opts: {
    free?: number;
    paid?: number;
    freeExpiresAt?: Date | null;
    kind?: 'ORGANIZATION' | 'USER';
    externalId?: string;
    /** A test-mode account whose clock starts here (every rule of the account reads it). */
    testClockStart?: Date;
  } = {},
): Promise<string> {
  const { accountId } = await createAccount(services, {
    externalId: opts.externalId ?? `test-${randomUUID()}`,
    name: 'Test account',
    kind: opts.kind ?? 'ORGANIZATION',
    welcomeBonus: false,
    testMode: opts.testClockStart !== undefined,
    testClockStart: opts.testClockStart ?? null,
  });
  const grants = [
    { whole: opts.free, type: 'FREE' as const, source: 'PROMO_CODE' as const, expiresAt: opts.freeExpiresAt ?? null },
    { whole: opts.paid, type: 'PAID' as const, source: 'PURCHASE' as const, expiresAt: null },
  ];
  for (const g of grants) {
    if (!g.whole) continue;
    await grantCredits(services, {
      accountId,
      amountMicroCredits: credits(g.whole),
      type: g.type,
      source: g.source,
      expiresAt: g.expiresAt,
      reference: null,
      idempotencyKey: `factory-${g.type.toLowerCase()}`,
    });
  }
  return accountId;
}

/**
 * Gives `accountId` what makes every balance change run the optional checks of a metered
 * organization: the payment method `pm_1` (provider `test`), auto top-up on with
 * `topUpThresholdMicroCredits` (above its credit, every change runs the top-up check) buying
 * `packId` up to 100 times a period, and a spending budget of `agentBudgetMicroCredits` for the
 * agent `agent-1`. Written on `db` (SQL) and through `services` (the budget).
 * @throws the driver's error, or setSpendingBudget's LedgerError.
 */
export async function addTopUpAndAgentBudget(
  services: ServiceContext,
  db: Pick<pg.Pool, 'query'>,
  opts: { accountId: string; packId: string; topUpThresholdMicroCredits: bigint; agentBudgetMicroCredits: bigint },
): Promise<void> {
  await db.query(`INSERT INTO payment_methods (account_id, provider, reference) VALUES ($1, 'test', 'pm_1')`, [opts.accountId]);
  await db.query(`INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period) VALUES ($1, true, $2, $3, 100)`, [
    opts.accountId,
    opts.topUpThresholdMicroCredits.toString(),
    opts.packId,
  ]);
  await setSpendingBudget(services, { accountId: opts.accountId, subjectKind: 'AGENT', subjectId: 'agent-1', limitMicroCredits: opts.agentBudgetMicroCredits });
}

/**
 * A maker of `units`-category charges (TEST_PRICE_BOOK: 1 credit per unit) of `accountId` by the
 * agent `agent-1`, each with a new idempotency key (`<prefix>-<n>`, n from 0); `extra` is merged
 * into the input last (a reservationId, another accountId).
 */
export function unitCharges(accountId: string, prefix = 'charge'): (units: number, extra?: Record<string, unknown>) => {
  accountId: string;
  idempotencyKey: string;
  category: string;
  quantities: { units: string };
  agentId: string;
} {
  let n = 0;
  return (units, extra = {}) => ({ accountId, idempotencyKey: `${prefix}-${n++}`, category: 'units', quantities: { units: String(units) }, agentId: 'agent-1', ...extra });
}
