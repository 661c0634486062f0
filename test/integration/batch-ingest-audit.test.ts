/**
 * recordUsageBatch audited as a platform ingesting usage in bulk would use it (real PostgreSQL):
 * credit running out in the middle of a batch, an idempotency key repeated inside a batch, a
 * whole batch retried after a partial success or a lost answer, several accounts and foreign
 * holds in one batch, bad items among good ones, budgets crossed mid-batch (in memory and on the
 * statement path), captures, and the order of balanceAfter. README "Limits" (recordUsageBatch).
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { useTestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { recordUsage, recordUsageBatch } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { setSpendingBudget } from '../../src/services/spending-budgets.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { credits } from '../../src/ledger/credits.js';
import type { UsageInput } from '../../src/services/usage-command.js';

const s = useTestServices(10);

type Result = Awaited<ReturnType<typeof recordUsageBatch>>[number];
const codeOf = (r: Result) => (r.ok ? (r.result.replayed ? 'REPLAYED' : 'OK') : r.error instanceof LedgerError ? r.error.code : `UNEXPECTED ${String(r.error)}`);
const idOf = (r: Result) => (r.ok ? r.result.eventId : null);
const units = (accountId: string, idempotencyKey: string, n: number, extra: Partial<UsageInput> = {}): UsageInput => ({
  accountId,
  idempotencyKey,
  category: 'units',
  quantities: { units: String(n) },
  ...extra,
});
const batch = (inputs: UsageInput[]) => recordUsageBatch(s, inputs, { maxItems: 1000 });

/** The account's CONSUME entries in ledger order: the event's key, amount and balanceAfter (whole credits). */
async function consumes(accountId: string) {
  const { rows } = await s.pool.query(
    `SELECT e.idempotency_key AS key, (l.amount_micro_credits / 1000000)::int AS amount, (l.balance_after_micro_credits / 1000000)::int AS after
       FROM ledger_entries l JOIN usage_events e ON e.id = l.usage_event_id
      WHERE l.account_id = $1 AND l.type = 'CONSUME' ORDER BY l.seq`,
    [accountId],
  );
  return rows;
}

describe('recordUsageBatch audit', () => {
  it('credit running out mid-batch: items are decided in input order, a later smaller item still fits, balanceAfter follows that order', async () => {
    const a = await createFundedAccount(s, { paid: 5 });
    const b = await createFundedAccount(s, { paid: 1 });
    const results = await batch([units(a, 'a1', 2), units(b, 'b1', 2), units(a, 'a2', 2), units(a, 'a3', 2), units(b, 'b2', 1), units(a, 'a4', 1)]);
    expect(results.map(codeOf)).toEqual(['OK', 'INSUFFICIENT_CREDITS', 'OK', 'INSUFFICIENT_CREDITS', 'OK', 'OK']);
    expect(results[3]).toMatchObject({ error: { details: { neededCredits: '2', availableCredits: '1' } } });
    expect(await consumes(a)).toEqual([
      { key: 'a1', amount: -2, after: 3 },
      { key: 'a2', amount: -2, after: 1 },
      { key: 'a4', amount: -1, after: 0 },
    ]);
    expect(await consumes(b)).toEqual([{ key: 'b2', amount: -1, after: 0 }]);
    await expectLedgerInvariant(s.pool, a);
    await expectLedgerInvariant(s.pool, b);
  });

  it('a key twice in one batch: the same input replays the first event, other input is IDEMPOTENCY_CONFLICT; charged once', async () => {
    const a = await createFundedAccount(s, { paid: 10 });
    const results = await batch([units(a, 'k', 2), units(a, 'k', 2), units(a, 'k', 3), units(a, 'j', 1)]);
    expect(results.map(codeOf)).toEqual(['OK', 'REPLAYED', 'IDEMPOTENCY_CONFLICT', 'OK']);
    expect(idOf(results[1]!)).toBe(idOf(results[0]!));
    expect((await expectLedgerInvariant(s.pool, a)).totalMicroCredits).toBe(credits(7));
  });

  it('a key twice in one batch whose first item is refused: the second is decided on its own (as two calls in a row would be)', async () => {
    const a = await createFundedAccount(s, { paid: 2 });
    const results = await batch([units(a, 'k', 3), units(a, 'k', 3), units(a, 'k', 2)]);
    expect(results.map(codeOf)).toEqual(['INSUFFICIENT_CREDITS', 'INSUFFICIENT_CREDITS', 'OK']);
    expect((await expectLedgerInvariant(s.pool, a)).totalMicroCredits).toBe(0n);
  });

  it('a whole batch retried after a lost answer: every item answered as before, recorded ones replayed with the same events, nothing charged twice, version unmoved', async () => {
    const a = await createFundedAccount(s, { paid: 3 });
    const b = await createFundedAccount(s, { paid: 3 });
    const inputs = [units(a, 'x1', 2), units(b, 'y1', 1), units(a, 'x2', 2), units(a, 'x3', 1), units(b, 'y2', 5), { accountId: a, idempotencyKey: 'x4', category: 'nope' }];
    const first = await batch(inputs);
    expect(first.map(codeOf)).toEqual(['OK', 'OK', 'INSUFFICIENT_CREDITS', 'OK', 'INSUFFICIENT_CREDITS', 'BAD_USER_INPUT']);
    const version = async () => (await s.pool.query('SELECT version FROM balances WHERE account_id = ANY($1) ORDER BY account_id', [[a, b]])).rows.map((r) => r.version);
    const before = await version();
    const again = await batch(inputs);
    expect(again.map(codeOf)).toEqual(['REPLAYED', 'REPLAYED', 'INSUFFICIENT_CREDITS', 'REPLAYED', 'INSUFFICIENT_CREDITS', 'BAD_USER_INPUT']);
    expect(again.map(idOf)).toEqual(first.map(idOf));
    expect(await version()).toEqual(before);
    expect((await expectLedgerInvariant(s.pool, a)).totalMicroCredits).toBe(0n);
    expect((await expectLedgerInvariant(s.pool, b)).totalMicroCredits).toBe(credits(2));
  });

  it('a whole batch retried after credit arrived: recorded items replay, items refused the first time are decided again and charged now, once', async () => {
    const a = await createFundedAccount(s, { paid: 3 });
    const inputs = [units(a, 'r1', 2), units(a, 'r2', 2), units(a, 'r3', 1)];
    const first = await batch(inputs);
    expect(first.map(codeOf)).toEqual(['OK', 'INSUFFICIENT_CREDITS', 'OK']);
    await grantCredits(s, { accountId: a, amountMicroCredits: credits(2), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'g2' });
    const again = await batch(inputs);
    expect(again.map(codeOf)).toEqual(['REPLAYED', 'OK', 'REPLAYED']);
    expect([idOf(again[0]!), idOf(again[2]!)]).toEqual([idOf(first[0]!), idOf(first[2]!)]);
    const third = await batch(inputs);
    expect(third.map(codeOf)).toEqual(['REPLAYED', 'REPLAYED', 'REPLAYED']);
    expect((await expectLedgerInvariant(s.pool, a)).totalMicroCredits).toBe(0n);
    expect((await consumes(a)).map((c) => c.key)).toEqual(['r1', 'r3', 'r2']);
  });

  it('several accounts in one batch; a capture naming another account\'s hold is NOT_FOUND and takes nothing from that hold', async () => {
    const a = await createFundedAccount(s, { paid: 5 });
    const b = await createFundedAccount(s, { paid: 5 });
    const { reservationId } = await reserveCredits(s, { accountId: b, amountMicroCredits: credits(4), ttlSeconds: 600, idempotencyKey: 'hb' });
    const results = await batch([units(a, 'c1', 1, { reservationId }), units(b, 'c1', 1, { reservationId }), units(a, 'c2', 1)]);
    expect(results.map(codeOf)).toEqual(['NOT_FOUND', 'OK', 'OK']);
    const { rows } = await s.pool.query('SELECT consumed_micro_credits::text AS c FROM reservations WHERE id = $1', [reservationId]);
    expect(rows[0].c).toBe(String(credits(1)));
    expect((await expectLedgerInvariant(s.pool, a)).totalMicroCredits).toBe(credits(4));
    expect((await expectLedgerInvariant(s.pool, b)).availableMicroCredits).toBe(credits(1));
  });

  it('bad items among good ones are refused alone (negative tokens, unknown model without fallback, unknown category, future occurredAt)', async () => {
    const a = await createFundedAccount(s, { paid: 10 });
    const results = await batch([
      units(a, 'g1', 1),
      { accountId: a, idempotencyKey: 'bad1', category: 'llm', model: 'gpt-4o-mini', quantities: { inputTokens: -5 } },
      { accountId: a, idempotencyKey: 'bad2', category: 'no-such' },
      units(a, 'bad3', 1, { occurredAt: new Date(Date.now() + 3_600_000) }),
      units(a, 'g2', 1),
    ]);
    expect(results.map(codeOf)).toEqual(['OK', 'BAD_USER_INPUT', 'BAD_USER_INPUT', 'BAD_USER_INPUT', 'OK']);
    expect((await expectLedgerInvariant(s.pool, a)).totalMicroCredits).toBe(credits(8));
  });

  for (const path of ['in memory (kept spending row there)', 'on the statement path (first check of the period)'] as const) {
    it(`an agent budget crossed mid-batch ${path}: the items over it refused, the rest charged, the same answers`, async () => {
      const a = await createFundedAccount(s, { paid: 100 });
      const inMemory = path.startsWith('in memory');
      // The agent may spend 4 more either way.
      await setSpendingBudget(s, { accountId: a, subjectKind: 'AGENT', subjectId: 'ag', limitMicroCredits: credits(inMemory ? 5 : 4) });
      if (inMemory) {
        // One charge of the agent creates its kept spending row for the period.
        expect((await batch([units(a, 'warm', 1, { agentId: 'ag' })])).map(codeOf)).toEqual(['OK']);
      } else {
        expect((await batch([units(a, 'warm', 1)])).map(codeOf)).toEqual(['OK']); // no agent: no budget check, no row
        const { rows } = await s.pool.query('SELECT count(*)::int AS n FROM budget_spend WHERE account_id = $1', [a]);
        expect(rows[0].n).toBe(0);
      }
      const results = await batch([units(a, 'b1', 3, { agentId: 'ag' }), units(a, 'b2', 2, { agentId: 'ag' }), units(a, 'b3', 5), units(a, 'b4', 1, { agentId: 'ag' }), units(a, 'b5', 1, { agentId: 'other' })]);
      expect(results.map(codeOf)).toEqual(['OK', 'BUDGET_EXCEEDED', 'OK', 'OK', 'OK']);
      expect((await expectLedgerInvariant(s.pool, a)).totalMicroCredits).toBe(credits(100 - 1 - 3 - 5 - 1 - 1));
    });
  }

  it('captures inside a batch: the hold first, then available credit, then debt; a capture after the hold ran out in the same batch is charged beyond it', async () => {
    const a = await createFundedAccount(s, { paid: 5 });
    const { reservationId } = await reserveCredits(s, { accountId: a, amountMicroCredits: credits(3), ttlSeconds: 600, idempotencyKey: 'h' });
    const results = await batch([units(a, 'p1', 2, { reservationId }), units(a, 'p2', 2), units(a, 'p3', 2, { reservationId }), units(a, 'p4', 1)]);
    // p1: 2 of the hold; p2: 2 of the 2 available; p3: 1 left in the hold + 1 debt; p4: nothing available.
    expect(results.map(codeOf)).toEqual(['OK', 'OK', 'OK', 'INSUFFICIENT_CREDITS']);
    const bal = await expectLedgerInvariant(s.pool, a);
    expect([bal.totalMicroCredits, bal.reservedMicroCredits]).toEqual([credits(-1), 0n]);
    expect((await consumes(a)).map((c) => c.after)).toEqual([3, 1, -1]);
  });

  it("the depletion notice: a batch whose first refusal is too big for it (> 5 % of the period's credit) but a later one is not raises it, as those calls one by one would", async () => {
    const a = await createFundedAccount(s, { paid: 100 });
    expect((await batch([units(a, 'd0', 99.5)])).map(codeOf)).toEqual(['OK']); // 0.5 % left: 25 % and 15 % raised
    const results = await batch([units(a, 'd1', 6), units(a, 'd2', 1)]);
    expect(results.map(codeOf)).toEqual(['INSUFFICIENT_CREDITS', 'INSUFFICIENT_CREDITS']);
    const { rows } = await s.pool.query('SELECT threshold FROM credit_alerts WHERE account_id = $1 ORDER BY seq', [a]);
    expect(rows.map((r) => r.threshold)).toEqual([25, 15, 0]);
  });

  it('property: a batch answers and charges exactly as its items sent one by one, in order (twin accounts; credit, debt, holds, budgets, repeated keys, bad items)', async () => {
    const item = fc.record({
      key: fc.constantFrom('k1', 'k2', 'k3', 'k4', 'k5', 'k6'),
      units: fc.constantFrom(0, 1, 2, 3, 5),
      agent: fc.constantFrom(null, 'ag', 'other'),
      user: fc.constantFrom(null, 'us'),
      hold: fc.constantFrom(null, null, 0, 1),
      bad: fc.constantFrom(false, false, false, true),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(item, { minLength: 1, maxLength: 12 }), fc.boolean(), fc.integer({ min: 0, max: 8 }), async (items, warm, paid) => {
        const twins = await Promise.all([0, 1].map(async () => {
          const id = await createFundedAccount(s, { free: 2, paid });
          await setSpendingBudget(s, { accountId: id, subjectKind: 'AGENT', subjectId: 'ag', limitMicroCredits: credits(4) });
          await setSpendingBudget(s, { accountId: id, subjectKind: 'USER', subjectId: 'us', limitMicroCredits: credits(5) });
          if (warm) await recordUsage(s, { accountId: id, idempotencyKey: 'warm', category: 'free', agentId: 'ag', userId: 'us' });
          const holds = [
            (await reserveCredits(s, { accountId: id, amountMicroCredits: credits(1), ttlSeconds: 600, idempotencyKey: 'h0', agentId: 'ag' })).reservationId,
            (await reserveCredits(s, { accountId: id, amountMicroCredits: credits(1), ttlSeconds: 600, idempotencyKey: 'h1' })).reservationId,
          ];
          return { id, holds };
        }));
        const inputs = (t: { id: string; holds: string[] }) =>
          items.map((x): UsageInput => ({
            accountId: t.id,
            idempotencyKey: x.key,
            category: x.bad ? 'no-such' : 'units',
            quantities: { units: String(x.units) },
            agentId: x.agent,
            userId: x.user,
            reservationId: x.hold === null ? null : t.holds[x.hold]!,
          }));
        const [bt, st] = twins as [{ id: string; holds: string[] }, { id: string; holds: string[] }];
        const batched = (await batch(inputs(bt))).map(codeOf);
        const serial: string[] = [];
        for (const input of inputs(st)) {
          try {
            serial.push((await recordUsage(s, input)).replayed ? 'REPLAYED' : 'OK');
          } catch (error) {
            serial.push(error instanceof LedgerError ? error.code : `UNEXPECTED ${String(error)}`);
          }
        }
        expect(batched).toEqual(serial);
        const [b1, b2] = [await expectLedgerInvariant(s.pool, bt.id), await expectLedgerInvariant(s.pool, st.id)];
        expect([b1.totalMicroCredits, b1.reservedMicroCredits, b1.availableMicroCredits]).toEqual([b2.totalMicroCredits, b2.reservedMicroCredits, b2.availableMicroCredits]);
      }),
      { numRuns: 30 },
    );
  }, 60_000);

  it('an item PostgreSQL refuses (metadata jsonb cannot store) fails alone; the items before and after it, and other accounts, are charged once', async () => {
    const a = await createFundedAccount(s, { paid: 10 });
    const b = await createFundedAccount(s, { paid: 10 });
    const results = await batch([units(a, 'f1', 1), units(b, 'f1', 1), units(a, 'f2', 1, { metadata: { note: 'nul \u0000' } }), units(a, 'f1', 1), units(a, 'f3', 1)]);
    expect(results.map(codeOf).map((c) => (c.startsWith('UNEXPECTED') ? 'UNEXPECTED' : c))).toEqual(['OK', 'OK', 'UNEXPECTED', 'REPLAYED', 'OK']);
    expect(idOf(results[3]!)).toBe(idOf(results[0]!));
    expect((await expectLedgerInvariant(s.pool, a)).totalMicroCredits).toBe(credits(8));
    expect((await expectLedgerInvariant(s.pool, b)).totalMicroCredits).toBe(credits(9));
  });
});
