/**
 * Account statements (src/services/account-statement.ts, Account.statement): the reconciliation
 * identity openingTotal + movements = closingTotal holds exactly for every billing period of
 * random operation sequences on a test clock (grants of every source with and without expiry,
 * charges, usage past a hold that leaves debt and grants that repay it, refunds of events of
 * earlier periods, voids, clock moves that run the expiries and ones that do not), and the
 * figures are those the account really had: each period opens where the previous closed, the
 * total observed at a period boundary is that period's openingTotal, the current period closes at
 * Balance.total, every ledger entry is counted in exactly one period, both ways of reading the
 * ledger give the same statement, and an expiry job that runs late changes no statement.
 * Plus one worked example with exact figures and the GraphQL field's access rules. Real
 * PostgreSQL, test clocks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { expireDue } from '../../src/services/expire-due.js';
import { advanceTestClock } from '../../src/services/test-clock.js';
import { readBalance } from '../../src/services/read-balance.js';
import {
  GRANT_SOURCES,
  readAccountStatement,
  statementUsage,
  type AccountStatement,
  type GrantSource,
} from '../../src/services/account-statement.js';
import { monthlyPeriodAt, periodOfGridAt } from '../../src/ledger/billing-period.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { credits } from '../../src/ledger/credits.js';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { expectStatementIdentity, expectStatementsCoverLedger, readStatementsFrom, setTestClock } from './statement-helpers.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { createApiKey } from '../../src/auth/api-keys.js';
import { expectError, gid, ok, uniq } from '../api/helpers.js';

let services: TestServices;
beforeAll(() => {
  services = createTestServices(4);
});
afterAll(async () => {
  await services.close();
});

const DAY = 86_400_000;

async function clockOf(accountId: string): Promise<Date> {
  const { rows } = await services.pool.query('SELECT test_clock_at FROM accounts WHERE id = $1', [accountId]);
  return rows[0].test_clock_at as Date;
}

/** Moves the account's test clock without running anything due (as if no worker came by). */
const setClock = (accountId: string, at: Date) => setTestClock(services.pool, accountId, at);

/** Every statement from the one containing `first` to the current one, oldest first (read both ways, which must agree). */
const allStatements = (accountId: string, first: Date) => readStatementsFrom(services.pool, accountId, first);

type Op =
  | { op: 'grant'; source: GrantSource; type: 'FREE' | 'PAID'; amount: number; expiry: number | 'periodEnd' | 'nextPeriodEnd' | null }
  | { op: 'charge'; units: number }
  | { op: 'overdraw'; hold: number; units: number }
  | { op: 'refund'; pick: number }
  | { op: 'void'; pick: number }
  | { op: 'advance'; hours: number }
  | { op: 'toBoundary' }
  | { op: 'skipClock'; hours: number };

// Grants with expiries and clock moves that run nothing weigh more: they make the boundary and
// due-expiry cases (a mutation test showed 30 runs of equal weights missing them one time in three).
const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 3, arbitrary: fc.record({
    op: fc.constant('grant' as const),
    source: fc.constantFrom(...GRANT_SOURCES),
    type: fc.constantFrom('FREE' as const, 'PAID' as const),
    amount: fc.integer({ min: 1, max: 40 }),
    // Hours to two months ahead (many fall in a later period), or exactly at a period boundary.
    expiry: fc.oneof(fc.constant(null), fc.integer({ min: 1, max: 1500 }), fc.constantFrom('periodEnd' as const, 'nextPeriodEnd' as const)),
  }) },
  fc.record({ op: fc.constant('charge' as const), units: fc.integer({ min: 1, max: 15 }) }),
  fc.record({ op: fc.constant('overdraw' as const), hold: fc.integer({ min: 1, max: 5 }), units: fc.integer({ min: 1, max: 40 }) }),
  fc.record({ op: fc.constant('refund' as const), pick: fc.nat() }),
  fc.record({ op: fc.constant('void' as const), pick: fc.nat() }),
  fc.record({ op: fc.constant('advance' as const), hours: fc.integer({ min: 1, max: 900 }) }),
  fc.constant({ op: 'toBoundary' as const }),
  { weight: 2, arbitrary: fc.record({ op: fc.constant('skipClock' as const), hours: fc.integer({ min: 1, max: 900 }) }) },
);

let key = 0;

describe('account statements', () => {
  it('reconcile exactly in every period of random operation sequences, and state what the account had (property)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 3, maxLength: 18 }), fc.integer({ min: 0, max: 27 * 24 }), async (ops, startHour) => {
        // Anchors at any hour of January's first four weeks; periods are months from it.
        const start = new Date(Date.UTC(2027, 0, 1) + startHour * 3_600_000 + 123);
        const accountId = await createFundedAccount(services, { paid: 20, testClockStart: start });
        const events: string[] = [];
        const grants: string[] = [];
        /** Balance.total observed right when the clock reached a period boundary (expiries there run). */
        const observed = new Map<number, bigint>();
        for (const o of ops) {
          const now = await clockOf(accountId);
          try {
            if (o.op === 'grant') {
              const end = monthlyPeriodAt(start, now).end;
              const expiresAt =
                o.expiry === null ? null
                : o.expiry === 'periodEnd' ? end
                : o.expiry === 'nextPeriodEnd' ? monthlyPeriodAt(start, end).end
                : new Date(now.getTime() + o.expiry * 3_600_000);
              const r = await grantCredits(services, {
                accountId, amountMicroCredits: credits(o.amount), type: o.type, source: o.source,
                expiresAt,
                reference: null, idempotencyKey: `st-${++key}`,
              });
              grants.push(r.grantId);
            } else if (o.op === 'charge') {
              events.push((await recordUsage(services, { accountId, idempotencyKey: `st-${++key}`, category: 'units', quantities: { units: String(o.units) } })).eventId);
            } else if (o.op === 'overdraw') {
              // Usage past a hold and past available credit leaves debt; a later grant repays it (DEBT_REPAY).
              const hold = await reserveCredits(services, { accountId, amountMicroCredits: credits(o.hold), ttlSeconds: 3600, idempotencyKey: `st-${++key}` });
              events.push((await recordUsage(services, { accountId, idempotencyKey: `st-${++key}`, category: 'units', quantities: { units: String(o.units) }, reservationId: hold.reservationId })).eventId);
            } else if (o.op === 'refund') {
              if (events.length) await refundUsage(services, events[o.pick % events.length]!, 'statement test');
            } else if (o.op === 'void') {
              if (grants.length) await voidGrant(services, grants[o.pick % grants.length]!, 'statement test');
            } else if (o.op === 'advance') {
              await advanceTestClock(services, accountId, new Date(now.getTime() + o.hours * 3_600_000));
            } else if (o.op === 'toBoundary') {
              const end = monthlyPeriodAt(start, now).end;
              await advanceTestClock(services, accountId, end);
              observed.set(end.getTime(), (await readBalance(services.pool, accountId, new Date())).totalMicroCredits);
            } else {
              await setClock(accountId, new Date(now.getTime() + o.hours * 3_600_000));
            }
          } catch (e) {
            // Refusals the rules make (no credit, already refunded or voided) change nothing.
            if (!(e instanceof LedgerError)) throw e;
          }
        }

        const statements = await allStatements(accountId, start);
        expect(statements[0]!.periodStart).toEqual(start);
        expect(statements[0]!.openingTotalMicroCredits).toBe(0n); // nothing before the account's first instant
        statements.forEach((s, i) => {
          expectStatementIdentity(s);
          if (i > 0) {
            expect(s.periodStart).toEqual(statements[i - 1]!.periodEnd);
            expect(s.openingTotalMicroCredits).toBe(statements[i - 1]!.closingTotalMicroCredits);
          }
          const seen = observed.get(s.periodStart.getTime());
          if (seen !== undefined) expect({ period: s.periodStart, opening: s.openingTotalMicroCredits }).toEqual({ period: s.periodStart, opening: seen });
        });
        const current = statements[statements.length - 1]!;
        expect(current.final).toBe(false);
        expect(current.closingTotalMicroCredits).toBe((await readBalance(services.pool, accountId, new Date())).totalMicroCredits);

        // Every total-changing ledger entry in exactly one period: the movements of all periods are
        // the ledger's sums by type (expiries due but not written yet counted as EXPIRE).
        await expectStatementsCoverLedger(services.pool, accountId, statements, await clockOf(accountId));

        // The expiry job coming late writes EXPIRE entries dated at expiresAt: no figure changes.
        await expireDue(services, accountId);
        const again = await allStatements(accountId, start);
        const figures = (list: AccountStatement[]) => list.map(({ entryCount: _n, ...rest }) => rest);
        expect(figures(again)).toEqual(figures(statements));
      }),
      { numRuns: 50 },
    );
  }, 240_000);

  it('a worked example: expiry at the period end, a refund of last period\'s charge, a void, debt repaid, exact figures', async () => {
    const start = new Date('2027-03-10T08:00:00.000Z');
    const periodEnd = new Date('2027-04-10T08:00:00.000Z');
    const accountId = await createFundedAccount(services, { paid: 100, testClockStart: start });
    await setClock(accountId, new Date('2027-03-20T00:00:00.000Z'));
    const charged = await recordUsage(services, { accountId, idempotencyKey: 'c1', category: 'units', quantities: { units: '4' } }); // PAID 100 -> 96
    // A promo of 10 FREE credits expiring exactly at the period end: its EXPIRE, dated there, is in March.
    await grantCredits(services, { accountId, amountMicroCredits: credits(10), type: 'FREE', source: 'PROMO_CODE', expiresAt: periodEnd, reference: null, idempotencyKey: 'promo' });
    const bonus = await grantCredits(services, { accountId, amountMicroCredits: credits(7), type: 'PAID', source: 'ADJUSTMENT', expiresAt: null, reference: null, idempotencyKey: 'adj' });
    await advanceTestClock(services, accountId, new Date('2027-04-15T00:00:00.000Z')); // the promo's 10 expire at Apr 10 08:00
    await refundUsage(services, charged.eventId, 'refund of March usage in April'); // +4 back into the PAID batch, dated in April
    await voidGrant(services, bonus.grantId, 'mistake'); // -7
    const hold = await reserveCredits(services, { accountId, amountMicroCredits: credits(1), ttlSeconds: 60, idempotencyKey: 'h' });
    await recordUsage(services, { accountId, idempotencyKey: 'c2', category: 'units', quantities: { units: '105' }, reservationId: hold.reservationId }); // 100 left: 5 debt
    await grantCredits(services, { accountId, amountMicroCredits: credits(20), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'buy' }); // 5 repay the debt

    const march = await readAccountStatement(services.pool, accountId, new Date(), start);
    expect(march).toMatchObject({
      periodStart: start, periodEnd, final: true, asOf: periodEnd,
      openingTotalMicroCredits: 0n,
      grantedMicroCredits: credits(117),
      consumedMicroCredits: -credits(4),
      expiredMicroCredits: -credits(10),
      refundedMicroCredits: 0n, voidedMicroCredits: 0n, debtRepaidMicroCredits: 0n, adjustedMicroCredits: 0n,
      closingTotalMicroCredits: credits(103),
    });
    expect(march.grantedBySource.filter((g) => g.amountMicroCredits !== 0n)).toEqual([
      { source: 'PROMO_CODE', amountMicroCredits: credits(10) },
      { source: 'PURCHASE', amountMicroCredits: credits(100) },
      { source: 'ADJUSTMENT', amountMicroCredits: credits(7) },
    ]);
    const april = await readAccountStatement(services.pool, accountId, new Date(), null);
    expect(april).toMatchObject({
      periodStart: periodEnd, final: false, asOf: new Date('2027-04-15T00:00:00.000Z'),
      openingTotalMicroCredits: credits(103),
      grantedMicroCredits: credits(15), // 20 purchased, 5 of them repaid debt
      debtRepaidMicroCredits: credits(5),
      consumedMicroCredits: -credits(105),
      expiredMicroCredits: 0n,
      refundedMicroCredits: credits(4),
      voidedMicroCredits: -credits(7),
      closingTotalMicroCredits: credits(15), // 103 + 15 + 5 - 105 + 4 - 7
    });
    expectStatementIdentity(march);
    expectStatementIdentity(april);
    expect(april.closingTotalMicroCredits).toBe((await readBalance(services.pool, accountId, new Date())).totalMicroCredits);
    // Usage by category: by occurredAt, refunded events left out (March's only charge was refunded in April).
    expect(await statementUsage(services.pool, march)).toEqual([]);
    expect((await statementUsage(services.pool, april)).map((r) => [r.category, r.creditsMicroCredits, r.events])).toEqual([['units', credits(105), 1]]);
    // A period after the current one, or before the account's first, is refused.
    await expect(readAccountStatement(services.pool, accountId, new Date(), new Date(start.getTime() - 1))).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
    await expect(readAccountStatement(services.pool, accountId, new Date(), new Date('0001-01-01T00:00:00.000Z'))).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
    await expect(readAccountStatement(services.pool, accountId, new Date(), periodOfGridAt(start, new Date('2027-05-10T08:00:00.000Z')).start)).rejects.toMatchObject({ code: 'BAD_USER_INPUT' });
  });

  it('periods before the billing anchor are counted backwards from it; from it on they are monthlyPeriodAt (property)', () => {
    const instant = fc.integer({ min: Date.UTC(2024, 0, 1), max: Date.UTC(2032, 0, 1) }).map((t) => new Date(t));
    fc.assert(
      fc.property(instant, instant, (anchor, at) => {
        const p = periodOfGridAt(anchor, at);
        expect(p.start.getTime()).toBeLessThanOrEqual(at.getTime());
        expect(at.getTime()).toBeLessThan(p.end.getTime());
        expect(periodOfGridAt(anchor, p.end).start).toEqual(p.end); // tiles: the next period starts where this one ends
        if (at.getTime() >= anchor.getTime()) expect(p).toEqual(monthlyPeriodAt(anchor, at));
      }),
      { numRuns: 2000 },
    );
  });
});

describe('Account.statement over GraphQL', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer();
  });
  afterAll(async () => {
    await srv.close();
  });

  const STATEMENT = `query($id: ID!, $at: DateTime) { account(id: $id) { statement(periodStart: $at) {
    periodStart periodEnd final openingTotal closingTotal granted grantedBySource { source credits }
    consumed expired refunded voided debtRepaid adjusted entries usageByCategory { category credits events } } } }`;

  it('end users read their own account\'s statement, as its balance; a write-only key is refused; a future period is BAD_USER_INPUT', async () => {
    const userExt = uniq('user');
    const accountId = await createFundedAccount(srv.services, { paid: 12, kind: 'USER', externalId: userExt });
    await recordUsage(srv.services, { accountId, idempotencyKey: 'g1', category: 'units', quantities: { units: '2.5' } });
    const id = gid('Account', accountId);
    const token = await signUserToken(srv.jwtSecret, { sub: userExt, expiresInSeconds: 600 });
    const s = ok(await srv.gql(STATEMENT, { id }, token)).account.statement;
    expect(s).toMatchObject({
      final: false, openingTotal: '0', closingTotal: '9.5', granted: '12', consumed: '-2.5', expired: '0', refunded: '0', voided: '0', debtRepaid: '0', adjusted: '0', entries: 2,
      usageByCategory: [{ category: 'units', credits: '2.5', events: 1 }],
    });
    expect(s.grantedBySource).toContainEqual({ source: 'PURCHASE', credits: '12' });
    // Another user's token reads nothing of it.
    const other = await signUserToken(srv.jwtSecret, { sub: uniq('user'), expiresInSeconds: 600 });
    expect(ok(await srv.gql(STATEMENT, { id }, other)).account).toBeNull();
    const writeOnly = (await createApiKey(srv.services.pool, { name: uniq('statement-write'), scopes: ['usage:write'] })).token;
    expectError(await srv.gql(STATEMENT, { id }, writeOnly), 'FORBIDDEN');
    const future = new Date(new Date(s.periodEnd).getTime() + 40 * DAY).toISOString();
    expectError(await srv.gql(STATEMENT, { id, at: future }), 'BAD_USER_INPUT');
  });
});
