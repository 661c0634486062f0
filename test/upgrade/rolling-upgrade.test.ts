/**
 * Rolling upgrades: while a new version boots and migrates, servers of the previous release keep
 * running on the migrated database until they are replaced (README "Job names a version does not
 * know (rolling upgrades)"; migration balances_changed keeps balance_changed for them). What such
 * a server writes after a data-changing migration has run is not backfilled by it, so the
 * database has to derive what the older statement leaves out. Each case runs the older release's
 * statement as it was shipped (quoted from git) on the migrated test database.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { createPlan, subscribeToPlan, type PlanRecord } from '../../src/services/plans.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { advanceTestClock } from '../../src/services/test-clock.js';
import { credits } from '../../src/ledger/credits.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { AccountTx } from '../../src/services/account-tx.js';
import { applyExpiries } from '../../src/services/expire-due.js';
import { toBigInt, withTransaction } from '../../src/db/pg.js';

let services: TestServices;
let capped: PlanRecord;
beforeAll(async () => {
  services = createTestServices(3);
  capped = await createPlan(services, { name: `rolling cap ${randomUUID()}`, monthlyMicroCredits: credits(100), rollover: 'ROLLOVER', rolloverCapMicroCredits: credits(50), priceUsd: '1' });
});
afterAll(async () => {
  await services.close();
});

const spend = async (accountId: string, units: number) =>
  (await recordUsage(services, { accountId, idempotencyKey: randomUUID(), category: 'units', quantities: { units: String(units) } })).eventId;

describe('a capped ROLLOVER roll run by a server of the release before plan_capped_roll', () => {
  it('is remembered with its cap, so a refund of usage recorded before it still gives back only the room under the cap', async () => {
    const start = new Date('2026-09-01T00:00:00.000Z');
    const rollAt = new Date('2026-10-01T00:00:00.000Z');
    const accountId = await createFundedAccount(services, { testClockStart: start });
    await subscribeToPlan(services, accountId, capped.id);
    const event = await spend(accountId, 30); // 70 left of the period's 100
    // The roll's credit movements (trim to 50, grant 100) are the same in both releases; only the
    // subscription row's update differs. The older release's rollDuePeriods ended with (commit
    // 592a2f8^, src/services/plans.ts): UPDATE plan_subscriptions SET granted_period_start = $2
    // WHERE account_id = $1. So: the roll, then the row as that statement leaves it.
    await advanceTestClock(services, accountId, rollAt);
    await services.pool.query(
      `UPDATE plan_subscriptions SET granted_period_start = $2, capped_roll_at = NULL, capped_roll_cap_micro_credits = NULL WHERE account_id = $1`,
      [accountId, start],
    );
    await services.pool.query('UPDATE plan_subscriptions SET granted_period_start = $2 WHERE account_id = $1', [accountId, rollAt]);

    const { rows } = await services.pool.query(
      `SELECT capped_roll_at, capped_roll_cap_micro_credits::text AS cap FROM plan_subscriptions WHERE account_id = $1`,
      [accountId],
    );
    expect(rows[0]).toEqual({ capped_roll_at: rollAt, cap: credits(50).toString() });
    await refundUsage(services, event, 'after a roll by the older server'); // the roll carried the cap: no room
    expect((await expectLedgerInvariant(services.pool, accountId, rollAt)).availableMicroCredits).toBe(credits(150));
  });
});

/**
 * voidGrant of the release before period_credits_voids (commit aeb99a5^, src/services/void-grant.ts),
 * statement for statement: it does not write voided_micro_credits.
 */
async function olderVoidGrant(grantId: string, reason: string): Promise<void> {
  await withTransaction(services.pool, async (tx) => {
    const atx = await AccountTx.lockOwner(tx, 'credit_grants', grantId, 'grant', services.clock());
    const grant = await tx.query('SELECT voided_at FROM credit_grants WHERE id = $1', [grantId]);
    if (grant.rows[0].voided_at) return;
    await applyExpiries(atx);
    const { rows } = await tx.query(`SELECT b.id AS batch_id, b.status, b.remaining_micro_credits FROM credit_batches b WHERE b.grant_id = $1`, [grantId]);
    const row = rows[0];
    const remaining = row.status === 'ACTIVE' ? toBigInt(row.remaining_micro_credits) : 0n;
    await tx.query('UPDATE credit_grants SET voided_at = $2, void_reason = $3 WHERE id = $1', [grantId, atx.now, reason]);
    await tx.query(
      `UPDATE credit_batches SET remaining_micro_credits = 0, status = 'VOIDED', updated_at = $2 WHERE id = $1 AND status IN ('ACTIVE', 'EXHAUSTED')`,
      [row.batch_id, atx.now],
    );
    atx.addEntry({ type: 'VOID', amountMicroCredits: -remaining, batchId: row.batch_id as string, note: reason });
    await atx.finish();
  });
}

describe('a grant voided by a server of the release before period_credits_voids', () => {
  it('is taken out of periodCredits as a void of the current code is: no alert with 99 % of the credit left', async () => {
    const accountId = await createFundedAccount(services, { paid: 100, testClockStart: new Date('2026-03-10T00:00:00Z') });
    await services.pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1', [accountId, new Date('2026-03-11T00:00:00Z')]);
    const mistake = await grantCredits(services, { accountId, amountMicroCredits: credits(1000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'mistake' });
    await olderVoidGrant(mistake.grantId, 'granted by mistake');
    await spend(accountId, 1);
    const { rows } = await services.pool.query('SELECT voided_micro_credits::text AS v FROM credit_grants WHERE id = $1', [mistake.grantId]);
    expect(rows[0].v).toBe(credits(1000).toString());
    const b = await expectLedgerInvariant(services.pool, accountId, new Date());
    expect([b.availableMicroCredits, b.periodMicroCredits, b.percentRemaining]).toEqual([credits(99), credits(100), 99]);
    const alerts = await services.pool.query('SELECT threshold FROM credit_alerts WHERE account_id = $1', [accountId]);
    expect(alerts.rows).toEqual([]);
  });
});
