/**
 * Property test (fast-check) of the ledger on the real PostgreSQL: random sequences of grants,
 * charges, reservations, captures, settlements, releases, refunds, voids, idempotent retries
 * and clock moves (batches and holds expiring lazily, billing periods rolling), of two agents, one
 * of them with a spending budget that commands set, change and remove (captures name their hold's
 * agent, none, or the other one, which is refused). After EVERY command: the
 * invariant holds (batches - debt = total = ledger sum; available = total - reserved; every kept
 * budget spending row equals its SUM), and each command's effect on the balance is the one the
 * rules promise. Run with one transaction per call and through group commit, each also with the
 * state reads limited to the first batch (setSpendableBatchesReadForTests: the limited path).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { applyCharge, chargeAccounts, recordUsage } from '../../src/services/record-usage.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { setSpendableBatchesReadForTests } from '../../src/services/account-tx.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { settleReservation } from '../../src/services/settle-reservation.js';
import { releaseReservation } from '../../src/services/release-reservation.js';
import { readDebtHistory, refundUsage, replayDebt } from '../../src/services/refund-usage.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { setSpendingBudget } from '../../src/services/spending-budgets.js';
import { readBalance } from '../../src/services/read-balance.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { credits } from '../../src/ledger/credits.js';

let services: TestServices;
beforeAll(() => {
  services = createTestServices(5);
});
afterAll(async () => {
  await services.close();
});

type Command =
  | { op: 'grant'; amount: number; type: 'FREE' | 'PAID'; expiresInMinutes: number | null }
  | { op: 'charge'; units: string; agent: Agent }
  | { op: 'reserve'; amount: number; agent: Agent }
  | { op: 'capture'; hold: number; units: string; agent: Agent | null }
  | { op: 'settle'; hold: number; units: string; agent: Agent | null }
  | { op: 'budget'; agent: Agent; limit: number | null }
  | { op: 'release'; hold: number }
  | { op: 'refund'; event: number }
  | { op: 'void'; grant: number }
  | { op: 'retry'; event: number }
  | { op: 'advance'; minutes: number };

/** The agents of the pool's usage: `a1` starts with a budget, `budget` commands set or remove either's. */
type Agent = 'a1' | 'a2';
const agentArb = fc.constantFrom<Agent>('a1', 'a2');
/** A capture's agent: the hold's, another (refused BAD_USER_INPUT), or none (the hold's is recorded). */
const captureAgentArb = fc.constantFrom<Agent | null>('a1', 'a2', null);

const unitsArb = fc.integer({ min: 0, max: 4000 }).map((n) => (n / 100).toString()); // 0 .. 40 credits, 2 decimals
const commandArb: fc.Arbitrary<Command> = fc.oneof(
  fc.record({ op: fc.constant('grant' as const), amount: fc.integer({ min: 1, max: 50 }), type: fc.constantFrom('FREE' as const, 'PAID' as const), expiresInMinutes: fc.option(fc.integer({ min: 1, max: 120 }), { nil: null }) }),
  fc.record({ op: fc.constant('charge' as const), units: unitsArb, agent: agentArb }),
  fc.record({ op: fc.constant('reserve' as const), amount: fc.integer({ min: 1, max: 30 }), agent: agentArb }),
  fc.record({ op: fc.constant('capture' as const), hold: fc.nat(5), units: unitsArb, agent: captureAgentArb }),
  fc.record({ op: fc.constant('settle' as const), hold: fc.nat(5), units: unitsArb, agent: captureAgentArb }),
  fc.record({ op: fc.constant('budget' as const), agent: agentArb, limit: fc.option(fc.integer({ min: 0, max: 60 }), { nil: null }) }),
  fc.record({ op: fc.constant('release' as const), hold: fc.nat(5) }),
  fc.record({ op: fc.constant('refund' as const), event: fc.nat(10) }),
  fc.record({ op: fc.constant('void' as const), grant: fc.nat(5) }),
  fc.record({ op: fc.constant('retry' as const), event: fc.nat(10) }),
  fc.record({ op: fc.constant('advance' as const), minutes: fc.integer({ min: 1, max: 90 }) }),
  fc.record({ op: fc.constant('advance' as const), minutes: fc.integer({ min: 1, max: 20 }).map((days) => days * 1440) }), // into the next billing period, at times
);

/**
 * `runs` as they are, or, when the state reads load only `batchesRead` batches, each starting with
 * a few small grants (FREE and PAID, some expiring), so that the account holds more batches than
 * a read loads and charges often need more than the loaded ones hold (the fallback read).
 */
function withFewBatchesRead(batchesRead: number | undefined, runs: fc.Arbitrary<Command[]>): fc.Arbitrary<Command[]> {
  if (batchesRead === undefined) return runs;
  const smallGrantArb = fc.record({
    op: fc.constant('grant' as const),
    amount: fc.integer({ min: 1, max: 6 }),
    type: fc.constantFrom('FREE' as const, 'PAID' as const),
    expiresInMinutes: fc.option(fc.integer({ min: 1, max: 240 }), { nil: null }),
  });
  return fc.tuple(fc.array(smallGrantArb, { minLength: 2, maxLength: 8 }), runs).map(([grants, commands]) => [...grants, ...commands]);
}

const EXPECTED_REFUSALS = new Set(['INSUFFICIENT_CREDITS', 'RESERVATION_NOT_ACTIVE', 'BUDGET_EXCEEDED']);

describe.each([
  ['one transaction per call', false],
  // Charges, holds and settles decided in memory by chargeAccounts (budgets included), the rest as
  // operations of the committer's transactions.
  ['group commit', true],
  // The state reads load only the first batch in drawdown order (AccountTx SPENDABLE_BATCHES_READ,
  // 100 in production): the fallback read of the rest and carried partial state all the time.
  ['one transaction per call, 1 batch read', false, 1],
  ['group commit, 1 batch read', true, 1],
] as [string, boolean, number?][])('ledger invariant under random command sequences (%s)', (_path, grouped, batchesRead) => {
  beforeAll(() => {
    services.groupCommit = grouped ? new GroupCommitter(services.pool, services.clock, chargeAccounts, applyCharge) : undefined;
    setSpendableBatchesReadForTests(batchesRead ?? null);
  });
  afterAll(() => setSpendableBatchesReadForTests(null));

  it('holds after every command, and every command moves the balance as promised', async () => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(withFewBatchesRead(batchesRead, fc.array(commandArb, { minLength: 5, maxLength: 30 })), async (commands) => {
        run++;
        let now = new Date(Date.UTC(2026, 0, 1, 12, 0, 0));
        services.setNow(now);
        const accountId = await createFundedAccount(services, { free: 10 });
        await setSpendingBudget(services, { accountId, subjectKind: 'AGENT', subjectId: 'a1', limitMicroCredits: credits(25) });
        const holds: string[] = [];
        /** Each hold's agent: a capture naming another is refused with BAD_USER_INPUT (README "Budgets inside a pool"). */
        const holdAgents = new Map<string, Agent>();
        const events: { key: string; units: string; reservationId: string | null; agent: Agent | null }[] = [];
        const eventIds: string[] = [];
        const grants: string[] = [];
        let seq = 0;
        for (const cmd of commands) {
          const before = await readBalance(services.pool, accountId, now);
          const key = `p${run}-${seq++}`;
          try {
            switch (cmd.op) {
              case 'grant': {
                const r = await grantCredits(services, {
                  accountId,
                  amountMicroCredits: credits(cmd.amount),
                  type: cmd.type,
                  source: cmd.type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE',
                  expiresAt: cmd.expiresInMinutes ? new Date(now.getTime() + cmd.expiresInMinutes * 60_000) : null,
                  reference: null,
                  idempotencyKey: key,
                });
                grants.push(r.grantId);
                const after = await readBalance(services.pool, accountId, now);
                expect(after.totalMicroCredits - before.totalMicroCredits).toBe(credits(cmd.amount));
                expect(after.debtMicroCredits).toBe(before.debtMicroCredits > credits(cmd.amount) ? before.debtMicroCredits - credits(cmd.amount) : 0n);
                break;
              }
              case 'charge': {
                const r = await recordUsage(services, { accountId, idempotencyKey: key, category: 'units', quantities: { units: cmd.units }, agentId: cmd.agent });
                events.push({ key, units: cmd.units, reservationId: null, agent: cmd.agent });
                eventIds.push(r.eventId);
                const cost = BigInt(Math.round(Number(cmd.units) * 100)) * 10_000n;
                expect(cost <= before.availableMicroCredits || cost === 0n).toBe(true);
                const after = await readBalance(services.pool, accountId, now);
                expect(before.availableMicroCredits - after.availableMicroCredits).toBe(cost);
                expect(after.debtMicroCredits).toBe(before.debtMicroCredits);
                break;
              }
              case 'reserve': {
                const r = await reserveCredits(services, { accountId, amountMicroCredits: credits(cmd.amount), ttlSeconds: 1800, idempotencyKey: key, agentId: cmd.agent });
                holds.push(r.reservationId);
                holdAgents.set(r.reservationId, cmd.agent);
                const after = await readBalance(services.pool, accountId, now);
                expect(after.reservedMicroCredits - before.reservedMicroCredits).toBe(credits(cmd.amount));
                expect(after.totalMicroCredits).toBe(before.totalMicroCredits);
                break;
              }
              case 'capture': {
                const hold = holds[cmd.hold % Math.max(holds.length, 1)];
                if (!hold) continue;
                const r = await recordUsage(services, { accountId, idempotencyKey: key, category: 'units', quantities: { units: cmd.units }, reservationId: hold, agentId: cmd.agent });
                events.push({ key, units: cmd.units, reservationId: hold, agent: cmd.agent });
                eventIds.push(r.eventId);
                const after = await readBalance(services.pool, accountId, now);
                const cost = BigInt(Math.round(Number(cmd.units) * 100)) * 10_000n;
                expect(before.totalMicroCredits - after.totalMicroCredits).toBe(cost);
                break;
              }
              case 'settle': {
                const hold = holds[cmd.hold % Math.max(holds.length, 1)];
                if (!hold) continue;
                await settleReservation(services, hold, [{ accountId, idempotencyKey: key, category: 'units', quantities: { units: cmd.units }, agentId: cmd.agent }]);
                const after = await readBalance(services.pool, accountId, now);
                expect(after.reservedMicroCredits <= before.reservedMicroCredits).toBe(true);
                break;
              }
              case 'release': {
                const hold = holds[cmd.hold % Math.max(holds.length, 1)];
                if (!hold) continue;
                await releaseReservation(services, hold);
                const after = await readBalance(services.pool, accountId, now);
                expect(after.totalMicroCredits).toBe(before.totalMicroCredits);
                expect(after.reservedMicroCredits <= before.reservedMicroCredits).toBe(true);
                break;
              }
              case 'refund': {
                const id = eventIds[cmd.event % Math.max(eventIds.length, 1)];
                if (!id) continue;
                await refundUsage(services, id, 'property test');
                const after = await readBalance(services.pool, accountId, now);
                expect(after.totalMicroCredits >= before.totalMicroCredits).toBe(true);
                break;
              }
              case 'void': {
                const id = grants[cmd.grant % Math.max(grants.length, 1)];
                if (!id) continue;
                await voidGrant(services, id, 'property test');
                const after = await readBalance(services.pool, accountId, now);
                expect(after.totalMicroCredits <= before.totalMicroCredits).toBe(true);
                break;
              }
              case 'retry': {
                const e = events[cmd.event % Math.max(events.length, 1)];
                if (!e) continue;
                const r = await recordUsage(services, { accountId, idempotencyKey: e.key, category: 'units', quantities: { units: e.units }, reservationId: e.reservationId, agentId: e.agent });
                expect(r.replayed).toBe(true);
                const after = await readBalance(services.pool, accountId, now);
                expect(after.version).toBe(before.version);
                expect(after.totalMicroCredits).toBe(before.totalMicroCredits);
                break;
              }
              case 'budget': {
                await setSpendingBudget(services, { accountId, subjectKind: 'AGENT', subjectId: cmd.agent, limitMicroCredits: cmd.limit === null ? null : credits(cmd.limit) });
                const after = await readBalance(services.pool, accountId, now);
                expect(after.totalMicroCredits).toBe(before.totalMicroCredits);
                break;
              }
              case 'advance': {
                now = new Date(now.getTime() + cmd.minutes * 60_000);
                services.setNow(now);
                break;
              }
            }
          } catch (err) {
            const otherAgent =
              (cmd.op === 'capture' || cmd.op === 'settle') && cmd.agent !== null && cmd.agent !== holdAgents.get(holds[cmd.hold % Math.max(holds.length, 1)] ?? '');
            if (!(err instanceof LedgerError && (EXPECTED_REFUSALS.has(err.code) || (otherAgent && err.code === 'BAD_USER_INPUT')))) throw err;
            // A refusal changes nothing.
            const after = await readBalance(services.pool, accountId, now);
            expect(after.version).toBe(before.version);
            expect(after.totalMicroCredits).toBe(before.totalMicroCredits);
          }
          const b = await expectLedgerInvariant(services.pool, accountId, now);
          expect(b.debtMicroCredits >= 0n).toBe(true);
          // The debt history refunds split an event's debt by explains the debt: what it says is still owed is the debt.
          const owed = [...replayDebt(await readDebtHistory(services.pool, accountId)).values()].reduce((sum, e) => sum + e.unpaidMicroCredits, 0n);
          expect(owed).toBe(b.debtMicroCredits);
          // Without debt, available can only be negative through holds on since-expired/voided batches.
          if (b.debtMicroCredits === 0n) expect(b.totalMicroCredits >= 0n).toBe(true);
        }
      }),
      { numRuns: batchesRead === undefined ? 30 : Number(process.env.PROPERTY_LIMITED_RUNS ?? 12), ...(process.env.PROPERTY_SEED ? { seed: Number(process.env.PROPERTY_SEED) } : {}) },
    );
    services.setNow(null);
  });
});
