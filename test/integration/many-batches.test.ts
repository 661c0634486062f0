/**
 * Accounts with more live batches than a charge's state read loads (AccountTx
 * SPENDABLE_BATCHES_READ, the first ones in drawdown order): the drawdown order and the amounts
 * stay exactly what drawing from all of them gives, alone, in a group decided in memory and from
 * a carried state, across the read's limit.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { applyCharge, chargeAccounts, pricerFor, recordUsage } from '../../src/services/record-usage.js';
import { validateUsageInput } from '../../src/services/usage-command.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { SPENDABLE_BATCHES_READ } from '../../src/services/account-tx.js';
import { compareDrawdownOrder, type CreditType } from '../../src/ledger/drawdown.js';
import { credits } from '../../src/ledger/credits.js';

let s: TestServices;
beforeAll(() => {
  s = createTestServices(5);
});
afterAll(async () => {
  s.setNow(null);
  await s.close();
});

const T0 = new Date(Date.UTC(2026, 7, 1, 0, 0, 0));
const BATCHES = 300;

/**
 * An account with BATCHES batches granted in an order unlike the drawdown order: FREE and PAID,
 * some never expiring, expiries and grant instants shuffled, 1 to 3 credits each.
 * @returns the account and its batches in drawdown order (id, micro-credits).
 */
async function manyBatches(): Promise<{ accountId: string; order: { id: string; amount: bigint }[] }> {
  s.setNow(T0);
  const accountId = await createFundedAccount(s, {});
  for (let i = 0; i < BATCHES; i++) {
    const k = (i * 7919) % BATCHES; // a permutation of 0..BATCHES-1
    s.setNow(new Date(T0.getTime() + i * 1000));
    const type: CreditType = k % 5 === 0 ? 'FREE' : 'PAID';
    // Most never expire: more of them than a read loads, so a read in the wrong order would miss the expiring ones.
    const expiresAt = k % 4 === 0 ? new Date(T0.getTime() + 86_400_000 + (k % 17) * 3_600_000) : null;
    await grantCredits(s, { accountId, amountMicroCredits: credits((k % 3) + 1), type, source: type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE', expiresAt, reference: null, idempotencyKey: `b-${i}` });
  }
  s.setNow(new Date(T0.getTime() + BATCHES * 1000));
  const { rows } = await s.pool.query(
    `SELECT id, type, remaining_micro_credits::text AS amount, expires_at, added_at FROM credit_batches WHERE account_id = $1 AND status = 'ACTIVE'`,
    [accountId],
  );
  expect(rows).toHaveLength(BATCHES);
  const batches = rows.map((r) => ({ id: r.id as string, type: r.type as CreditType, remainingMicroCredits: BigInt(r.amount as string), expiresAt: r.expires_at as Date | null, addedAt: r.added_at as Date }));
  batches.sort(compareDrawdownOrder);
  return { accountId, order: batches.map((b) => ({ id: b.id, amount: b.remainingMicroCredits })) };
}

/** Every drawdown of the account's events, in event then part order: batch id and micro-credits. */
async function allDrawdowns(accountId: string): Promise<{ id: string; amount: bigint }[]> {
  const { rows } = await s.pool.query(
    `SELECT d.batch_id, d.amount_micro_credits::text AS amount FROM drawdowns d JOIN usage_events e ON e.id = d.usage_event_id
      WHERE e.account_id = $1 ORDER BY e.seq, d.position`,
    [accountId],
  );
  return rows.map((r) => ({ id: r.batch_id as string, amount: BigInt(r.amount as string) }));
}

/** `parts` with consecutive parts of one batch summed (one event's last part and the next one's first may share a batch). */
function merged(parts: readonly { id: string; amount: bigint }[]): { id: string; amount: bigint }[] {
  const out: { id: string; amount: bigint }[] = [];
  for (const p of parts) {
    const last = out[out.length - 1];
    if (last && last.id === p.id) last.amount += p.amount;
    else out.push({ ...p });
  }
  return out;
}

/** What drawing `total` micro-credits from `order` (batches in drawdown order) takes: each batch emptied in turn, the last one partly. */
function expectedPrefix(order: readonly { id: string; amount: bigint }[], total: bigint): { id: string; amount: bigint }[] {
  const out: { id: string; amount: bigint }[] = [];
  let left = total;
  for (const b of order) {
    if (left === 0n) break;
    const take = b.amount < left ? b.amount : left;
    out.push({ id: b.id, amount: take });
    left -= take;
  }
  return out;
}

describe(`an account with ${BATCHES} live batches (more than the ${SPENDABLE_BATCHES_READ} a state read loads)`, () => {
  it('the limit is below the batches of this test', () => {
    expect(SPENDABLE_BATCHES_READ).toBeLessThan(BATCHES / 2);
  });

  it('one charge alone across the limit draws exactly the batches in drawdown order', async () => {
    const { accountId, order } = await manyBatches();
    const firstRead = order.slice(0, SPENDABLE_BATCHES_READ).reduce((sum, b) => sum + b.amount, 0n);
    const cost = firstRead + credits(25); // more than the first batches hold
    const r = await recordUsage(s, { accountId, idempotencyKey: 'big', category: 'units', quantities: { units: String(cost / 1_000_000n) } });
    expect(r.replayed).toBe(false);
    expect(await allDrawdowns(accountId)).toEqual(expectedPrefix(order, cost));
    // And small ones after it, each alone, continue where it stopped.
    for (let i = 0; i < 20; i++) await recordUsage(s, { accountId, idempotencyKey: `small-${i}`, category: 'units', quantities: { units: '2' } });
    expect(merged(await allDrawdowns(accountId))).toEqual(merged(expectedPrefix(order, cost + credits(40))));
    await expectLedgerInvariant(s.pool, accountId, s.clock());
  });

  it('a hold on all the credit but the first batches is refused or granted as with all batches loaded', async () => {
    const { accountId, order } = await manyBatches();
    const all = order.reduce((sum, b) => sum + b.amount, 0n);
    await expect(reserveCredits(s, { accountId, amountMicroCredits: all + 1n, ttlSeconds: 600, idempotencyKey: 'too-much' })).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    const { reservationId } = await reserveCredits(s, { accountId, amountMicroCredits: all, ttlSeconds: 600, idempotencyKey: 'all' });
    expect(reservationId).toBeTruthy();
  });

  for (const maxChargesPerAccount of [7, 200]) {
    it(`charges through group commit (groups of up to ${maxChargesPerAccount} decided in memory, carried state) draw the same batches in the same order`, async () => {
      const { accountId, order } = await manyBatches();
      const committer = new GroupCommitter(s.pool, s.clock, chargeAccounts, applyCharge, { maxTransactions: 1, maxChargesPerAccount });
      const local = { ...s, groupCommit: committer };
      const all = order.reduce((sum, b) => sum + b.amount, 0n);
      const each = credits(3);
      const n = Number(all / each) + 3; // the last 3 are refused: the credit has run out
      // The only transaction slot is kept busy until every charge waits: the first group takes
      // maxChargesPerAccount of them (200 x 3 credits: more than the first batches hold).
      let open!: () => void;
      const gate = new Promise<void>((resolve) => (open = resolve));
      const blocker = committer.withAccount(accountId, () => gate);
      const charged = Promise.allSettled(
        Array.from({ length: n }, (_, i) => recordUsage(local, { accountId, idempotencyKey: `g-${i}`, category: 'units', quantities: { units: '3' } })),
      );
      while (committer.stats().waiting < n) await new Promise((resolve) => setImmediate(resolve));
      open();
      await blocker;
      const results = await charged;
      const ok = results.filter((r) => r.status === 'fulfilled').length;
      expect(ok).toBe(Number(all / each));
      expect(results.filter((r) => r.status === 'rejected').map((r) => (r as PromiseRejectedResult).reason.code)).toEqual(
        Array.from({ length: n - ok }, () => 'INSUFFICIENT_CREDITS'),
      );
      const stats = committer.stats();
      expect(stats.largestGroup).toBeGreaterThan(1);
      expect(stats.carriedState).toBeGreaterThan(0);
      // Decided in the groups: none retried alone, no carried state refused.
      expect(stats.retriedAlone).toBe(0);
      expect(stats.carriedStateMisses).toBe(0);
      expect(merged(await allDrawdowns(accountId))).toEqual(merged(expectedPrefix(order, each * BigInt(ok))));
      await expectLedgerInvariant(s.pool, accountId, s.clock());
    });
  }
  it('a carried state of some of the batches is not used once one of them may have expired: the state is read afresh', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, {});
    for (let i = 0; i < 150; i++) {
      s.setNow(new Date(T0.getTime() + i * 1000));
      await grantCredits(s, { accountId, amountMicroCredits: credits(1), type: 'FREE', source: 'PROMO_CODE', expiresAt: null, reference: null, idempotencyKey: `f-${i}` });
    }
    const t1 = new Date(T0.getTime() + 200_000);
    s.setNow(t1);
    // Drawn after all the FREE credit, so outside the first batches a state read loads; it expires
    // between the first group and the next.
    await grantCredits(s, { accountId, amountMicroCredits: credits(50), type: 'PAID', source: 'PURCHASE', expiresAt: new Date(t1.getTime() + 600_000), reference: null, idempotencyKey: 'paid' });
    let calls = 0;
    // The committer's clock: the blocker's transaction and the first group at t1, every later one 11 minutes on.
    const clock = () => (++calls <= 2 ? t1 : new Date(t1.getTime() + 660_000));
    const committer = new GroupCommitter(s.pool, clock, chargeAccounts, applyCharge, { maxTransactions: 1, maxChargesPerAccount: 30 });
    const local = { ...s, clock, groupCommit: committer };
    let open!: () => void;
    const gate = new Promise<void>((resolve) => (open = resolve));
    const blocker = committer.withAccount(accountId, () => gate);
    // The first group: 30 charges of 1 credit (within the first batches); the second, from the
    // state the first carries: 30 of 5 credits, more than the FREE credit left.
    const n = 60;
    // Priced first, then queued in this order (recordUsage queues each when its pricing finished:
    // on a loaded machine the pricing cache's expiry between two calls let later ones queue first).
    const priced = [];
    for (let i = 0; i < n; i++) {
      const cmd = validateUsageInput({ accountId, idempotencyKey: `e-${i}`, category: 'units', quantities: { units: i < 30 ? '1' : '5' } });
      priced.push({ cmd, price: await pricerFor(local, cmd) });
    }
    const charged = Promise.allSettled(priced.map(({ cmd, price }) => committer.charge(cmd, price)));
    while (committer.stats().waiting < n) await new Promise((resolve) => setImmediate(resolve));
    open();
    await blocker;
    const results = await charged;
    // 150 FREE credits: 30 of 1, then 24 of 5; the PAID batch had expired for all but the first group, which did not need it.
    expect(results.map((r) => (r.status === 'fulfilled' ? 'OK' : (r.reason as { code: string }).code))).toEqual([
      ...Array.from({ length: 54 }, () => 'OK'),
      ...Array.from({ length: 6 }, () => 'INSUFFICIENT_CREDITS'),
    ]);
    const stats = committer.stats();
    expect(stats.carriedState).toBeGreaterThan(0);
    expect(stats.carriedStateMisses).toBe(0);
    expect(stats.retriedAlone).toBe(0);
    const { rows } = await s.pool.query(
      `SELECT COUNT(*)::int AS n FROM drawdowns d JOIN credit_batches b ON b.id = d.batch_id WHERE b.account_id = $1 AND b.type = 'PAID'`,
      [accountId],
    );
    expect(rows[0].n).toBe(0);
    await expectLedgerInvariant(s.pool, accountId, new Date(t1.getTime() + 660_000));
  });
});
