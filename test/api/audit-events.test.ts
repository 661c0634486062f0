/**
 * The audit trail (README "Audit trail") over HTTP against a real server and PostgreSQL:
 * - every operator mutation writes exactly one `audit_events` row, in its own request (found by
 *   the request's x-request-id), naming the credential that made it: a created API key (its id
 *   and name) or the ADMIN_API_KEY bootstrap key (`admin_env`), with the action and account;
 * - a replayed idempotent grant, a repeated void and a refused mutation (bad input) write none;
 * - the API key CLI functions record `api_key.created` / `api_key.revoked` with their actor;
 * - rows cannot be updated or deleted (append-only trigger);
 * - `auditEvents` serves them newest first, by account, page by page, to a service key with
 *   admin or read only: an end user, a write-only key are FORBIDDEN, no credential UNAUTHENTICATED.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { TEST_PRICE_BOOK } from '../setup/test-price-book.js';
import { createApiKey, revokeApiKey } from '../../src/auth/api-keys.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { cliActor } from '../../src/audit/audit-log.js';
import { apiAccount, dbId, expectError, grant, ok, uniq, type GqlResponse } from './helpers.js';

let srv: TestServer;
let keyId: string;
let keyName: string;
let keyToken: string;

beforeAll(async () => {
  srv = await startTestServer();
  keyName = uniq('audit-operator');
  const key = await createApiKey(srv.services.pool, { name: keyName, scopes: ['admin'] });
  keyId = key.id;
  keyToken = key.token;
});

afterAll(async () => {
  await srv?.close();
});

interface AuditRow {
  actor_kind: string;
  actor_key_id: string | null;
  actor_name: string;
  action: string;
  account_id: string | null;
  subject_type: string | null;
  subject_id: string | null;
  request_id: string | null;
  details: Record<string, unknown>;
}

/** POSTs one operation with its own x-request-id; returns the answer and that id. */
async function call(query: string, variables: Record<string, unknown>, token: string | null = keyToken): Promise<GqlResponse & { requestId: string }> {
  const requestId = randomUUID();
  const res = await fetch(srv.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-request-id': requestId, ...(token === null ? {} : { authorization: `Bearer ${token}` }) },
    body: JSON.stringify({ query, variables }),
  });
  return { status: res.status, body: (await res.json()) as GqlResponse['body'], requestId };
}

/** The audit rows one request wrote. */
async function rowsOf(requestId: string): Promise<AuditRow[]> {
  const { rows } = await srv.services.pool.query('SELECT * FROM audit_events WHERE request_id = $1 ORDER BY seq', [requestId]);
  return rows as AuditRow[];
}

/**
 * Runs a mutation with `token` (default: the created key), asserts it succeeded and wrote exactly
 * one row of `action`, naming that credential and the account `accountGlobalId` (null: none).
 */
async function audited(action: string, query: string, variables: Record<string, unknown>, accountGlobalId: string | null | undefined, token = keyToken) {
  const res = await call(query, variables, token);
  const data = ok(res);
  const rows = await rowsOf(res.requestId);
  expect(rows.map((r) => r.action)).toEqual([action]);
  const row = rows[0]!;
  if (token === keyToken) {
    expect(row).toMatchObject({ actor_kind: 'api_key', actor_key_id: keyId, actor_name: keyName });
  } else {
    expect(row).toMatchObject({ actor_kind: 'admin_env', actor_key_id: null, actor_name: 'bootstrap-admin' });
  }
  // undefined: checked by the caller (an account the mutation creates).
  if (accountGlobalId !== undefined) expect(row.account_id).toBe(accountGlobalId === null ? null : dbId(accountGlobalId));
  return { data, row };
}

const CREATE_ACCOUNT = `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id referralCode } }`;
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`;
const VOID = `mutation($id: ID!, $reason: String!) { voidGrant(grantId: $id, reason: $reason) { id } }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`;
const REFUND = `mutation($id: ID!, $reason: String!) { refundUsage(usageEventId: $id, reason: $reason) { id } }`;
const SETTINGS = `{ settings { alertThresholds } }`;
const UPDATE_SETTINGS = `mutation($input: SettingsInput!) { updateSettings(input: $input) { alertThresholds } }`;
const PUBLISH = `mutation($input: PriceBookInput!) { publishPriceBook(input: $input) { version } }`;
const CREATE_PROMO = `mutation($input: CreatePromoCodeInput!) { createPromoCode(input: $input) { code } }`;
const REDEEM_PROMO = `mutation($accountId: ID!, $code: String!) { redeemPromoCode(accountId: $accountId, code: $code) { id } }`;
const REDEEM_REFERRAL = `mutation($accountId: ID!, $code: String!) { redeemReferral(accountId: $accountId, code: $code) { id } }`;
const AGENT_BUDGET = `mutation($accountId: ID!, $agentId: String!, $limit: Credits) { setAgentBudget(accountId: $accountId, agentId: $agentId, limit: $limit) { limit } }`;
const USER_BUDGET = `mutation($accountId: ID!, $userId: String!, $limit: Credits) { setUserBudget(accountId: $accountId, userId: $userId, limit: $limit) { limit } }`;
const CREATE_PACK = `mutation($input: CreateCreditPackInput!) { createCreditPack(input: $input) { id } }`;
const ATTACH = `mutation($accountId: ID!, $reference: String!) { attachPaymentMethod(accountId: $accountId, reference: $reference) { provider } }`;
const PURCHASE = `mutation($accountId: ID!, $packId: ID!, $key: String!) { purchaseCreditPack(accountId: $accountId, packId: $packId, idempotencyKey: $key) { id } }`;
const AUTO_TOP_UP = `mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) { enabled } }`;
const CREATE_PLAN = `mutation($input: CreatePlanInput!) { createPlan(input: $input) { id } }`;
const SUBSCRIBE = `mutation($accountId: ID!, $planId: ID!) { subscribeToPlan(accountId: $accountId, planId: $planId) { active } }`;
const CANCEL = `mutation($accountId: ID!) { cancelSubscription(accountId: $accountId) { active } }`;
const ADVANCE = `mutation($accountId: ID!, $to: DateTime!) { advanceTestClock(accountId: $accountId, to: $to) { id } }`;
const AUDIT = `query($accountId: ID, $first: Int, $after: String) { auditEvents(accountId: $accountId, first: $first, after: $after) {
  edges { cursor node { id createdAt actorKind actorKeyId actorName action accountId subjectType subjectId requestId details } }
  pageInfo { hasNextPage endCursor }
} }`;

describe('each operator mutation writes exactly one audit row naming its credential', () => {
  it('accounts, grants, voids, refunds', async () => {
    const created = await audited('account.created', CREATE_ACCOUNT, { input: { externalId: uniq('acct'), name: 'Audited', kind: 'ORGANIZATION', welcomeBonus: false } }, undefined);
    const account = created.data.createAccount.id as string;
    expect(created.row).toMatchObject({ account_id: dbId(account), subject_type: 'account' });

    const input = { accountId: account, amount: '12.5', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('grant') };
    const granted = await audited('grant.created', GRANT, { input }, account);
    expect(granted.row.subject_id).toBe(dbId(granted.data.grantCredits.id));
    expect(granted.row.details).toMatchObject({ amount: '12.5', type: 'PAID', source: 'PURCHASE', idempotencyKey: input.idempotencyKey });

    // The same grant again is a replay: no second row.
    const replay = await call(GRANT, { input });
    expect(ok(replay).grantCredits.id).toBe(granted.data.grantCredits.id);
    expect(await rowsOf(replay.requestId)).toEqual([]);

    const voided = await audited('grant.voided', VOID, { id: granted.data.grantCredits.id, reason: 'mistake' }, account);
    expect(voided.row.details).toEqual({ reason: 'mistake', voidedAmount: '12.5' });
    // Voiding a voided grant changes nothing: no row.
    const again = await call(VOID, { id: granted.data.grantCredits.id, reason: 'mistake' });
    ok(again);
    expect(await rowsOf(again.requestId)).toEqual([]);

    await grant(srv, account, '10', 'PAID');
    const used = ok(await call(RECORD, { input: { accountId: account, idempotencyKey: uniq('use'), category: 'unit' } })).recordUsage.id as string;
    const refunded = await audited('usage.refunded', REFUND, { id: used, reason: 'bad answer' }, account);
    expect(refunded.row.details).toEqual({ reason: 'bad answer', cost: '1', givenBack: '1' });
  });

  it('metering writes no audit row', async () => {
    const account = await apiAccount(srv);
    // Control: the grant's request has its row, so the lookup by request id finds rows.
    await audited('grant.created', GRANT, { input: { accountId: account, amount: '5', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('grant') } }, account);
    const res = await call(RECORD, { input: { accountId: account, idempotencyKey: uniq('use'), category: 'unit' } });
    ok(res);
    expect(await rowsOf(res.requestId)).toEqual([]);
  });

  it('configuration: price book, settings, promo codes, packs, plans (the admin env key too)', async () => {
    const published = await audited('price_book.published', PUBLISH, { input: TEST_PRICE_BOOK }, null, srv.adminKey);
    expect(published.row.subject_id).toBe(String(published.data.publishPriceBook.version));

    // The thresholds in force, set again: changes nothing other tests see, and is still recorded.
    const current = ok(await srv.gql(SETTINGS)).settings.alertThresholds as number[];
    const settings = await audited('settings.updated', UPDATE_SETTINGS, { input: { alertThresholds: current } }, null);
    expect(settings.row.details).toEqual({ alertThresholds: current });

    const code = uniq('PROMO').replace(/-/g, '').slice(0, 20).toUpperCase();
    const promo = await audited('promo_code.created', CREATE_PROMO, { input: { code, credits: '3' } }, null, srv.adminKey);
    expect(promo.row.details).toMatchObject({ code, credits: '3' });

    await audited('credit_pack.created', CREATE_PACK, { input: { name: uniq('pack'), credits: '100', priceUsd: '9.99' } }, null);
    await audited('plan.created', CREATE_PLAN, { input: { name: uniq('plan'), monthlyCredits: '50', rollover: 'RESET', priceUsd: '5' } }, null);
  });

  it('per account: promo and referral redemptions, budgets, payment method, purchase, auto top-up, plans, test clock', async () => {
    const code = uniq('P').replace(/-/g, '').slice(0, 20).toUpperCase();
    ok(await call(CREATE_PROMO, { input: { code, credits: '2' } }));
    const referrer = ok(await call(CREATE_ACCOUNT, { input: { externalId: uniq('ref'), name: 'Referrer', kind: 'ORGANIZATION', welcomeBonus: false } })).createAccount;
    const account = await apiAccount(srv);
    await audited('promo_code.redeemed', REDEEM_PROMO, { accountId: account, code }, account);
    await audited('referral.redeemed', REDEEM_REFERRAL, { accountId: account, code: referrer.referralCode }, account);

    const agent = await audited('budget.set', AGENT_BUDGET, { accountId: account, agentId: 'agent-7', limit: '4.25' }, account);
    expect(agent.row).toMatchObject({ subject_type: 'agent', subject_id: 'agent-7', details: { limit: '4.25' } });
    const removed = await audited('budget.set', AGENT_BUDGET, { accountId: account, agentId: 'agent-7', limit: null }, account, srv.adminKey);
    expect(removed.row.details).toEqual({ limit: null });
    await audited('budget.set', USER_BUDGET, { accountId: account, userId: 'user-1', limit: '1' }, account);

    const pack = ok(await call(CREATE_PACK, { input: { name: uniq('pack'), credits: '100', priceUsd: '9.99' } })).createCreditPack.id as string;
    const reference = `pm_ok_${randomUUID()}`;
    const attached = await audited('payment_method.attached', ATTACH, { accountId: account, reference }, account);
    expect(JSON.stringify(attached.row.details)).not.toContain(reference);
    const key = uniq('buy');
    await audited('credit_pack.purchased', PURCHASE, { accountId: account, packId: pack, key }, account);
    const rebuy = await call(PURCHASE, { accountId: account, packId: pack, key });
    ok(rebuy);
    expect(await rowsOf(rebuy.requestId)).toEqual([]);
    await audited('auto_top_up.updated', AUTO_TOP_UP, { input: { accountId: account, enabled: true, packId: pack, thresholdCredits: '1' } }, account);

    const plan = ok(await call(CREATE_PLAN, { input: { name: uniq('plan'), monthlyCredits: '50', rollover: 'RESET', priceUsd: '5' } })).createPlan.id as string;
    await audited('plan.subscribed', SUBSCRIBE, { accountId: account, planId: plan }, account);
    await audited('plan.cancelled', CANCEL, { accountId: account }, account);
    const cancelAgain = await call(CANCEL, { accountId: account });
    ok(cancelAgain);
    expect(await rowsOf(cancelAgain.requestId)).toEqual([]);

    const start = new Date('2030-01-01T00:00:00.000Z');
    const testAccount = ok(
      await call(CREATE_ACCOUNT, { input: { externalId: uniq('clock'), name: 'Clocked', kind: 'USER', welcomeBonus: false, testMode: true, testClockStart: start.toISOString() } }),
    ).createAccount.id as string;
    const advanced = await audited('test_clock.advanced', ADVANCE, { accountId: testAccount, to: '2030-02-15T00:00:00.000Z' }, testAccount);
    expect(advanced.row.details).toEqual({ from: start.toISOString(), to: '2030-02-15T00:00:00.000Z' });
  });

  it('a refused mutation (bad input) writes no row', async () => {
    const account = await apiAccount(srv);
    const refusals: Array<[string, Record<string, unknown>]> = [
      [GRANT, { input: { accountId: account, amount: '0', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('grant') } }],
      [GRANT, { input: { accountId: account, amount: '5', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('grant'), expiresAt: '2001-01-01T00:00:00Z' } }],
      [UPDATE_SETTINGS, { input: { alertThresholds: [101] } }],
      [AGENT_BUDGET, { accountId: account, agentId: 'a', limit: '-1' }],
      [CREATE_PLAN, { input: { name: uniq('plan'), monthlyCredits: '50', rollover: 'RESET', rolloverCapCredits: '5', priceUsd: '5' } }],
      [CREATE_ACCOUNT, { input: { externalId: ' ', name: 'x', kind: 'USER' } }],
    ];
    // Control: the same grant with a valid amount is recorded, so the refusals below are judged by a lookup that finds rows.
    await audited('grant.created', GRANT, { input: { accountId: account, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('grant') } }, account);
    for (const [query, variables] of refusals) {
      const res = await call(query, variables);
      expectError(res, 'BAD_USER_INPUT');
      expect(await rowsOf(res.requestId)).toEqual([]);
    }
  });
});

describe('API keys (CLI)', () => {
  it('creating and revoking a key records its actor, never the token', async () => {
    const actor = cliActor('apikey:create');
    const created = await createApiKey(srv.services.pool, { name: uniq('cli-key'), scopes: ['read'], actor });
    const revokedActor = cliActor('apikey:create --revoke');
    expect(await revokeApiKey(srv.services.pool, created.id, { actor: revokedActor })).toBe(true);
    expect(await revokeApiKey(srv.services.pool, created.id, { actor: revokedActor })).toBe(false);
    const { rows } = await srv.services.pool.query('SELECT * FROM audit_events WHERE subject_type = $1 AND subject_id = $2 ORDER BY seq', ['api_key', created.id]);
    expect(rows.map((r) => [r.action, r.actor_kind, r.actor_name])).toEqual([
      ['api_key.created', 'cli', actor.name],
      ['api_key.revoked', 'cli', revokedActor.name],
    ]);
    expect(JSON.stringify(rows)).not.toContain(created.token);
  });

  it('rows are append-only', async () => {
    const { rows } = await srv.services.pool.query('SELECT id FROM audit_events LIMIT 1');
    expect(rows).toHaveLength(1);
    await expect(srv.services.pool.query('UPDATE audit_events SET actor_name = $2 WHERE id = $1', [rows[0].id, 'someone else'])).rejects.toThrow(/append-only/);
    await expect(srv.services.pool.query('DELETE FROM audit_events WHERE id = $1', [rows[0].id])).rejects.toThrow(/append-only/);
  });
});

describe('auditEvents', () => {
  it('serves an account\'s rows newest first, page by page, to admin and read keys', async () => {
    const account = await apiAccount(srv);
    const g1 = await grant(srv, account, '1', 'FREE');
    const g2 = await grant(srv, account, '2', 'PAID');
    const reader = await createApiKey(srv.services.pool, { name: uniq('reader'), scopes: ['read'] });
    const all = ok(await call(AUDIT, { accountId: account }, reader.token)).auditEvents;
    expect(all.edges.map((e: any) => [e.node.action, e.node.subjectId])).toEqual([
      ['grant.created', dbId(g2)],
      ['grant.created', dbId(g1)],
      ['account.created', dbId(account)],
    ]);
    expect(all.edges[0].node).toMatchObject({ actorKind: 'ADMIN_ENV', actorKeyId: null, actorName: 'bootstrap-admin', accountId: account, details: { amount: '2' } });

    const first = ok(await call(AUDIT, { accountId: account, first: 2 }, srv.adminKey)).auditEvents;
    expect(first.edges).toHaveLength(2);
    expect(first.pageInfo.hasNextPage).toBe(true);
    const rest = ok(await call(AUDIT, { accountId: account, first: 2, after: first.pageInfo.endCursor }, srv.adminKey)).auditEvents;
    expect(rest.edges.map((e: any) => e.node.action)).toEqual(['account.created']);
    expect(rest.pageInfo.hasNextPage).toBe(false);
  });

  it('refuses end users, write-only keys and anonymous callers', async () => {
    const account = await apiAccount(srv, { kind: 'USER', externalId: uniq('user') });
    const ext = ok(await srv.gql(`query($id: ID!) { account(id: $id) { externalId } }`, { id: account })).account.externalId as string;
    const userToken = await signUserToken(srv.jwtSecret, { sub: ext, expiresInSeconds: 600 });
    expect(ok(await call(`{ viewer { accounts { id } } }`, {}, userToken)).viewer.accounts.map((a: any) => a.id)).toContain(account);
    const writer = await createApiKey(srv.services.pool, { name: uniq('writer'), scopes: ['credits:write', 'usage:write'] });
    for (const token of [userToken, writer.token]) {
      const res = await call(AUDIT, { accountId: account }, token);
      expectError(res, 'FORBIDDEN');
      expect(res.body.data?.auditEvents ?? null).toBeNull();
    }
    expectError(await call(AUDIT, { accountId: account }, null), 'UNAUTHENTICATED');
  });

  it('refuses a cursor that is not one of its own', async () => {
    const page = ok(await call(AUDIT, { first: 1 }, srv.adminKey)).auditEvents;
    expect(page.edges).toHaveLength(1);
    ok(await call(AUDIT, { first: 1, after: page.pageInfo.endCursor }, srv.adminKey));
    const refused = expectError(await call(AUDIT, { first: 1, after: 'bm90IGEgY3Vyc29y' }, srv.adminKey), 'BAD_USER_INPUT');
    expect(refused.message).toMatch(/cursor/);
  });
});
