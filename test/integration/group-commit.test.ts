/**
 * Group commit (CHARGE_PATH=group) on the real PostgreSQL: the same guarantees as one
 * transaction per charge (no overspend, one event per idempotency key, one balance version and
 * one outbox snapshot per charge, the ledger invariant), with charges really grouped, and an
 * unexpected failure of one charge isolated from the rest of its group.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { applyCharge, recordUsage } from '../../src/services/record-usage.js';
import { GroupCommitter, type ApplyCharge } from '../../src/services/group-commit.js';
import { LedgerError } from '../../src/ledger/errors.js';

let services: TestServices;
let committer: GroupCommitter;

beforeAll(() => {
  services = createTestServices(20);
  committer = new GroupCommitter(services.pool, services.clock, applyCharge);
  services.groupCommit = committer;
});

afterAll(async () => {
  await services.close();
});

const codeOf = (r: PromiseSettledResult<unknown>) =>
  r.status === 'fulfilled' ? 'OK' : r.reason instanceof LedgerError ? r.reason.code : `UNEXPECTED: ${String(r.reason)}`;

describe('group commit', () => {
  it('200 concurrent 1-credit charges on 50 credits: exactly 50 succeed, in groups, one version per charge', async () => {
    const accountId = await createFundedAccount(services, { free: 20, paid: 30 });
    const { rows: before } = await services.pool.query('SELECT version FROM balances WHERE account_id = $1', [accountId]);
    const groupsBefore = committer.stats();
    const results = await Promise.allSettled(Array.from({ length: 200 }, (_, i) => recordUsage(services, { accountId, idempotencyKey: `g-${i}`, category: 'unit' })));
    const codes = results.map(codeOf);
    expect(codes.filter((c) => c === 'OK')).toHaveLength(50);
    expect(codes.filter((c) => c === 'INSUFFICIENT_CREDITS')).toHaveLength(150);
    const after = committer.stats();
    expect(after.charges - groupsBefore.charges).toBe(200);
    expect(after.groups - groupsBefore.groups).toBeLessThan(200); // they were grouped
    const { rows } = await services.pool.query('SELECT version FROM balances WHERE account_id = $1', [accountId]);
    expect(BigInt(rows[0].version) - BigInt(before[0].version)).toBe(50n);
    const { rows: snaps } = await services.pool.query(
      `SELECT (payload->>'version')::bigint AS v FROM outbox_events WHERE account_id = $1 AND topic = 'balance' ORDER BY id`,
      [accountId],
    );
    const versions = snaps.map((r) => BigInt(r.v));
    for (let i = 1; i < versions.length; i++) expect(versions[i]! - versions[i - 1]!).toBe(1n);
    const balance = await expectLedgerInvariant(services.pool, accountId);
    expect(balance.availableMicroCredits).toBe(0n);
  });

  it('one idempotency key sent 50 times at once records one event', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    const results = await Promise.all(Array.from({ length: 50 }, () => recordUsage(services, { accountId, idempotencyKey: 'same', category: 'unit' })));
    expect(new Set(results.map((r) => r.eventId)).size).toBe(1);
    expect(results.filter((r) => !r.replayed)).toHaveLength(1);
    const { rows } = await services.pool.query('SELECT count(*)::int AS n FROM usage_events WHERE account_id = $1', [accountId]);
    expect(rows[0].n).toBe(1);
    await expectLedgerInvariant(services.pool, accountId);
  });

  it('an unexpected failure of one charge fails only that charge', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    const faulty: ApplyCharge = (atx, cmd, price) => {
      if (cmd.idempotencyKey === 'bad') throw new Error('simulated database failure');
      return applyCharge(atx, cmd, price);
    };
    const local = createTestServices(5);
    local.groupCommit = new GroupCommitter(local.pool, local.clock, faulty);
    try {
      const keys = Array.from({ length: 30 }, (_, i) => (i === 15 ? 'bad' : `k-${i}`));
      const results = await Promise.allSettled(keys.map((k) => recordUsage(local, { accountId, idempotencyKey: k, category: 'unit' })));
      const codes = results.map(codeOf);
      expect(codes.filter((c) => c === 'OK')).toHaveLength(29);
      expect(codes[15]).toBe('UNEXPECTED: Error: simulated database failure');
      const balance = await expectLedgerInvariant(services.pool, accountId);
      expect(balance.availableMicroCredits).toBe(71_000_000n);
    } finally {
      await local.close();
    }
  });
});
