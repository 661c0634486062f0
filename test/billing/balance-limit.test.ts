/**
 * The 64-bit limit of credit figures (MAX_ABS_MICRO_CREDITS, 9223372036854.775807 credits): each
 * Credits value is capped by the scalar, and sums are capped by the services. A grant that would
 * take the account's total, or the credit granted in its billing period, past the limit is
 * BAD_USER_INPUT (reason BALANCE_LIMIT) and writes nothing: grantCredits, redeemPromoCode, a pack
 * purchase (refused BEFORE the card is charged: no payment row, no charge) and an auto top-up
 * (SKIPPED, nothing charged); createCreditPack refuses credits + bonusCredits past the limit.
 * A charge whose sums would pass the limit (the debt it leaves, what its hold has consumed) is
 * refused the same way, before anything is written, on every charge path (recordUsage under
 * CHARGE_PATH group and naive, recordUsageBatch, settleReservation with usage).
 * Over the API and through the services, against the real PostgreSQL with the simulator.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import { pino } from 'pino';
import { parseEnv } from '../../src/config/env.js';
import { MAX_ABS_MICRO_CREDITS } from '../../src/ledger/credits.js';
import { LedgerError } from '../../src/ledger/errors.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { createCreditPack } from '../../src/services/credit-packs.js';
import { purchaseCreditPack } from '../../src/services/purchase-pack.js';
import { processAutoTopUp } from '../../workers/processors/auto-top-up.js';
import type { PaymentSimulator } from '../../src/payments/simulator.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, expectUnchanged, grant, ok, readAccount, uniq } from '../api/helpers.js';
import { attachMethod, billingCounts, createPack, startBillingServer, topUps, type BillingServer } from './billing-helpers.js';

const MAX = '9223372036854.775807';
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`;
const VOID = `mutation($grantId: ID!, $reason: String!) { voidGrant(grantId: $grantId, reason: $reason) { id } }`;
const CREATE_PROMO = `mutation($input: CreatePromoCodeInput!) { createPromoCode(input: $input) { code redemptions } }`;
const REDEEM = `mutation($accountId: ID!, $code: String!) { redeemPromoCode(accountId: $accountId, code: $code) { id } }`;
const CREATE_PACK = `mutation($input: CreateCreditPackInput!) { createCreditPack(input: $input) { id } }`;
const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { id } }`;
const SET = `mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) { enabled } }`;

let billing: BillingServer;
let srv: TestServer;
let simulator: PaymentSimulator;

beforeAll(async () => {
  billing = await startBillingServer();
  ({ srv, simulator } = billing);
});

afterAll(async () => {
  await billing?.close();
});

function grantInput(accountId: string, amount: string) {
  return { input: { accountId, amount, type: 'PAID', source: 'ADJUSTMENT', idempotencyKey: uniq('grant') } };
}

/** Asserts a BALANCE_LIMIT refusal. */
function expectLimit(res: Parameters<typeof expectError>[0]) {
  expect(expectError(res, 'BAD_USER_INPUT').extensions?.reason).toBe('BALANCE_LIMIT');
}

/** Runs `fn` and expects a LedgerError BAD_USER_INPUT with reason BALANCE_LIMIT. */
async function expectLimitThrown(fn: () => Promise<unknown>) {
  const err = await fn().then(
    () => expect.fail('expected a BALANCE_LIMIT refusal'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LedgerError);
  expect(err).toMatchObject({ code: 'BAD_USER_INPUT', details: { reason: 'BALANCE_LIMIT' } });
}

describe('grants past the limit', () => {
  it('grantCredits: at the limit it is accepted; one more credit is BAD_USER_INPUT and writes nothing (API and service)', async () => {
    const accountId = await apiAccount(srv);
    ok(await srv.gql(GRANT, grantInput(accountId, MAX)));
    expectLimit(await expectUnchanged(srv, [accountId], () => srv.gql(GRANT, grantInput(accountId, '1'))));
    await expectUnchanged(srv, [accountId], () =>
      expectLimitThrown(() =>
        grantCredits(srv.services, { accountId: dbId(accountId), amountMicroCredits: 1n, type: 'FREE', source: 'ADJUSTMENT', expiresAt: null, reference: null, idempotencyKey: uniq('g') }),
      ),
    );
    expect((await readAccount(srv, accountId)).balance.total).toBe(MAX);
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('the credit granted in the billing period is a figure too: after a voided max grant, another grant is refused', async () => {
    const accountId = await apiAccount(srv);
    const big = ok(await srv.gql(GRANT, grantInput(accountId, MAX))).grantCredits.id;
    ok(await srv.gql(VOID, { grantId: big, reason: 'test' }));
    expect((await readAccount(srv, accountId)).balance.total).toBe('0');
    expectLimit(await expectUnchanged(srv, [accountId], () => srv.gql(GRANT, grantInput(accountId, '1'))));
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('redeemPromoCode of a max-value code on a funded account is refused; the code is not used up', async () => {
    const code = `BIG-${randomBytes(6).toString('hex').toUpperCase()}`;
    ok(await srv.gql(CREATE_PROMO, { input: { code, credits: MAX } }));
    const accountId = await apiAccount(srv, { free: '1' });
    expectLimit(await expectUnchanged(srv, [accountId], () => srv.gql(REDEEM, { accountId, code })));
    const { rows } = await srv.services.pool.query('SELECT redemptions FROM promo_codes WHERE code = $1', [code]);
    expect(rows[0].redemptions).toBe(0);
    const redemptions = await srv.services.pool.query('SELECT count(*)::int AS n FROM promo_redemptions WHERE account_id = $1', [dbId(accountId)]);
    expect(redemptions.rows[0].n).toBe(0);
  });
});

describe('credit packs past the limit', () => {
  it('createCreditPack refuses credits + bonusCredits past the limit (API and service) and creates nothing', async () => {
    const name = uniq('too-big');
    expectError(await srv.gql(CREATE_PACK, { input: { name, credits: MAX, bonusCredits: '1', priceUsd: '1' } }), 'BAD_USER_INPUT');
    await expect(
      createCreditPack(srv.services, { name, microCredits: MAX_ABS_MICRO_CREDITS - 5n, bonusMicroCredits: 6n, priceUsd: '1', expiresAfterDays: null }),
    ).rejects.toMatchObject({ code: 'BAD_USER_INPUT', details: { field: 'bonusCredits' } });
    const { rows } = await srv.services.pool.query('SELECT count(*)::int AS n FROM credit_packs WHERE name = $1', [name]);
    expect(rows[0].n).toBe(0);
    expect(await createPack(srv, { credits: MAX, bonusCredits: '0', priceUsd: '1' })).toMatchObject({ credits: MAX });
  });

  it('a purchase the balance cannot take is refused before the card is charged: no payment, no charge (API and service)', async () => {
    const pack = await createPack(srv, { credits: MAX, priceUsd: '1' });
    const accountId = await apiAccount(srv, { paid: '1' });
    const card = await attachMethod(srv, accountId, `pm_ok_${randomUUID()}`);
    expectLimit(await expectUnchanged(srv, [accountId], () => srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') })));
    await expectUnchanged(srv, [accountId], () =>
      expectLimitThrown(() => purchaseCreditPack(srv.services, { accountId: dbId(accountId), packId: dbId(pack.id), idempotencyKey: uniq('buy') })),
    );
    expect(simulator.chargeCount(card)).toBe(0);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 0, pack_grants: 0 });
    // On an empty account the same pack is bought and granted in full.
    const empty = await apiAccount(srv);
    const emptyCard = await attachMethod(srv, empty, `pm_ok_${randomUUID()}`);
    ok(await srv.gql(PURCHASE, { accountId: empty, packId: pack.id, key: uniq('buy') }));
    expect((await readAccount(srv, empty)).balance.paid).toBe(MAX);
    expect(simulator.chargeCount(emptyCard)).toBe(1);
  });

  it('an auto top-up the balance cannot take is SKIPPED without charging', async () => {
    const pack = await createPack(srv, { credits: MAX, priceUsd: '1' });
    const accountId = await apiAccount(srv, { paid: '100' });
    const card = await attachMethod(srv, accountId, `pm_ok_${randomUUID()}`);
    ok(await srv.gql(SET, { input: { accountId, enabled: true, thresholdCredits: '1000', packId: pack.id } }));
    const [topUp] = await topUps(srv, accountId);
    expect(topUp?.status).toBe('PENDING');
    const deps = { services: srv.services, log: pino({ level: 'silent' }), env: parseEnv({ REDIS_URL: TEST_REDIS_URL, DATABASE_URL: TEST_DATABASE_URL, QUEUE_PREFIX: billing.prefix }) };
    const result = await processAutoTopUp(deps, { name: 'auto-top-up', data: { topUpId: topUp!.id, accountId: dbId(accountId) }, attemptsMade: 0, attempts: 3 });
    expect(result).toMatchObject({ status: 'SKIPPED', reason: expect.stringMatching(/largest amount/) });
    expect(simulator.chargeCount(card)).toBe(0);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 0, pack_grants: 0 });
    await grant(srv, accountId, '1', 'PAID'); // the account still takes ordinary grants
  });
});

describe.each(['group', 'naive'])('charges whose sums would pass the limit (CHARGE_PATH=%s)', (chargePath) => {
  let charges: TestServer;
  beforeAll(async () => {
    charges = await startTestServer({ CHARGE_PATH: chargePath });
  });
  afterAll(async () => {
    await charges?.close();
  });

  const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { cost debt } }`;
  const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode errorMessage event { cost } } }`;
  const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`;
  const SETTLE = `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { status consumed } }`;
  const HOLD = `query($id: ID!) { node(id: $id) { ... on Reservation { status consumed } } }`;

  /** A hold of `amount` credits on `accountId`; returns its id. */
  const hold = async (accountId: string, amount: string, agentId?: string) =>
    ok(await charges.gql(RESERVE, { input: { accountId, amount, idempotencyKey: uniq('hold'), agentId } })).reserveCredits.id as string;
  /** A capture of `units` credits (the test book's 1-credit-per-unit rule) against `reservationId`. */
  const capture = (accountId: string, reservationId: string, units: string) => ({
    accountId,
    idempotencyKey: uniq('cap'),
    category: 'units',
    quantities: { units },
    reservationId,
  });

  /** Asserts the refusal on every path (single, batch item, settle with usage) and that none of them changes anything. */
  async function expectRefusedEverywhere(accountId: string, reservationId: string, units: string) {
    await expectUnchanged(charges, [accountId], async () => {
      expectLimit(await charges.gql(RECORD, { input: capture(accountId, reservationId, units) }));
      const [item] = ok(await charges.gql(BATCH, { inputs: [capture(accountId, reservationId, units)] })).recordUsageBatch;
      expect(item).toMatchObject({ errorCode: 'BAD_USER_INPUT', event: null });
      expect(item.errorMessage).toMatch(/largest amount/);
      // A settle whose second item passes the limit records neither and leaves the hold ACTIVE.
      expectLimit(await charges.gql(SETTLE, { input: { reservationId, usage: [capture(accountId, reservationId, '0.5'), capture(accountId, reservationId, units)] } }));
    });
    expect(ok(await charges.gql(HOLD, { id: reservationId })).node.status).toBe('ACTIVE');
    await expectLedgerInvariant(charges.services.pool, dbId(accountId));
  }

  it('a second 9e12-credit capture against a 1-credit hold (its consumed and the debt would pass the limit) is BAD_USER_INPUT, not an internal error', async () => {
    const accountId = await apiAccount(charges, { paid: '10' });
    const reservationId = await hold(accountId, '1');
    const first = ok(await charges.gql(RECORD, { input: capture(accountId, reservationId, '9000000000000') })).recordUsage;
    expect(first).toMatchObject({ cost: '9000000000000', debt: '8999999999990' });
    await expectRefusedEverywhere(accountId, reservationId, '9000000000000');
    // What fits is still accepted.
    ok(await charges.gql(RECORD, { input: capture(accountId, reservationId, '1') }));
    expect((await readAccount(charges, accountId)).balance.debt).toBe('8999999999991');
  });

  it("the debt alone: a capture that its hold's consumed can take but the account's debt cannot is refused", async () => {
    const accountId = await apiAccount(charges, { paid: '3' });
    const [a, b] = [await hold(accountId, '1'), await hold(accountId, '1')];
    // MAX credits of voice (1 credit per minute: MAX x 60 seconds), so that the usage rollups of the
    // refused charges' category start from 0.
    const voice = { ...capture(accountId, a, '0'), category: 'voice', quantities: { seconds: '553402322211286.54842' } };
    expect(ok(await charges.gql(RECORD, { input: voice })).recordUsage.cost).toBe(MAX);
    expect((await readAccount(charges, accountId)).balance.debt).toBe('9223372036852.775807'); // MAX - 2: the hold and the one free credit
    await expectRefusedEverywhere(accountId, b, '4'); // debt + 3 > MAX; b's consumed would be 4
    ok(await charges.gql(RECORD, { input: capture(accountId, b, '3') })); // debt reaches MAX exactly
    expect((await readAccount(charges, accountId)).balance.debt).toBe(MAX);
  });

  it("the hold's consumed alone: a capture the account's debt can take but its hold's consumed cannot is refused", async () => {
    const accountId = await apiAccount(charges, { paid: MAX });
    const reservationId = await hold(accountId, '1');
    ok(await charges.gql(RECORD, { input: capture(accountId, reservationId, MAX) })); // drawn from the hold and the credit: no debt
    expect(ok(await charges.gql(HOLD, { id: reservationId })).node.consumed).toBe(MAX);
    await expectRefusedEverywhere(accountId, reservationId, '0.000001'); // consumed + 1 micro-credit > MAX; the debt would be 1 micro-credit
  });

  it("sums kept only for reports and budgets (usage rollups, an agent's spending) may pass the limit: captures within the account's figures are accepted and reported exactly", async () => {
    // One instant of the server's clock for the charges and the reads: usageHistory(months: 1) is
    // the UTC calendar month of the server's now, which the charges could leave at a month end.
    const at = new Date();
    charges.services.setNow(at);
    try {
      const accountId = await apiAccount(charges, { paid: '3' });
      ok(await charges.gql(`mutation($a: ID!) { setAgentBudget(accountId: $a, agentId: "big", limit: "10") { limit } }`, { a: accountId }));
      // The agent's first charge of the period starts its kept spending (1 credit).
      ok(await charges.gql(RECORD, { input: { accountId, idempotencyKey: uniq('u'), category: 'unit', agentId: 'big' } }));
      const [a, b] = [await hold(accountId, '1', 'big'), await hold(accountId, '1', 'big')];
      // Captures are not checked against the budget of their hold's agent; the debt (MAX - 1) and each hold's consumed fit.
      ok(await charges.gql(RECORD, { input: { ...capture(accountId, a, MAX), agentId: 'big' } }));
      ok(await charges.gql(RECORD, { input: { ...capture(accountId, b, '1'), agentId: 'big' } }));
      const hour = Math.floor(at.getTime() / 3_600_000) * 3_600_000;
      const read = ok(
        await charges.gql(
          `query($id: ID!, $from: DateTime!, $to: DateTime!) { account(id: $id) {
             balance { debt } budgets { agentId spent }
             usageSummary(from: $from, to: $to, groupBy: [CATEGORY]) { category credits events }
             usageHistory(months: 1) { total byCategory { category credits } } } }`,
          // Whole hours around now: read from the hourly rollup.
          { id: accountId, from: new Date(hour - 3_600_000).toISOString(), to: new Date(hour + 2 * 3_600_000).toISOString() },
        ),
      ).account;
      expect(read.balance.debt).toBe('9223372036853.775807');
      expect(read.budgets).toEqual([{ agentId: 'big', spent: '9223372036856.775807' }]); // 1 + MAX + 1
      expect(read.usageSummary).toEqual([
        { category: 'units', credits: '9223372036855.775807', events: 2 },
        { category: 'unit', credits: '1', events: 1 },
      ]);
      expect(read.usageHistory[0].total).toBe('9223372036856.775807');
      // The agent is over its budget: a charge without a hold is refused as such (the budget is checked before the credit).
      expectError(await charges.gql(RECORD, { input: { accountId, idempotencyKey: uniq('u'), category: 'unit', agentId: 'big' } }), 'BUDGET_EXCEEDED');
      await expectLedgerInvariant(charges.services.pool, dbId(accountId), at);
    } finally {
      charges.services.setNow(null);
    }
  });
});
