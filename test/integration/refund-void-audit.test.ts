/**
 * Audit of refundUsage and voidGrant (README "Refunds and voids"): the findings of the audit, each
 * with a test that failed before its fix, on the real PostgreSQL. Areas the audit found right are
 * covered elsewhere (ledger-rules, money-once, rollover-cap, holds-audit, credit-alerts, budgets,
 * usage-rollups).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { readBalance } from '../../src/services/read-balance.js';
import { MAX_ABS_MICRO_CREDITS, credits } from '../../src/ledger/credits.js';
import { LedgerError } from '../../src/ledger/errors.js';

let s: TestServices;
beforeAll(() => {
  s = createTestServices(5);
});
afterAll(async () => {
  s.setNow(null);
  await s.close();
});

const T0 = new Date(Date.UTC(2026, 8, 1, 0, 0, 0));
const DAY_MS = 86_400_000;
const at = (ms: number) => new Date(T0.getTime() + ms);

/** The account's rows that a refund writes or changes, to compare before and after a refusal. */
async function refundFootprint(accountId: string, eventId: string) {
  const { rows } = await s.pool.query(
    `SELECT (SELECT version::text FROM balances WHERE account_id = $1) AS version,
            (SELECT COUNT(*)::int FROM ledger_entries WHERE account_id = $1) AS entries,
            (SELECT string_agg(remaining_micro_credits::text || status, ',' ORDER BY added_at, id) FROM credit_batches WHERE account_id = $1) AS batches,
            (SELECT refunded_at IS NOT NULL FROM usage_events WHERE id = $2) AS refunded,
            (SELECT COUNT(*)::int FROM audit_events WHERE account_id = $1 AND action = 'usage.refunded') AS audited`,
    [accountId, eventId],
  );
  return rows[0];
}

describe('refundUsage and the 64-bit balance limit', () => {
  it('a refund that would take the total above the largest amount kept is BAD_USER_INPUT (BALANCE_LIMIT) and changes nothing', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, {});
    await grantCredits(s, { accountId, amountMicroCredits: MAX_ABS_MICRO_CREDITS, type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'max' });
    const ev = await recordUsage(s, { accountId, idempotencyKey: 'u', category: 'units', quantities: { units: '1' } });
    // The next billing period: a grant of 1 credit fits again (total and the period's grants at most the limit).
    s.setNow(at(40 * DAY_MS));
    await grantCredits(s, { accountId, amountMicroCredits: credits(1), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'one' });
    expect((await readBalance(s.pool, accountId, at(40 * DAY_MS))).totalMicroCredits).toBe(MAX_ABS_MICRO_CREDITS);
    const before = await refundFootprint(accountId, ev.eventId);
    const refused = await refundUsage(s, ev.eventId, 'bad answer').then(
      () => null,
      (e: unknown) => e,
    );
    expect(refused).toBeInstanceOf(LedgerError);
    expect(refused).toMatchObject({ code: 'BAD_USER_INPUT', details: { field: 'usageEventId', reason: 'BALANCE_LIMIT' } });
    expect(await refundFootprint(accountId, ev.eventId)).toEqual(before);
    await expectLedgerInvariant(s.pool, accountId, at(40 * DAY_MS));
  });
});
