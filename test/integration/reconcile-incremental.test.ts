/**
 * The reconcile worker's incremental pass (src/services/reconcile-ledger.ts reconcileAccounts):
 * between full checks it sums only the ledger entries after the account's checkpoint. What it must
 * still report: every inconsistency written after the checkpoint (a balance total, a batch, a
 * ledger entry inserted or deleted, a stored opening, a refund credit); and what only the full
 * check can see (an old entry changed or deleted, an old refund credit changed) is reported by the
 * next full check, whose interval is injected (`now`, `fullEveryMs`), no waiting.
 *
 * Tampering runs with session_replication_role = replica (no triggers, no deferred invariant
 * check): behind the product's back, as a bug or an operator's hand would.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { expireDue } from '../../src/services/expire-due.js';
import { reconcileAccount } from '../../src/services/read-balance.js';
import { RECONCILE_CHUNK_ACCOUNTS, reconcileAccounts, type ReconcileReport } from '../../src/services/reconcile-ledger.js';
import { credits } from '../../src/ledger/credits.js';

let services: TestServices;

beforeAll(() => {
  services = createTestServices(4);
});

afterAll(async () => {
  await services.close();
});

const HOUR = 3_600_000;
let key = 0;
/** A 1-credit charge; returns its usage event id. */
const charge = async (accountId: string) => (await recordUsage(services, { accountId, idempotencyKey: `ri-${++key}`, category: 'unit' })).eventId;

/** The passes' clock: the wall clock, or the latest instant a pass was run at if later (fullPass jumps ahead). */
let passedAt = 0;
const passClock = () => new Date(Math.max(Date.now(), passedAt));

/** One pass over the account at `now` with a full check every hour. */
async function pass(accountId: string, now = passClock()): Promise<ReconcileReport> {
  passedAt = Math.max(passedAt, now.getTime());
  return reconcileAccounts(services.pool, [accountId], { now, fullEveryMs: HOUR });
}

/** An incremental pass (asserted so): its Reconciliation of the account. */
async function incremental(accountId: string, now = passClock()) {
  const report = await pass(accountId, now);
  expect(report.fullyChecked).toBe(0);
  return report.inconsistent.find((r) => r.accountId === accountId) ?? { consistent: true as const };
}

/** A pass at the instant the account's full check falls due (asserted full). */
async function fullPass(accountId: string) {
  const report = await pass(accountId, new Date((await checkpoint(accountId)).full_checked_at.getTime() + HOUR));
  expect(report.fullyChecked).toBe(1);
  return report.inconsistent.find((r) => r.accountId === accountId) ?? { consistent: true as const };
}

async function checkpoint(accountId: string) {
  const { rows } = await services.pool.query(
    `SELECT ledger_seq::text, ledger_sum_micro_credits::text, opening_period_start, opening_ledger_sum_micro_credits::text, full_checked_at
       FROM reconcile_checkpoints WHERE account_id = $1`,
    [accountId],
  );
  return rows[0] as { ledger_seq: string; ledger_sum_micro_credits: string; opening_period_start: Date; opening_ledger_sum_micro_credits: string; full_checked_at: Date };
}

/** Runs `sql` behind the product's back: no triggers, no deferred invariant check. */
async function tamper(sql: string, params: unknown[]): Promise<void> {
  const c = await services.pool.connect();
  try {
    await c.query('BEGIN');
    await c.query('SET LOCAL session_replication_role = replica');
    await c.query(sql, params);
    await c.query('COMMIT');
  } finally {
    c.release();
  }
}

/** An account checked once in full (its checkpoint written), then charged twice: the next pass is incremental. */
async function checkedAccount(): Promise<string> {
  const accountId = await createFundedAccount(services, { paid: 10 });
  await charge(accountId);
  expect(await pass(accountId)).toMatchObject({ checked: 1, fullyChecked: 1, inconsistent: [] });
  await charge(accountId);
  await charge(accountId);
  return accountId;
}

describe('incremental reconcile pass', () => {
  it('checks in full first, then only what follows the checkpoint; the checkpoint moves only after a consistent check', async () => {
    const accountId = await checkedAccount();
    const before = await checkpoint(accountId);
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
    const after = await checkpoint(accountId);
    expect(BigInt(after.ledger_seq)).toBeGreaterThan(BigInt(before.ledger_seq));
    expect(BigInt(after.ledger_sum_micro_credits)).toBe(credits(7));
    expect(after.full_checked_at).toEqual(before.full_checked_at);
    await charge(accountId);
    await tamper('UPDATE balances SET total_micro_credits = total_micro_credits + 1 WHERE account_id = $1', [accountId]);
    expect(await incremental(accountId)).toMatchObject({ consistent: false, totalMicroCredits: credits(6) + 1n, ledgerSumMicroCredits: credits(6) });
    expect(await checkpoint(accountId)).toEqual(after); // not moved past the inconsistency
    expect(await incremental(accountId)).toMatchObject({ consistent: false }); // reported again
    await tamper('UPDATE balances SET total_micro_credits = total_micro_credits - 1 WHERE account_id = $1', [accountId]);
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
    await expectLedgerInvariant(services.pool, accountId);
  });

  it('reports a ledger entry inserted behind the code\'s back after the checkpoint', async () => {
    const accountId = await checkedAccount();
    await tamper(
      `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, note)
       VALUES (gen_random_uuid(), $1, 'ADJUST', 1, 0, 'tampered')`,
      [accountId],
    );
    expect(await incremental(accountId)).toMatchObject({ consistent: false, totalMicroCredits: credits(7), ledgerSumMicroCredits: credits(7) + 1n });
  });

  it('reports a ledger entry written after the checkpoint and deleted', async () => {
    const accountId = await checkedAccount();
    await tamper(`DELETE FROM ledger_entries WHERE seq = (SELECT max(seq) FROM ledger_entries WHERE account_id = $1)`, [accountId]);
    expect(await incremental(accountId)).toMatchObject({ consistent: false, totalMicroCredits: credits(7), ledgerSumMicroCredits: credits(8) });
  });

  it('reports a batch whose remaining credit changed', async () => {
    const accountId = await checkedAccount();
    await tamper('UPDATE credit_batches SET remaining_micro_credits = remaining_micro_credits - 1 WHERE account_id = $1', [accountId]);
    expect(await incremental(accountId)).toMatchObject({ consistent: false, batchRemainingMicroCredits: credits(7) - 1n, ledgerSumMicroCredits: credits(7) });
  });

  it('reports a wrong stored opening, with the period start unchanged', async () => {
    const accountId = await checkedAccount();
    await tamper('UPDATE balances SET opening_total_micro_credits = opening_total_micro_credits + 1 WHERE account_id = $1', [accountId]);
    const rec = await incremental(accountId);
    expect(rec).toMatchObject({ consistent: false });
    const r = rec as { openingMicroCredits: bigint; openingLedgerSumMicroCredits: bigint };
    expect(r.openingMicroCredits - r.openingLedgerSumMicroCredits).toBe(1n);
  });

  it('reports a refund credit that differs from its REFUND entries, for a refund after the checkpoint', async () => {
    const accountId = await createFundedAccount(services, { paid: 10 });
    const eventId = await charge(accountId);
    expect(await pass(accountId)).toMatchObject({ fullyChecked: 1, inconsistent: [] });
    await refundUsage(services, eventId, 'bad answer');
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
    const other = await charge(accountId);
    await refundUsage(services, other, 'bad answer');
    await tamper('UPDATE refund_credits SET amount_micro_credits = amount_micro_credits - 1 WHERE usage_event_id = $1', [other]);
    expect(await incremental(accountId)).toMatchObject({ consistent: false, refundCreditMismatches: 1 });
    await tamper('DELETE FROM refund_credits WHERE usage_event_id = $1', [other]);
    expect(await incremental(accountId)).toMatchObject({ consistent: false, refundCreditMismatches: 1 });
  });

  it('follows a late expiry dated before the period start and a new period, and still reports a wrong opening after them', async () => {
    const accountId = await createFundedAccount(services, { free: 5, paid: 10, freeExpiresAt: new Date('2026-02-05T00:00:00Z'), testClockStart: new Date('2026-01-10T00:00:00Z') });
    const setClock = (at: string) => services.pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1', [accountId, new Date(at)]);
    await setClock('2026-01-11T00:00:00Z');
    await charge(accountId);
    expect(await pass(accountId)).toMatchObject({ fullyChecked: 1, inconsistent: [] });
    await setClock('2026-02-15T00:00:00Z');
    await charge(accountId); // a new period start (Feb 10): its opening summed in full
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
    expect(await checkpoint(accountId)).toMatchObject({ opening_period_start: new Date('2026-02-10T00:00:00Z'), opening_ledger_sum_micro_credits: String(credits(14)) });
    await expireDue(services, accountId); // EXPIRE -4 dated Feb 5: before the period start
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
    expect(await checkpoint(accountId)).toMatchObject({ opening_ledger_sum_micro_credits: String(credits(10)) });
    await tamper('UPDATE balances SET opening_total_micro_credits = opening_total_micro_credits - 1 WHERE account_id = $1', [accountId]);
    expect(await incremental(accountId)).toMatchObject({ consistent: false, openingMicroCredits: credits(10) - 1n, openingLedgerSumMicroCredits: credits(10) });
    // An entry slipped in before the period start, behind the code's back: the opening the ledger defines moves.
    await tamper('UPDATE balances SET opening_total_micro_credits = opening_total_micro_credits + 1 WHERE account_id = $1', [accountId]);
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
    await tamper(
      `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, note, created_at)
       VALUES (gen_random_uuid(), $1, 'ADJUST', 0, 0, 'tampered', '2026-02-01T00:00:00Z'), (gen_random_uuid(), $1, 'ADJUST', 3, 0, 'tampered', '2026-02-01T00:00:00Z'),
              (gen_random_uuid(), $1, 'ADJUST', -3, 0, 'tampered', '2026-02-12T00:00:00Z')`,
      [accountId],
    );
    expect(await incremental(accountId)).toMatchObject({ consistent: false, openingMicroCredits: credits(10), openingLedgerSumMicroCredits: credits(10) + 3n });
  });
});

describe('tampering with what the checkpoint already covers', () => {
  it('an old ledger entry changed or deleted is not seen by the incremental pass, and is reported by the next full check', async () => {
    const accountId = await checkedAccount();
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
    const oldest = `(SELECT min(seq) FROM ledger_entries WHERE account_id = $1)`;
    await tamper(`UPDATE ledger_entries SET amount_micro_credits = amount_micro_credits + 1 WHERE seq = ${oldest}`, [accountId]);
    await charge(accountId);
    expect(await incremental(accountId)).toMatchObject({ consistent: true }); // the blind spot, by design
    expect(await fullPass(accountId)).toMatchObject({ consistent: false, totalMicroCredits: credits(6), ledgerSumMicroCredits: credits(6) + 1n });
    expect(await fullPass(accountId)).toMatchObject({ consistent: false }); // and on every pass after (no new checkpoint)
    expect((await reconcileAccount(services.pool, accountId)).consistent).toBe(false); // Account.reconciliation: always full
    await tamper(`UPDATE ledger_entries SET amount_micro_credits = amount_micro_credits - 1 WHERE seq = ${oldest}`, [accountId]);
    expect(await fullPass(accountId)).toMatchObject({ consistent: true });
    await tamper(`DELETE FROM ledger_entries WHERE seq = (SELECT min(seq) FROM ledger_entries WHERE account_id = $1 AND type = 'CONSUME')`, [accountId]);
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
    expect(await fullPass(accountId)).toMatchObject({ consistent: false, ledgerSumMicroCredits: credits(7) });
  });

  it('an old refund credit changed is reported by the next full check', async () => {
    // On a test clock, so that the refund is dated before the last change the checkpoint saw.
    const accountId = await createFundedAccount(services, { paid: 10, testClockStart: new Date('2026-03-01T00:00:00Z') });
    const setClock = (at: string) => services.pool.query('UPDATE accounts SET test_clock_at = $2 WHERE id = $1', [accountId, new Date(at)]);
    const eventId = await charge(accountId);
    await setClock('2026-03-01T01:00:00Z');
    await refundUsage(services, eventId, 'bad answer');
    await setClock('2026-03-01T02:00:00Z');
    await charge(accountId);
    expect(await pass(accountId)).toMatchObject({ fullyChecked: 1, inconsistent: [] });
    await charge(accountId);
    await tamper('UPDATE refund_credits SET amount_micro_credits = amount_micro_credits + 1 WHERE usage_event_id = $1', [eventId]);
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
    expect(await fullPass(accountId)).toMatchObject({ consistent: false, refundCreditMismatches: 1 });
  });

  it('a missing checkpoint, a full check dated ahead of the pass, or fullEveryMs 0 make the pass full', async () => {
    const accountId = await checkedAccount();
    const cp = await checkpoint(accountId);
    expect((await pass(accountId, new Date(cp.full_checked_at.getTime() - 1))).fullyChecked).toBe(1);
    expect((await reconcileAccounts(services.pool, [accountId], { fullEveryMs: 0 })).fullyChecked).toBe(1);
    await services.pool.query('DELETE FROM reconcile_checkpoints WHERE account_id = $1', [accountId]);
    expect(await pass(accountId)).toMatchObject({ fullyChecked: 1, inconsistent: [] });
    expect(await incremental(accountId)).toMatchObject({ consistent: true });
  });
});

describe('a pass over many accounts (one statement per chunk of RECONCILE_CHUNK_ACCOUNTS)', () => {
  it('checks each account against its own checkpoint, reports only the inconsistent ones in order, and moves only the consistent ones\' checkpoints', async () => {
    const n = RECONCILE_CHUNK_ACCOUNTS + 3; // two chunks
    // Each account with its own credit (10 + i), so that one account's checkpoint or figures used for another shows.
    const ids: string[] = [];
    for (let i = 0; i < n; i++) ids.push(await createFundedAccount(services, { paid: 10 + i }));
    const now = passClock();
    passedAt = now.getTime();
    expect(await reconcileAccounts(services.pool, ids, { now, fullEveryMs: HOUR })).toMatchObject({ checked: n, fullyChecked: n, inconsistent: [] });
    const before = new Map<string, Awaited<ReturnType<typeof checkpoint>>>();
    for (const id of ids) before.set(id, await checkpoint(id));
    expect(ids.map((id) => before.get(id)!.ledger_sum_micro_credits), 'the full checks\' checkpoints').toEqual(ids.map((_, i) => String(credits(10 + i))));
    for (const id of ids) await charge(id);
    const fresh = await createFundedAccount(services, { paid: 3 }); // no checkpoint yet: checked in full in the same pass
    const [inFirst, inSecond] = [ids[1]!, ids[n - 1]!];
    await tamper('UPDATE balances SET total_micro_credits = total_micro_credits + 1 WHERE account_id = $1', [inFirst]);
    await tamper('UPDATE credit_batches SET remaining_micro_credits = remaining_micro_credits - 1 WHERE account_id = $1', [inSecond]);
    const report = await reconcileAccounts(services.pool, [...ids, fresh, ids[0]!], { now: passClock(), fullEveryMs: HOUR });
    expect(report).toMatchObject({ checked: n + 1, fullyChecked: 1 });
    expect(report.inconsistent).toMatchObject([
      { accountId: inFirst, consistent: false, totalMicroCredits: credits(10) + 1n, ledgerSumMicroCredits: credits(10), batchRemainingMicroCredits: credits(10) },
      { accountId: inSecond, consistent: false, totalMicroCredits: credits(10 + n - 2), ledgerSumMicroCredits: credits(10 + n - 2), batchRemainingMicroCredits: credits(10 + n - 2) - 1n },
    ]);
    for (const [i, id] of ids.entries()) {
      const cp = await checkpoint(id);
      if (id === inFirst || id === inSecond) {
        expect(cp, `checkpoint of inconsistent account ${i}`).toEqual(before.get(id));
        continue;
      }
      const { rows } = await services.pool.query('SELECT max(seq)::text AS seq FROM ledger_entries WHERE account_id = $1', [id]);
      expect({ seq: cp.ledger_seq, sum: cp.ledger_sum_micro_credits, full: cp.full_checked_at }, `checkpoint of account ${i}`).toEqual({
        seq: rows[0].seq,
        sum: String(credits(10 + i - 1)),
        full: before.get(id)!.full_checked_at,
      });
    }
    expect(await checkpoint(fresh)).toMatchObject({ ledger_sum_micro_credits: String(credits(3)) });
    // The same two, and only they, in full (two chunks of full checks).
    const full = await reconcileAccounts(services.pool, [...ids].reverse(), { now: passClock(), fullEveryMs: 0 });
    expect({ fullyChecked: full.fullyChecked, inconsistent: full.inconsistent.map((r) => r.accountId) }).toEqual({ fullyChecked: n, inconsistent: [inSecond, inFirst] });
    expect(full.inconsistent[0]).toMatchObject({ batchRemainingMicroCredits: credits(10 + n - 2) - 1n, ledgerSumMicroCredits: credits(10 + n - 2) });
  });
});
