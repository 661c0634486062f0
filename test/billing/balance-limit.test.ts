/**
 * The 64-bit limit of credit figures (MAX_ABS_MICRO_CREDITS, 9223372036854.775807 credits): each
 * Credits value is capped by the scalar, and sums are capped by the services. A grant that would
 * take the account's total, or the credit granted in its billing period, past the limit is
 * BAD_USER_INPUT (reason BALANCE_LIMIT) and writes nothing: grantCredits, redeemPromoCode, a pack
 * purchase (refused BEFORE the card is charged: no payment row, no charge) and an auto top-up
 * (SKIPPED, nothing charged); createCreditPack refuses credits + bonusCredits past the limit.
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
import type { TestServer } from '../setup/test-server.js';
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
