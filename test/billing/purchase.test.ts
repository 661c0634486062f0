/**
 * Credit packs, payment methods and purchases over the API (issue #4), against the real
 * PostgreSQL with the payment simulator as the provider: createCreditPack (admin) and creditPacks;
 * attachPaymentMethod (masked); purchaseCreditPack grants ONE PAID batch of credits + bonus
 * (source PURCHASE, expiring when the pack says so), is idempotent on its key (replays and
 * concurrent duplicates charge once), answers PAYMENT_FAILED for a decline or a payment that
 * needs the customer (nothing granted), UNAVAILABLE for a provider timeout (a retry with the same
 * key never charges twice), IDEMPOTENCY_CONFLICT for another pack under the same key, and
 * BAD_USER_INPUT without a payment method (nothing recorded).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createApiKey } from '../../src/auth/api-keys.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import type { PaymentSimulator } from '../../src/payments/simulator.js';
import { apiAccount, dbId, expectError, expectUnchanged, gid, ok, readAccount, uniq } from '../api/helpers.js';
import { PACK_FIELDS, attachMethod, billingCounts, createPack, startBillingServer, type BillingServer } from './billing-helpers.js';

const DAY_MS = 86_400_000;
const GRANT_FIELDS = 'id amount type source reference createdAt batch { allocated remaining type source expiresAt }';
const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { ${GRANT_FIELDS} } }`;
const PACKS = `{ creditPacks { ${PACK_FIELDS} } }`;
const CREATE_PACK = `mutation($input: CreateCreditPackInput!) { createCreditPack(input: $input) { ${PACK_FIELDS} } }`;
const ATTACH = `mutation($accountId: ID!, $reference: String!) { attachPaymentMethod(accountId: $accountId, reference: $reference) { provider reference attachedAt } }`;
const METHOD = `query($id: ID!) { account(id: $id) { paymentMethod { provider reference attachedAt } } }`;

let billing: BillingServer;
let srv: TestServer;
let simulator: PaymentSimulator;
let creditsWriteKey: string;
let readKey: string;

beforeAll(async () => {
  billing = await startBillingServer();
  ({ srv, simulator } = billing);
  creditsWriteKey = (await createApiKey(srv.services.pool, { name: 'billing-credits', scopes: ['credits:write'] })).token;
  readKey = (await createApiKey(srv.services.pool, { name: 'billing-read', scopes: ['read'] })).token;
});

afterAll(async () => {
  await billing?.close();
});

/** An account with a payment method; returns its id and the method's reference. */
async function buyer(reference = `pm_ok_${randomUUID()}`): Promise<{ accountId: string; reference: string }> {
  const accountId = await apiAccount(srv);
  await attachMethod(srv, accountId, reference);
  return { accountId, reference };
}

function purchase(accountId: string, packId: string, key: string, token?: string) {
  return srv.gql(PURCHASE, { accountId, packId, key }, token);
}

describe('credit packs', () => {
  it('an admin creates a pack; creditPacks lists it with its exact terms', async () => {
    const pack = await createPack(srv, { credits: '1000', bonusCredits: '100', priceUsd: '9.99', expiresAfterDays: 30 });
    expect(pack).toMatchObject({ credits: '1000', bonusCredits: '100', priceUsd: '9.99', expiresAfterDays: 30 });
    expect(dbId(pack.id)).toMatch(/^[0-9a-f-]{36}$/);
    const plain = await createPack(srv, { credits: '50', priceUsd: '0.5' });
    expect(plain).toMatchObject({ bonusCredits: '0', priceUsd: '0.5', expiresAfterDays: null });
    const listed = ok(await srv.gql(PACKS)).creditPacks;
    expect(listed).toContainEqual(pack);
    expect(listed).toContainEqual(plain);
  });

  it('creating the same name again returns the pack; other terms are IDEMPOTENCY_CONFLICT', async () => {
    const name = uniq('pack');
    const pack = await createPack(srv, { name, credits: '10', priceUsd: '1' });
    expect(await createPack(srv, { name, credits: '10', priceUsd: '1.00' })).toEqual(pack);
    expectError(await srv.gql(CREATE_PACK, { input: { name, credits: '11', priceUsd: '1' } }), 'IDEMPOTENCY_CONFLICT');
  });

  it('refuses bad terms with BAD_USER_INPUT and creates nothing', async () => {
    const bad = [
      { credits: '0', priceUsd: '1' },
      { credits: '10', priceUsd: '9.999' },
      { credits: '10', priceUsd: '0' },
      { credits: '10', bonusCredits: '-1', priceUsd: '1' },
      { credits: '10', priceUsd: '1', expiresAfterDays: 0 },
      { credits: '10', priceUsd: '1000000' },
    ];
    for (const input of bad) {
      const name = uniq('bad-pack');
      expectError(await srv.gql(CREATE_PACK, { input: { name, ...input } }), 'BAD_USER_INPUT');
      const { rows } = await srv.services.pool.query('SELECT count(*)::int AS n FROM credit_packs WHERE name = $1', [name]);
      expect(rows[0].n).toBe(0);
    }
  });

  it('only an admin creates packs (credits:write is FORBIDDEN)', async () => {
    expectError(await srv.gql(CREATE_PACK, { input: { name: uniq('pack'), credits: '1', priceUsd: '1' } }, creditsWriteKey), 'FORBIDDEN');
  });
});

describe('attachPaymentMethod', () => {
  it('saves the reference; the account shows it masked, with the provider', async () => {
    const accountId = await apiAccount(srv);
    const saved = ok(await srv.gql(ATTACH, { accountId, reference: 'pm_card_visa_4242' }, creditsWriteKey)).attachPaymentMethod;
    expect(saved).toMatchObject({ provider: 'simulator', reference: 'pm_…4242' });
    expect(ok(await srv.gql(METHOD, { id: accountId })).account.paymentMethod).toEqual(saved);
    const replaced = ok(await srv.gql(ATTACH, { accountId, reference: 'cus_1/pm_card_mc_4444' })).attachPaymentMethod;
    expect(replaced.reference).toBe('cus_…4444');
  });

  it('refuses a malformed reference (BAD_USER_INPUT) and an unknown account (NOT_FOUND)', async () => {
    const accountId = await apiAccount(srv);
    expectError(await srv.gql(ATTACH, { accountId, reference: 'pm bad ref' }), 'BAD_USER_INPUT');
    expectError(await srv.gql(ATTACH, { accountId, reference: '' }), 'BAD_USER_INPUT');
    expect(ok(await srv.gql(METHOD, { id: accountId })).account.paymentMethod).toBeNull();
    expectError(await srv.gql(ATTACH, { accountId: gid('Account', randomUUID()), reference: 'pm_x' }), 'NOT_FOUND');
  });
});

describe('purchaseCreditPack', () => {
  it('charges once and grants credits + bonus as ONE PAID batch (source PURCHASE) expiring after the pack days', async () => {
    const pack = await createPack(srv, { credits: '1000', bonusCredits: '100', priceUsd: '9.99', expiresAfterDays: 30 });
    const { accountId, reference } = await buyer();
    // A credits:write key gets the grant it bought; its batch (whose remaining credit follows the
    // account's spending) is account data, read here with a read key.
    const bought = ok(await srv.gql(PURCHASE.replace(/ batch \{[^}]*\}/, ''), { accountId, packId: pack.id, key: uniq('buy') }, creditsWriteKey)).purchaseCreditPack;
    expectError(await srv.gql(PURCHASE, { accountId, packId: pack.id, key: uniq('buy') }, creditsWriteKey), 'FORBIDDEN');
    const g = ok(await srv.gql(`query($id: ID!) { node(id: $id) { ... on CreditGrant { ${GRANT_FIELDS} } } }`, { id: bought.id }, readKey)).node;
    expect(g).toMatchObject(bought);
    expect(g).toMatchObject({ amount: '1100', type: 'PAID', source: 'PURCHASE', batch: { allocated: '1100', remaining: '1100', type: 'PAID', source: 'PURCHASE' } });
    expect(Date.parse(g.batch.expiresAt) - Date.parse(g.createdAt)).toBe(30 * DAY_MS);
    expect(simulator.chargeCount(reference)).toBe(1);
    const { rows } = await srv.services.pool.query('SELECT status, amount_usd::text, provider_ref, grant_id FROM payments WHERE account_id = $1', [dbId(accountId)]);
    expect(rows).toEqual([{ status: 'SUCCEEDED', amount_usd: '9.990000', provider_ref: expect.stringMatching(/^sim_pi_/), grant_id: dbId(g.id) }]);
    expect(g.reference).toBe((await srv.services.pool.query('SELECT id FROM payments WHERE account_id = $1', [dbId(accountId)])).rows[0].id);
    const a = await readAccount(srv, accountId);
    expect(a.balance).toMatchObject({ paid: '1100', free: '0', available: '1100' });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a pack without expiresAfterDays grants credit that never expires', async () => {
    const pack = await createPack(srv, { credits: '20', priceUsd: '2' });
    const { accountId } = await buyer();
    const g = ok(await purchase(accountId, pack.id, uniq('buy'))).purchaseCreditPack;
    expect(g).toMatchObject({ amount: '20', batch: { expiresAt: null } });
  });

  it('a replay with the same key returns the same grant and charges nothing more', async () => {
    const pack = await createPack(srv, { credits: '100', bonusCredits: '5', priceUsd: '1.5' });
    const { accountId, reference } = await buyer();
    const key = uniq('buy');
    const first = ok(await purchase(accountId, pack.id, key)).purchaseCreditPack;
    const again = await expectUnchanged(srv, [accountId], () => purchase(accountId, pack.id, key));
    expect(ok(again).purchaseCreditPack).toEqual(first);
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, pack_grants: 1 });
  });

  it('the same key sent 10 times at once charges once and grants once', async () => {
    const pack = await createPack(srv, { credits: '10', priceUsd: '1' });
    const { accountId, reference } = await buyer();
    const key = uniq('buy');
    const results = await Promise.all(Array.from({ length: 10 }, () => purchase(accountId, pack.id, key)));
    const ids = new Set(results.map((r) => ok(r).purchaseCreditPack.id));
    expect(ids.size).toBe(1);
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, pack_grants: 1 });
    expect((await readAccount(srv, accountId)).balance.paid).toBe('10');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a declined card is PAYMENT_FAILED (reason card_declined), grants nothing, and its replay answers the same without charging', async () => {
    const pack = await createPack(srv, { credits: '10', priceUsd: '1' });
    const { accountId, reference } = await buyer(`pm_decline_${randomUUID()}`);
    const key = uniq('buy');
    const res = await expectUnchanged(srv, [accountId], () => purchase(accountId, pack.id, key));
    const error = expectError(res, 'PAYMENT_FAILED');
    expect(error.extensions?.reason).toBe('card_declined');
    expect(error.message).toMatch(/declined/);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, failed: 1, pack_grants: 0 });
    expectError(await expectUnchanged(srv, [accountId], () => purchase(accountId, pack.id, key)), 'PAYMENT_FAILED');
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, failed: 1, pack_grants: 0 });
    expect(simulator.chargeCount(reference)).toBe(0);
  });

  it('a payment that needs the customer (3-D Secure) is PAYMENT_FAILED with reason requires_action', async () => {
    const pack = await createPack(srv, { credits: '10', priceUsd: '1' });
    const { accountId } = await buyer(`pm_requires_action_${randomUUID()}`);
    const error = expectError(await expectUnchanged(srv, [accountId], () => purchase(accountId, pack.id, uniq('buy'))), 'PAYMENT_FAILED');
    expect(error.extensions?.reason).toBe('requires_action');
    expect(error.message).toMatch(/customer/);
    expect(await billingCounts(srv, accountId)).toMatchObject({ failed: 1, pack_grants: 0 });
  });

  it('a timeout after the charge happened is UNAVAILABLE; the retry with the same key grants once and never charges again', async () => {
    const pack = await createPack(srv, { credits: '30', priceUsd: '3' });
    const { accountId, reference } = await buyer();
    simulator.script(reference, ['timeout_after_charge']);
    const key = uniq('buy');
    expectError(await expectUnchanged(srv, [accountId], () => purchase(accountId, pack.id, key)), 'UNAVAILABLE');
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 0, failed: 0, pack_grants: 0 });
    const g = ok(await purchase(accountId, pack.id, key)).purchaseCreditPack;
    expect(g.amount).toBe('30');
    expect(ok(await purchase(accountId, pack.id, key)).purchaseCreditPack.id).toBe(g.id);
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, pack_grants: 1 });
    expect((await readAccount(srv, accountId)).balance.paid).toBe('30');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('a timeout before anything was charged: the retry charges exactly once', async () => {
    const pack = await createPack(srv, { credits: '30', priceUsd: '3' });
    const { accountId, reference } = await buyer();
    simulator.script(reference, ['timeout']);
    const key = uniq('buy');
    expectError(await purchase(accountId, pack.id, key), 'UNAVAILABLE');
    expect(simulator.chargeCount(reference)).toBe(0);
    ok(await purchase(accountId, pack.id, key));
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, succeeded: 1, pack_grants: 1 });
  });

  it('the same key for another pack is IDEMPOTENCY_CONFLICT and changes nothing', async () => {
    const packA = await createPack(srv, { credits: '10', priceUsd: '1' });
    const packB = await createPack(srv, { credits: '20', priceUsd: '2' });
    const { accountId, reference } = await buyer();
    const key = uniq('buy');
    ok(await purchase(accountId, packA.id, key));
    expectError(await expectUnchanged(srv, [accountId], () => purchase(accountId, packB.id, key)), 'IDEMPOTENCY_CONFLICT');
    expect(simulator.chargeCount(reference)).toBe(1);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 1, pack_grants: 1 });
  });

  it('without a payment method it is BAD_USER_INPUT (reason NO_PAYMENT_METHOD) and nothing is recorded', async () => {
    const pack = await createPack(srv, { credits: '10', priceUsd: '1' });
    const accountId = await apiAccount(srv);
    const error = expectError(await expectUnchanged(srv, [accountId], () => purchase(accountId, pack.id, uniq('buy'))), 'BAD_USER_INPUT');
    expect(error.extensions?.reason).toBe('NO_PAYMENT_METHOD');
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 0, pack_grants: 0 });
  });

  it('an unknown pack or account is NOT_FOUND; a read-only key is FORBIDDEN; nothing is charged', async () => {
    const pack = await createPack(srv, { credits: '10', priceUsd: '1' });
    const { accountId, reference } = await buyer();
    expectError(await purchase(accountId, gid('CreditPack', randomUUID()), uniq('buy')), 'NOT_FOUND');
    expectError(await purchase(accountId, accountId, uniq('buy')), 'NOT_FOUND');
    expectError(await purchase(gid('Account', randomUUID()), pack.id, uniq('buy')), 'NOT_FOUND');
    expectError(await purchase(accountId, pack.id, uniq('buy'), readKey), 'FORBIDDEN');
    expect(simulator.chargeCount(reference)).toBe(0);
    expect(await billingCounts(srv, accountId)).toMatchObject({ payments: 0 });
  });
});
