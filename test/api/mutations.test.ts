/**
 * Every delivered mutation over HTTP against the real server and PostgreSQL: the success shape,
 * the replay/conflict rules, the failure codes, and that a failure changes nothing. After each
 * money-moving scenario the account's ledger invariant is checked (API reconciliation and the
 * database-level expectLedgerInvariant).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { TEST_PRICE_BOOK } from '../setup/test-price-book.js';
import type { PriceRuleInput } from '../../src/pricing/price-book.js';
import { apiAccount, dbId, expectConsistent, expectError, expectUnchanged, grant, ok, readAccount, snapshot, uniq } from './helpers.js';

const DAY_MS = 86_400_000;

const EVENT = `id idempotencyKey category sku model cost debt refunded priceBookVersion
  lines { item quantity unitPrice amount exactAmount }
  drawdowns { amount batch { id type } }
  reservation { id }
  account { id }`;
const RESERVATION = `id accountId amount consumed status expiresAt createdAt`;

const CREATE = `mutation($input: CreateAccountInput!) { createAccount(input: $input) {
  id externalId name kind createdAt
  batches { id type source allocated remaining status expiresAt }
  grants(first: 10) { edges { node { id amount type source } } }
  balance { total available free paid reserved debt version }
} }`;
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) {
  id amount type source reference createdAt voidedAt voidReason
  batch { id allocated remaining status type source expiresAt }
} }`;
const VOID = `mutation($id: ID!, $reason: String!) { voidGrant(grantId: $id, reason: $reason) {
  id amount voidedAt voidReason batch { id status remaining allocated }
} }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { ${EVENT} } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode errorMessage event { ${EVENT} } } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { ${RESERVATION} } }`;
const SETTLE = `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { ${RESERVATION} } }`;
const RELEASE = `mutation($id: ID!) { releaseReservation(reservationId: $id) { ${RESERVATION} } }`;
const EXTEND = `mutation($id: ID!, $ttl: Int!) { extendReservation(reservationId: $id, ttlSeconds: $ttl) { ${RESERVATION} } }`;
const REFUND = `mutation($id: ID!, $reason: String!) { refundUsage(usageEventId: $id, reason: $reason) { ${EVENT} } }`;
const PUBLISH = `mutation($input: PriceBookInput!) { publishPriceBook(input: $input) {
  version name byokFeePercent publishedAt rules { category model tier sku kind credits unit markupPercent fallbackCredits }
} }`;
const PRICE_BOOK = `{ priceBook { version name rules { category model tier sku kind credits unit markupPercent fallbackCredits } } }`;
const SETTINGS_FIELDS = `creditUsdValue welcomeBonusCredits welcomeBonusExpiresAfterDays referralRewardCredits referralMaxRewardsPerAccount alertThresholds`;
const UPDATE_SETTINGS = `mutation($input: SettingsInput!) { updateSettings(input: $input) { ${SETTINGS_FIELDS} } }`;
const LEDGER = `query($id: ID!) { account(id: $id) { ledger(first: 50) { edges { node {
  type amount balanceAfter note batch { id } usageEvent { id } reservation { id }
} } } } }`;

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer();
});

afterAll(async () => {
  await srv?.close();
});

/** Newest-first ledger entries of an account. */
async function ledger(accountId: string): Promise<any[]> {
  const data = ok(await srv.gql(LEDGER, { id: accountId }));
  return data.account.ledger.edges.map((e: any) => e.node);
}

async function bothInvariants(accountId: string) {
  await expectConsistent(srv, accountId);
  await expectLedgerInvariant(srv.services.pool, dbId(accountId));
}

function usage(accountId: string, extra: Record<string, unknown> = {}) {
  return { accountId, idempotencyKey: uniq('use'), category: 'unit', ...extra };
}

async function record(accountId: string, extra: Record<string, unknown> = {}) {
  return ok(await srv.gql(RECORD, { input: usage(accountId, extra) })).recordUsage;
}

async function reserve(accountId: string, amount: string, extra: Record<string, unknown> = {}) {
  return ok(await srv.gql(RESERVE, { input: { accountId, amount, idempotencyKey: uniq('hold'), ...extra } })).reserveCredits;
}

async function currentBookVersion(): Promise<number> {
  return ok(await srv.gql(PRICE_BOOK)).priceBook.version;
}

describe('createAccount', () => {
  it('opens the account with the welcome bonus as FREE credit expiring 30 days after creation', async () => {
    const externalId = uniq('welcome');
    const a = ok(await srv.gql(CREATE, { input: { externalId, name: 'Acme', kind: 'ORGANIZATION' } })).createAccount;
    expect(a).toMatchObject({ externalId, name: 'Acme', kind: 'ORGANIZATION' });
    expect(a.batches).toHaveLength(1);
    const bonus = a.batches[0];
    expect(bonus).toMatchObject({ type: 'FREE', source: 'WELCOME_BONUS', allocated: '100', remaining: '100', status: 'ACTIVE' });
    expect(new Date(bonus.expiresAt).getTime() - new Date(a.createdAt).getTime()).toBe(30 * DAY_MS);
    expect(a.grants.edges.map((e: any) => e.node)).toEqual([expect.objectContaining({ amount: '100', type: 'FREE', source: 'WELCOME_BONUS' })]);
    expect(a.balance).toMatchObject({ total: '100', available: '100', free: '100', paid: '0', reserved: '0', debt: '0' });
    const entries = await ledger(a.id);
    expect(entries).toEqual([expect.objectContaining({ type: 'GRANT', amount: '100', balanceAfter: '100', batch: { id: bonus.id } })]);
    await bothInvariants(a.id);
  });

  it('without welcomeBonus opens an empty account', async () => {
    const a = ok(await srv.gql(CREATE, { input: { externalId: uniq('nobonus'), name: 'Empty', kind: 'USER', welcomeBonus: false } })).createAccount;
    expect(a.kind).toBe('USER');
    expect(a.batches).toEqual([]);
    expect(a.grants.edges).toEqual([]);
    expect(a.balance).toMatchObject({ total: '0', available: '0', free: '0', paid: '0' });
    await bothInvariants(a.id);
  });

  it('replaying the same externalId returns the same account and grants no second bonus', async () => {
    const input = { externalId: uniq('replay'), name: 'Replay Inc', kind: 'ORGANIZATION' };
    const first = ok(await srv.gql(CREATE, { input })).createAccount;
    const second = await expectUnchanged(srv, [first.id], async () => ok(await srv.gql(CREATE, { input })).createAccount);
    expect(second.id).toBe(first.id);
    expect(second.grants.edges).toHaveLength(1);
    expect(second.balance.free).toBe('100');
    await bothInvariants(first.id);
  });

  it('the same externalId with another name or kind is IDEMPOTENCY_CONFLICT and changes nothing', async () => {
    const input = { externalId: uniq('conflict'), name: 'Original', kind: 'ORGANIZATION' };
    const first = ok(await srv.gql(CREATE, { input })).createAccount;
    for (const changed of [{ name: 'Renamed' }, { kind: 'USER' }]) {
      const res = await expectUnchanged(srv, [first.id], () => srv.gql(CREATE, { input: { ...input, ...changed } }));
      expectError(res, 'IDEMPOTENCY_CONFLICT');
      expect(res.body.data ?? null).toBeNull();
    }
    const still = ok(await srv.gql(`query($e: String!) { accountByExternalId(externalId: $e) { id name kind } }`, { e: input.externalId }));
    expect(still.accountByExternalId).toEqual({ id: first.id, name: 'Original', kind: 'ORGANIZATION' });
  });

  it('the same externalId with another welcomeBonus, testMode or testClockStart is IDEMPOTENCY_CONFLICT and changes nothing', async () => {
    // README "Idempotency": the same key with different input is IDEMPOTENCY_CONFLICT; every
    // field of CreateAccountInput is part of the input (welcomeBonus defaults to true).
    const live = { externalId: uniq('conflict-live'), name: 'Live', kind: 'ORGANIZATION' };
    const first = ok(await srv.gql(CREATE, { input: live })).createAccount;
    expect(ok(await srv.gql(CREATE, { input: { ...live, welcomeBonus: true } })).createAccount.id).toBe(first.id);
    for (const changed of [{ welcomeBonus: false }, { testMode: true }]) {
      const res = await expectUnchanged(srv, [first.id], () => srv.gql(CREATE, { input: { ...live, ...changed } }));
      expectError(res, 'IDEMPOTENCY_CONFLICT');
    }

    const clocked = { externalId: uniq('conflict-clock'), name: 'Clocked', kind: 'USER', welcomeBonus: false, testMode: true, testClockStart: '2030-01-01T00:00:00.000Z' };
    const test = ok(await srv.gql(CREATE, { input: clocked })).createAccount;
    expect(test.createdAt).toBe('2030-01-01T00:00:00.000Z');
    const replay = await expectUnchanged(srv, [test.id], async () => ok(await srv.gql(CREATE, { input: clocked })).createAccount);
    expect(replay.id).toBe(test.id);
    const { testClockStart: _omitted, ...withoutStart } = clocked;
    for (const changed of [{ ...clocked, testClockStart: '2030-06-01T00:00:00.000Z' }, withoutStart, { ...clocked, welcomeBonus: true }]) {
      const res = await expectUnchanged(srv, [test.id], () => srv.gql(CREATE, { input: changed }));
      expectError(res, 'IDEMPOTENCY_CONFLICT');
      expect(res.body.data ?? null).toBeNull();
    }
    await bothInvariants(first.id);
    await bothInvariants(test.id);
  });

  it('an account opened before input fingerprints were kept replays on what its row holds', async () => {
    const input = { externalId: uniq('legacy'), name: 'Legacy', kind: 'USER', welcomeBonus: false, testMode: true, testClockStart: '2031-01-01T00:00:00.000Z' };
    const first = ok(await srv.gql(CREATE, { input })).createAccount;
    await srv.services.pool.query('UPDATE accounts SET request_hash = NULL WHERE id = $1', [dbId(first.id)]);
    expect(ok(await srv.gql(CREATE, { input })).createAccount.id).toBe(first.id);
    for (const changed of [{ name: 'Other' }, { testMode: false, testClockStart: null }, { testClockStart: '2031-02-01T00:00:00.000Z' }]) {
      const res = await expectUnchanged(srv, [first.id], () => srv.gql(CREATE, { input: { ...input, ...changed } }));
      expectError(res, 'IDEMPOTENCY_CONFLICT');
    }
  });
});

describe('grantCredits', () => {
  it("idempotency keys of the engine's own grants are reserved: BAD_USER_INPUT naming idempotencyKey, nothing granted; look-alikes are the client's", async () => {
    const acct = await apiAccount(srv);
    const reserved = ['welcome-bonus', 'welcome-bonus:x', 'promo:SPRING', 'referral:referee', 'referral:referrer:abc', 'plan-period:p:2030-01-01T00:00:00.000Z', 'payment:abc'];
    for (const idempotencyKey of reserved) {
      const res = await expectUnchanged(srv, [acct], () =>
        srv.gql(GRANT, { input: { accountId: acct, amount: '1', type: 'FREE', source: 'ADJUSTMENT', idempotencyKey } }),
      );
      const err = expectError(res, 'BAD_USER_INPUT');
      expect(err.extensions?.field).toBe('idempotencyKey');
      expect(err.message).toMatch(/reserved/);
    }
    // Other cases and spellings do not collide with the engine's keys (the unique key is exact).
    for (const idempotencyKey of ['Promo:SPRING', 'promo-SPRING', 'welcome-bonus-2', 'my-payment:abc']) {
      ok(await srv.gql(GRANT, { input: { accountId: acct, amount: '1', type: 'FREE', source: 'ADJUSTMENT', idempotencyKey } }));
    }
    expect((await readAccount(srv, acct)).balance.total).toBe('4');
    await bothInvariants(acct);
  });

  it('adds one batch with the granted credit and a GRANT ledger entry', async () => {
    const acct = await apiAccount(srv);
    const expiresAt = new Date(Date.now() + 10 * DAY_MS).toISOString();
    const paid = ok(
      await srv.gql(GRANT, { input: { accountId: acct, amount: '25.5', type: 'PAID', source: 'PURCHASE', reference: 'order-1', idempotencyKey: uniq('g') } }),
    ).grantCredits;
    expect(paid).toMatchObject({ amount: '25.5', type: 'PAID', source: 'PURCHASE', reference: 'order-1', voidedAt: null, voidReason: null });
    expect(paid.batch).toMatchObject({ allocated: '25.5', remaining: '25.5', status: 'ACTIVE', type: 'PAID', source: 'PURCHASE', expiresAt: null });
    const free = ok(
      await srv.gql(GRANT, { input: { accountId: acct, amount: 0.25, type: 'FREE', source: 'PROMO_CODE', expiresAt, idempotencyKey: uniq('g') } }),
    ).grantCredits;
    expect(free).toMatchObject({ amount: '0.25', type: 'FREE', source: 'PROMO_CODE', reference: null });
    expect(free.batch.expiresAt).toBe(expiresAt);
    const a = await readAccount(srv, acct);
    expect(a.balance).toMatchObject({ total: '25.75', available: '25.75', paid: '25.5', free: '0.25' });
    const entries = await ledger(acct);
    expect(entries.map((e) => [e.type, e.amount, e.balanceAfter, e.batch?.id])).toEqual([
      ['GRANT', '0.25', '25.75', free.batch.id],
      ['GRANT', '25.5', '25.5', paid.batch.id],
    ]);
    await bothInvariants(acct);
  });

  it('replaying the same idempotencyKey and input returns the first grant and grants nothing', async () => {
    const acct = await apiAccount(srv);
    const input = { accountId: acct, amount: '7', type: 'PAID', source: 'PURCHASE', reference: 'pay-7', idempotencyKey: uniq('g') };
    const first = ok(await srv.gql(GRANT, { input })).grantCredits;
    const again = await expectUnchanged(srv, [acct], async () => ok(await srv.gql(GRANT, { input })).grantCredits);
    expect(again.id).toBe(first.id);
    expect(again.batch.id).toBe(first.batch.id);
    expect((await readAccount(srv, acct)).balance.paid).toBe('7');
    await bothInvariants(acct);
  });

  it('the same idempotencyKey with a different input is IDEMPOTENCY_CONFLICT and changes nothing', async () => {
    const acct = await apiAccount(srv);
    const input = { accountId: acct, amount: '7', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') };
    ok(await srv.gql(GRANT, { input }));
    for (const changed of [{ amount: '8' }, { type: 'FREE' }, { source: 'ADJUSTMENT' }, { reference: 'other' }]) {
      const res = await expectUnchanged(srv, [acct], () => srv.gql(GRANT, { input: { ...input, ...changed } }));
      expectError(res, 'IDEMPOTENCY_CONFLICT');
    }
    expect((await readAccount(srv, acct)).balance.total).toBe('7');
  });
});

describe('voidGrant', () => {
  it("removes the batch's unused rest with a VOID entry; voiding again changes nothing", async () => {
    const acct = await apiAccount(srv, { paid: '5' });
    const freeGrant = ok(
      await srv.gql(GRANT, { input: { accountId: acct, amount: '10', type: 'FREE', source: 'PROMO_CODE', idempotencyKey: uniq('g') } }),
    ).grantCredits;
    await record(acct, { category: 'units', quantities: { units: '3' } }); // FREE first: 10 -> 7
    const voided = ok(await srv.gql(VOID, { id: freeGrant.id, reason: 'promo abuse' })).voidGrant;
    expect(voided).toMatchObject({ id: freeGrant.id, amount: '10', voidReason: 'promo abuse' });
    expect(Number.isNaN(Date.parse(voided.voidedAt))).toBe(false);
    expect(voided.batch).toMatchObject({ id: freeGrant.batch.id, status: 'VOIDED', remaining: '0', allocated: '10' });
    const a = await readAccount(srv, acct);
    expect(a.balance).toMatchObject({ free: '0', paid: '5', total: '5', available: '5' });
    expect((await ledger(acct))[0]).toMatchObject({ type: 'VOID', amount: '-7', balanceAfter: '5', note: 'promo abuse', batch: { id: freeGrant.batch.id } });
    const again = await expectUnchanged(srv, [acct], async () => ok(await srv.gql(VOID, { id: freeGrant.id, reason: 'second time' })).voidGrant);
    expect(again).toMatchObject({ id: freeGrant.id, voidReason: 'promo abuse', voidedAt: voided.voidedAt });
    await bothInvariants(acct);
  });

  it('an empty reason is BAD_USER_INPUT and changes nothing', async () => {
    const acct = await apiAccount(srv);
    const g = await grant(srv, acct, '3', 'PAID');
    const res = await expectUnchanged(srv, [acct], () => srv.gql(VOID, { id: g, reason: '  ' }));
    expectError(res, 'BAD_USER_INPUT');
  });
});

describe('recordUsage', () => {
  it('prices the event, draws FREE before PAID and records the price book version', async () => {
    const acct = await apiAccount(srv);
    const paidBatch = ok(await srv.gql(GRANT, { input: { accountId: acct, amount: '10', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } }))
      .grantCredits.batch.id;
    // The FREE batch is newer than the PAID one, yet it pays first.
    const freeBatch = ok(await srv.gql(GRANT, { input: { accountId: acct, amount: '2', type: 'FREE', source: 'PROMO_CODE', idempotencyKey: uniq('g') } }))
      .grantCredits.batch.id;
    const version = await currentBookVersion();
    const ev = await record(acct, { category: 'units', quantities: { units: '3' }, taskId: 'task-1' });
    expect(ev).toMatchObject({ category: 'units', cost: '3', debt: '0', refunded: false, priceBookVersion: version, reservation: null, account: { id: acct } });
    expect(ev.lines).toEqual([{ item: 'units', quantity: '3', unitPrice: '1', amount: '3', exactAmount: '3' }]);
    expect(ev.drawdowns).toEqual([
      { amount: '2', batch: { id: freeBatch, type: 'FREE' } },
      { amount: '1', batch: { id: paidBatch, type: 'PAID' } },
    ]);
    const a = await readAccount(srv, acct);
    expect(a.balance).toMatchObject({ free: '0', paid: '9', total: '9', available: '9' });
    expect((await ledger(acct))[0]).toMatchObject({ type: 'CONSUME', amount: '-3', balanceAfter: '9', usageEvent: { id: ev.id } });
    await bothInvariants(acct);
  });

  it('prices an LLM call per token with the markup as its own line', async () => {
    const acct = await apiAccount(srv, { paid: '1' });
    const ev = await record(acct, { category: 'llm', model: 'gpt-4o-mini', quantities: { inputTokens: 1000, outputTokens: 1000 } });
    expect(ev.cost).toBe('0.09');
    expect(ev.lines).toEqual([
      { item: 'input_tokens', quantity: '1000', unitPrice: '0.000015', amount: '0.015', exactAmount: '0.015' },
      { item: 'output_tokens', quantity: '1000', unitPrice: '0.00006', amount: '0.06', exactAmount: '0.06' },
      { item: 'markup', quantity: '0.075', unitPrice: '0.2', amount: '0.015', exactAmount: '0.015' },
    ]);
    expect((await readAccount(srv, acct)).balance.total).toBe('0.91');
    await bothInvariants(acct);
  });

  it('a FREE category costs nothing even on an empty account', async () => {
    const acct = await apiAccount(srv);
    const ev = await record(acct, { category: 'free' });
    expect(ev).toMatchObject({ cost: '0', debt: '0', drawdowns: [] });
    expect((await readAccount(srv, acct)).balance.total).toBe('0');
    await bothInvariants(acct);
  });

  it('taskCost counts every event of the task, also one dated before 1970 (any DateTime the API accepts)', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    const taskId = uniq('task');
    for (const occurredAt of ['2026-01-02T00:00:00Z', '1969-12-31T23:00:00Z']) {
      ok(await srv.gql(RECORD, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit', taskId, occurredAt } }));
    }
    const cost = ok(await srv.gql(`query($id: ID!, $t: String!) { taskCost(accountId: $id, taskId: $t) { credits events } }`, { id: acct, t: taskId })).taskCost;
    expect(cost).toEqual({ credits: '2', events: 2 });
  });

  it('a retry with the same key and input returns the first event and charges once', async () => {
    const acct = await apiAccount(srv, { paid: '5' });
    const input = usage(acct, { sku: 'half', agentId: 'agent-1', metadata: { step: 1 } });
    const first = ok(await srv.gql(RECORD, { input })).recordUsage;
    expect(first.cost).toBe('0.5');
    const again = await expectUnchanged(srv, [acct], async () => ok(await srv.gql(RECORD, { input })).recordUsage);
    expect(again.id).toBe(first.id);
    expect((await readAccount(srv, acct)).balance.total).toBe('4.5');
    await bothInvariants(acct);
  });

  it('the same key with a different input is IDEMPOTENCY_CONFLICT and changes nothing', async () => {
    const acct = await apiAccount(srv, { paid: '5' });
    const input = usage(acct);
    ok(await srv.gql(RECORD, { input }));
    for (const changed of [{ sku: 'half' }, { category: 'units', quantities: { units: '1' } }, { taskId: 'other' }]) {
      const res = await expectUnchanged(srv, [acct], () => srv.gql(RECORD, { input: { ...input, ...changed } }));
      expectError(res, 'IDEMPOTENCY_CONFLICT');
    }
  });

  it('without a reservation, a cost above available credit is INSUFFICIENT_CREDITS and changes nothing', async () => {
    const acct = await apiAccount(srv, { paid: '2' });
    const res = await expectUnchanged(srv, [acct], () => srv.gql(RECORD, { input: usage(acct, { category: 'units', quantities: { units: '2.000001' } }) }));
    expectError(res, 'INSUFFICIENT_CREDITS');
    // Exactly the available credit is fine.
    expect((await record(acct, { category: 'units', quantities: { units: '2' } })).cost).toBe('2');
    await bothInvariants(acct);
  });
});

describe('concurrent writes', () => {
  it('concurrent charges on one account never overspend: exactly the affordable ones succeed', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    const results = await Promise.all(Array.from({ length: 16 }, () => srv.gql(RECORD, { input: usage(acct) })));
    const codes = results.map((r) => r.body.errors?.[0]?.extensions?.code ?? 'OK');
    expect(codes.filter((c) => c === 'OK')).toHaveLength(10);
    expect(codes.filter((c) => c !== 'OK')).toEqual(Array(6).fill('INSUFFICIENT_CREDITS'));
    expect((await readAccount(srv, acct)).balance).toMatchObject({ total: '0', available: '0' });
    expect((await snapshot(srv, acct)).counts.events).toBe(10);
    await bothInvariants(acct);
  });

  it('concurrent retries with one idempotency key record one event, one grant and one account', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    const input = usage(acct);
    const events = await Promise.all(Array.from({ length: 8 }, () => srv.gql(RECORD, { input })));
    expect(new Set(events.map((r) => ok(r).recordUsage.id)).size).toBe(1);
    const grantInput = { accountId: acct, amount: '3', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') };
    const grants = await Promise.all(Array.from({ length: 8 }, () => srv.gql(GRANT, { input: grantInput })));
    expect(new Set(grants.map((r) => ok(r).grantCredits.id)).size).toBe(1);
    expect((await readAccount(srv, acct)).balance.total).toBe('12');
    const snap = await snapshot(srv, acct);
    expect([snap.counts.events, snap.counts.grants]).toEqual([1, 2]);
    await bothInvariants(acct);

    const accountInput = { externalId: uniq('race'), name: 'Race', kind: 'ORGANIZATION' };
    const created = await Promise.all(Array.from({ length: 6 }, () => srv.gql(CREATE, { input: accountInput })));
    const ids = new Set(created.map((r) => ok(r).createAccount.id));
    expect(ids.size).toBe(1);
    const [id] = [...ids] as string[];
    const a = await readAccount(srv, id!);
    expect(a.balance.free).toBe('100');
    expect((await snapshot(srv, id!)).counts.grants).toBe(1);
    await bothInvariants(id!);
  });
});

describe('recordUsageBatch', () => {
  it('each item succeeds or fails on its own, results in input order', async () => {
    const a = await apiAccount(srv, { paid: '2' });
    const b = await apiAccount(srv, { paid: '1' });
    const inputs = [
      usage(a),
      usage(b, { sku: 'half' }),
      usage(a, { category: 'no-such-category' }),
      usage(a),
      usage(a), // the third unit on an account holding 2
      usage(b, { accountId: 'abc' }),
    ];
    const before = await Promise.all([snapshot(srv, a), snapshot(srv, b)]);
    const results = ok(await srv.gql(BATCH, { inputs })).recordUsageBatch;
    expect(results.map((r: any) => r.errorCode)).toEqual([null, null, 'BAD_USER_INPUT', null, 'INSUFFICIENT_CREDITS', 'NOT_FOUND']);
    for (const i of [0, 1, 3]) {
      expect(results[i].errorMessage).toBeNull();
      expect(results[i].event).toMatchObject({ idempotencyKey: inputs[i]!.idempotencyKey, account: { id: inputs[i]!.accountId } });
    }
    for (const i of [2, 4, 5]) {
      expect(results[i].event).toBeNull();
      expect(results[i].errorMessage).toEqual(expect.any(String));
    }
    expect(results[1].event.cost).toBe('0.5');
    const [afterA, afterB] = await Promise.all([snapshot(srv, a), snapshot(srv, b)]);
    expect(afterA.counts.events - before[0]!.counts.events).toBe(2);
    expect(afterB.counts.events - before[1]!.counts.events).toBe(1);
    expect((await readAccount(srv, a)).balance.total).toBe('0');
    expect((await readAccount(srv, b)).balance.total).toBe('0.5');
    await bothInvariants(a);
    await bothInvariants(b);
  });
});

describe('reservations', () => {
  it('reserveCredits holds credit: Balance.reserved grows and available shrinks; a replay returns the same hold', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    const t0 = Date.now();
    const input = { accountId: acct, amount: '4', idempotencyKey: uniq('hold') };
    const hold = ok(await srv.gql(RESERVE, { input })).reserveCredits;
    const t1 = Date.now();
    expect(hold).toMatchObject({ accountId: acct, amount: '4', consumed: '0', status: 'ACTIVE' });
    const expires = Date.parse(hold.expiresAt);
    expect(expires).toBeGreaterThanOrEqual(t0 + 900_000 - 1000);
    expect(expires).toBeLessThanOrEqual(t1 + 900_000 + 1000);
    expect((await readAccount(srv, acct)).balance).toMatchObject({ total: '10', reserved: '4', available: '6' });
    const again = await expectUnchanged(srv, [acct], async () => ok(await srv.gql(RESERVE, { input })).reserveCredits);
    expect(again.id).toBe(hold.id);
    await bothInvariants(acct);
  });

  it('Account.reservations(status) lists an old ACTIVE hold behind 1,000 newer closed ones (filtered before the cap), and an expired ACTIVE row as EXPIRED', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    const hold = ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '1', idempotencyKey: uniq('old-hold') } })).reserveCredits;
    // 1,000 newer holds, already released (written directly: their history does not matter here),
    // and one ACTIVE row past its expiresAt (the sweep has not closed it yet).
    await srv.services.pool.query(
      `INSERT INTO reservations (id, account_id, amount_micro_credits, status, expires_at, created_at, closed_at, idempotency_key, request_hash)
       SELECT gen_random_uuid(), $1, 1, CASE WHEN g = 0 THEN 'ACTIVE' ELSE 'RELEASED' END::"ReservationStatus",
              now() - interval '1 minute', now() + g * interval '1 millisecond', CASE WHEN g = 0 THEN NULL ELSE now() END, 'closed-' || g, 'h'
         FROM generate_series(0, 1000) g`,
      [dbId(acct)],
    );
    const list = async (status: string) =>
      ok(await srv.gql(`query($id: ID!, $s: [ReservationStatus!]) { account(id: $id) { reservations(status: $s) { id status } } }`, { id: acct, s: [status] })).account.reservations;
    expect(await list('ACTIVE')).toEqual([{ id: hold.id, status: 'ACTIVE' }]);
    const expired = await list('EXPIRED');
    expect(expired).toHaveLength(1);
    expect(expired[0].status).toBe('EXPIRED');
    expect(await list('RELEASED')).toHaveLength(1000);
  });

  it('a new event is answered from what its INSERT wrote: every field equal to the stored event read back and to its replay, single and batch', async () => {
    const FULL = `id idempotencyKey account { id } occurredAt recordedAt category model tier sku agentId userId taskId conversationId messageId
      quantities { inputTokens outputTokens reasoningTokens cacheReadTokens cacheWriteTokens seconds units }
      providerCostUsd byok cost debt lines { item quantity unitPrice amount exactAmount } drawdowns { amount batch { id } }
      reservation { id } priceBookVersion refunded metadata`;
    const acct = await apiAccount(srv, { paid: '1000' });
    const hold = await reserve(acct, '5');
    const read = async (id: string) => ok(await srv.gql(`query($id: ID!) { node(id: $id) { ... on UsageEvent { ${FULL} } } }`, { id })).node;
    const inputs = [
      // Every optional field, metadata keys in an order jsonb does not keep, a decimal PostgreSQL pads.
      usage(acct, {
        category: 'llm', model: 'gpt-4o-mini', tier: 'standard', agentId: 'agent-1', userId: 'user-1', taskId: 'task-1',
        conversationId: 'conv-1', messageId: 'msg-1', occurredAt: '2026-12-01T10:11:12.345Z', providerCostUsd: '0.0012',
        quantities: { inputTokens: 1200, outputTokens: 345, reasoningTokens: 6, cacheReadTokens: 7, cacheWriteTokens: 8 },
        metadata: { zeta: 1, alpha: { nested: [1, 'two', null], b: true }, mid: 'x', a: 1.5 },
      }),
      usage(acct, { category: 'voice', quantities: { seconds: '90.5' }, byok: false, reservationId: hold.id }),
      usage(acct, { category: 'units', sku: 'img', quantities: { units: '2.250' } }),
      usage(acct, { category: 'passthrough', providerCostUsd: '0.123456789012', byok: true }),
    ];
    for (const input of inputs) {
      const fresh = ok(await srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { ${FULL} } }`, { input })).recordUsage;
      expect(fresh).toEqual(await read(fresh.id));
      expect(ok(await srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { ${FULL} } }`, { input })).recordUsage).toEqual(fresh);
    }
    const again = inputs.map((input) => ({ ...input, idempotencyKey: uniq('use') }));
    const batch = ok(await srv.gql(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode event { ${FULL} } } }`, { inputs: again })).recordUsageBatch;
    expect(batch.map((r: any) => r.errorCode)).toEqual([null, null, null, null]);
    for (const r of batch) expect(r.event).toEqual(await read(r.event.id));
    await bothInvariants(acct);
  });

  it('a new hold and a settle without usage are answered from the rows they wrote: equal to the stored reservation and to their replays', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    const read = async (id: string) => ok(await srv.gql(`query($id: ID!) { node(id: $id) { ... on Reservation { ${RESERVATION} } } }`, { id })).node;
    const input = { accountId: acct, amount: '3', ttlSeconds: 600, idempotencyKey: uniq('hold') };
    const hold = ok(await srv.gql(RESERVE, { input })).reserveCredits;
    expect(hold).toMatchObject({ accountId: acct, amount: '3', consumed: '0', status: 'ACTIVE' });
    expect(await read(hold.id)).toEqual(hold);
    expect(ok(await srv.gql(RESERVE, { input })).reserveCredits).toEqual(hold); // replay: read back
    await record(acct, { reservationId: hold.id });
    const settled = ok(await srv.gql(SETTLE, { input: { reservationId: hold.id, usage: [] } })).settleReservation;
    expect(settled).toEqual({ ...hold, consumed: '1', status: 'SETTLED' });
    expect(await read(hold.id)).toEqual(settled);
    expect(ok(await srv.gql(SETTLE, { input: { reservationId: hold.id, usage: [] } })).settleReservation).toEqual(settled);
    await bothInvariants(acct);
  });

  it('a hold above available credit is INSUFFICIENT_CREDITS and changes nothing', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    await reserve(acct, '4');
    const res = await expectUnchanged(srv, [acct], () => srv.gql(RESERVE, { input: { accountId: acct, amount: '6.000001', idempotencyKey: uniq('hold') } }));
    expectError(res, 'INSUFFICIENT_CREDITS');
    // Usage without the reservation cannot spend the held credit either.
    const use = await expectUnchanged(srv, [acct], () => srv.gql(RECORD, { input: usage(acct, { category: 'units', quantities: { units: '7' } }) }));
    expectError(use, 'INSUFFICIENT_CREDITS');
  });

  it('recordUsage against a hold captures partially; settle charges the rest, marks it SETTLED and releases the unused part', async () => {
    const acct = await apiAccount(srv, { paid: '20' });
    const hold = await reserve(acct, '10');
    const e1 = await record(acct, { reservationId: hold.id });
    const e2 = await record(acct, { reservationId: hold.id });
    expect(e1.reservation).toEqual({ id: hold.id });
    expect(e2.drawdowns).toHaveLength(1);
    expect((await readAccount(srv, acct)).balance).toMatchObject({ total: '18', reserved: '8', available: '10' });
    const hold1 = ok(await srv.gql(`query($id: ID!) { node(id: $id) { ... on Reservation { consumed status } } }`, { id: hold.id })).node;
    expect(hold1).toEqual({ consumed: '2', status: 'ACTIVE' });

    const settleInput = { reservationId: hold.id, usage: [usage(acct, { category: 'units', quantities: { units: '1' } })] };
    const settled = ok(await srv.gql(SETTLE, { input: settleInput })).settleReservation;
    expect(settled).toMatchObject({ id: hold.id, amount: '10', consumed: '3', status: 'SETTLED' });
    expect((await readAccount(srv, acct)).balance).toMatchObject({ total: '17', reserved: '0', available: '17' });
    const newest = await ledger(acct);
    expect(newest[0]).toMatchObject({ type: 'RELEASE', amount: '-7', reservation: { id: hold.id } });
    expect(newest[1]).toMatchObject({ type: 'CONSUME', amount: '-1', reservation: { id: hold.id } });

    const replay = await expectUnchanged(srv, [acct], async () => ok(await srv.gql(SETTLE, { input: settleInput })).settleReservation);
    expect(replay).toMatchObject({ id: hold.id, consumed: '3', status: 'SETTLED' });
    // Settling again with other work is refused.
    const other = await expectUnchanged(srv, [acct], () => srv.gql(SETTLE, { input: { reservationId: hold.id, usage: [usage(acct)] } }));
    expectError(other, 'RESERVATION_NOT_ACTIVE');
    await bothInvariants(acct);
  });

  it('releaseReservation gives the hold back; settling or using a released hold is RESERVATION_NOT_ACTIVE', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    const hold = await reserve(acct, '3');
    const released = ok(await srv.gql(RELEASE, { id: hold.id })).releaseReservation;
    expect(released).toMatchObject({ id: hold.id, status: 'RELEASED', consumed: '0' });
    expect((await readAccount(srv, acct)).balance).toMatchObject({ total: '10', reserved: '0', available: '10' });
    expect((await ledger(acct))[0]).toMatchObject({ type: 'RELEASE', amount: '-3', reservation: { id: hold.id } });

    const settle = await expectUnchanged(srv, [acct], () => srv.gql(SETTLE, { input: { reservationId: hold.id, usage: [usage(acct)] } }));
    expectError(settle, 'RESERVATION_NOT_ACTIVE');
    const settleEmpty = await expectUnchanged(srv, [acct], () => srv.gql(SETTLE, { input: { reservationId: hold.id, usage: [] } }));
    expectError(settleEmpty, 'RESERVATION_NOT_ACTIVE');
    const use = await expectUnchanged(srv, [acct], () => srv.gql(RECORD, { input: usage(acct, { reservationId: hold.id }) }));
    expectError(use, 'RESERVATION_NOT_ACTIVE');
    const again = await expectUnchanged(srv, [acct], async () => ok(await srv.gql(RELEASE, { id: hold.id })).releaseReservation);
    expect(again.status).toBe('RELEASED');
    await bothInvariants(acct);
  });

  it('releasing a SETTLED hold is RESERVATION_NOT_ACTIVE and changes nothing', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    const hold = await reserve(acct, '3');
    ok(await srv.gql(SETTLE, { input: { reservationId: hold.id, usage: [] } }));
    const res = await expectUnchanged(srv, [acct], () => srv.gql(RELEASE, { id: hold.id }));
    expectError(res, 'RESERVATION_NOT_ACTIVE');
  });

  it('extendReservation moves expiresAt to now + ttlSeconds; on a released hold it is RESERVATION_NOT_ACTIVE', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    const hold = await reserve(acct, '2', { ttlSeconds: 60 });
    const t0 = Date.now();
    const extended = ok(await srv.gql(EXTEND, { id: hold.id, ttl: 3600 })).extendReservation;
    const t1 = Date.now();
    expect(extended).toMatchObject({ id: hold.id, status: 'ACTIVE', amount: '2' });
    const at = Date.parse(extended.expiresAt);
    expect(at).toBeGreaterThan(Date.parse(hold.expiresAt));
    expect(at).toBeGreaterThanOrEqual(t0 + 3_600_000 - 1000);
    expect(at).toBeLessThanOrEqual(t1 + 3_600_000 + 1000);
    expect((await readAccount(srv, acct)).balance.reserved).toBe('2');

    ok(await srv.gql(RELEASE, { id: hold.id }));
    const res = await expectUnchanged(srv, [acct], () => srv.gql(EXTEND, { id: hold.id, ttl: 3600 }));
    expectError(res, 'RESERVATION_NOT_ACTIVE');
    await bothInvariants(acct);
  });

  it('overage under a hold leaves debt (negative available) that the next grant repays with DEBT_REPAY', async () => {
    const acct = await apiAccount(srv, { paid: '5' });
    const hold = await reserve(acct, '3');
    const ev = await record(acct, { reservationId: hold.id, category: 'units', quantities: { units: '8' } });
    expect(ev).toMatchObject({ cost: '8', debt: '3' });
    expect(ev.drawdowns.map((d: any) => d.amount)).toEqual(['5']);
    const a = await readAccount(srv, acct);
    expect(a.balance).toMatchObject({ total: '-3', available: '-3', debt: '3', reserved: '0', paid: '0' });
    expect(a.reconciliation).toMatchObject({ consistent: true, debt: '3', total: '-3', batchRemaining: '0', ledgerSum: '-3' });
    await expectLedgerInvariant(srv.services.pool, dbId(acct));

    // In debt, new work without a hold is refused.
    const refused = await expectUnchanged(srv, [acct], () => srv.gql(RECORD, { input: usage(acct) }));
    expectError(refused, 'INSUFFICIENT_CREDITS');

    const g = ok(await srv.gql(GRANT, { input: { accountId: acct, amount: '10', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } })).grantCredits;
    expect(g).toMatchObject({ amount: '10' });
    expect(g.batch).toMatchObject({ allocated: '10', remaining: '7' });
    const after = await readAccount(srv, acct);
    expect(after.balance).toMatchObject({ total: '7', available: '7', debt: '0', paid: '7' });
    const entries = await ledger(acct);
    const repay = entries.filter((e) => e.type === 'DEBT_REPAY');
    expect(repay).toEqual([expect.objectContaining({ amount: '3', balanceAfter: '7', batch: { id: g.batch.id } })]);
    await bothInvariants(acct);
  });
});

describe('refundUsage', () => {
  it('gives the credit back to the batches it came from; a second refund changes nothing', async () => {
    const acct = await apiAccount(srv, { free: '2', paid: '10' });
    const ev = await record(acct, { category: 'units', quantities: { units: '5' } });
    expect(ev.drawdowns.map((d: any) => [d.batch.type, d.amount])).toEqual([
      ['FREE', '2'],
      ['PAID', '3'],
    ]);
    expect((await readAccount(srv, acct)).balance).toMatchObject({ free: '0', paid: '7' });
    const refunded = ok(await srv.gql(REFUND, { id: ev.id, reason: 'tool failed' })).refundUsage;
    expect(refunded).toMatchObject({ id: ev.id, refunded: true, cost: '5' });
    expect((await readAccount(srv, acct)).balance).toMatchObject({ free: '2', paid: '10', total: '12', available: '12' });
    const refunds = (await ledger(acct)).filter((e) => e.type === 'REFUND');
    expect(refunds.map((e) => [e.amount, e.batch.id, e.usageEvent.id]).sort()).toEqual(
      ev.drawdowns.map((d: any) => [d.amount, d.batch.id, ev.id]).sort(),
    );
    const batches = ok(await srv.gql(`query($id: ID!) { account(id: $id) { batches { id remaining allocated status } } }`, { id: acct })).account.batches;
    for (const b of batches) expect(b).toMatchObject({ remaining: b.allocated, status: 'ACTIVE' });

    const again = await expectUnchanged(srv, [acct], async () => ok(await srv.gql(REFUND, { id: ev.id, reason: 'again' })).refundUsage);
    expect(again.refunded).toBe(true);
    await bothInvariants(acct);
  });

  it('refunding an overage event also forgives the debt it left', async () => {
    const acct = await apiAccount(srv, { paid: '5' });
    const hold = await reserve(acct, '3');
    const ev = await record(acct, { reservationId: hold.id, category: 'units', quantities: { units: '8' } });
    expect(ev.debt).toBe('3');
    expect((await readAccount(srv, acct)).balance).toMatchObject({ total: '-3', debt: '3' });
    const refunded = ok(await srv.gql(REFUND, { id: ev.id, reason: 'runaway agent' })).refundUsage;
    expect(refunded.refunded).toBe(true);
    expect((await readAccount(srv, acct)).balance).toMatchObject({ total: '5', debt: '0', paid: '5' });
    await bothInvariants(acct);
  });

  it('an empty reason is BAD_USER_INPUT and changes nothing', async () => {
    const acct = await apiAccount(srv, { paid: '3' });
    const ev = await record(acct);
    const res = await expectUnchanged(srv, [acct], () => srv.gql(REFUND, { id: ev.id, reason: '' }));
    expectError(res, 'BAD_USER_INPUT');
  });
});

describe('publishPriceBook', () => {
  it('publishes a new version that prices new events; a bad book is BAD_USER_INPUT and keeps the version', async () => {
    const before = await currentBookVersion();
    try {
      const book = {
        ...TEST_PRICE_BOOK,
        name: 'api test book v2',
        rules: TEST_PRICE_BOOK.rules.map((r) => (r.category === 'unit' && !r.sku ? { ...r, credits: '2' } : r)),
      };
      const published = ok(await srv.gql(PUBLISH, { input: book })).publishPriceBook;
      expect(published.version).toBe(before + 1);
      expect(published).toMatchObject({ name: 'api test book v2', byokFeePercent: '5' });
      const normalize = (r: PriceRuleInput) => ({
        category: r.category,
        model: r.model ?? null,
        tier: r.tier ?? null,
        sku: r.sku ?? null,
        kind: r.kind,
        credits: r.credits ?? null,
        unit: r.unit ?? null,
        markupPercent: r.markupPercent ?? null,
        fallbackCredits: r.fallbackCredits ?? null,
      });
      expect(published.rules).toEqual(book.rules.map(normalize));
      expect(ok(await srv.gql(PRICE_BOOK)).priceBook).toMatchObject({ version: before + 1, name: 'api test book v2' });

      const acct = await apiAccount(srv, { paid: '5' });
      const ev = await record(acct);
      expect(ev).toMatchObject({ cost: '2', priceBookVersion: before + 1 });

      const dup = { name: 'dup', rules: [{ category: 'x', kind: 'FLAT', credits: '1' }, { category: 'x', kind: 'FLAT', credits: '2' }] };
      const flatNoCredits = { name: 'flat', rules: [{ category: 'x', kind: 'FLAT' }] };
      const empty = { name: 'empty', rules: [] };
      const creditsOnFree = { name: 'free+credits', rules: [{ category: 'x', kind: 'FREE', credits: '1' }] };
      for (const bad of [dup, flatNoCredits, empty, creditsOnFree]) {
        const res = await srv.gql(PUBLISH, { input: bad });
        expectError(res, 'BAD_USER_INPUT');
        expect(await currentBookVersion()).toBe(before + 1);
      }
      expect((await record(acct)).cost).toBe('2');
    } finally {
      const restored = ok(await srv.gql(PUBLISH, { input: TEST_PRICE_BOOK })).publishPriceBook;
      expect(restored.name).toBe(TEST_PRICE_BOOK.name);
    }
    const acct = await apiAccount(srv, { paid: '5' });
    expect((await record(acct)).cost).toBe('1');
  });
});

describe('updateSettings', () => {
  it('values round-trip and apply (welcome bonus); bad values are BAD_USER_INPUT and change nothing', async () => {
    const original = ok(await srv.gql(`{ settings { ${SETTINGS_FIELDS} } }`)).settings;
    expect(original).toMatchObject({ welcomeBonusCredits: '100', welcomeBonusExpiresAfterDays: 30 });
    try {
      const next = {
        creditUsdValue: '0.02',
        welcomeBonusCredits: '12.5',
        welcomeBonusExpiresAfterDays: 7,
        referralRewardCredits: '3',
        referralMaxRewardsPerAccount: 4,
        alertThresholds: [10, 50],
      };
      const updated = ok(await srv.gql(UPDATE_SETTINGS, { input: next })).updateSettings;
      expect(updated).toEqual({ ...next, alertThresholds: [50, 10] });
      expect(ok(await srv.gql(`{ settings { ${SETTINGS_FIELDS} } }`)).settings).toEqual(updated);

      // Only the given fields change.
      const partial = ok(await srv.gql(UPDATE_SETTINGS, { input: { referralMaxRewardsPerAccount: 5 } })).updateSettings;
      expect(partial).toEqual({ ...updated, referralMaxRewardsPerAccount: 5 });

      const a = ok(await srv.gql(CREATE, { input: { externalId: uniq('bonus'), name: 'B', kind: 'USER' } })).createAccount;
      expect(a.batches).toHaveLength(1);
      expect(a.batches[0]).toMatchObject({ allocated: '12.5', type: 'FREE', source: 'WELCOME_BONUS' });
      expect(Date.parse(a.batches[0].expiresAt) - Date.parse(a.createdAt)).toBe(7 * DAY_MS);

      // null: the welcome bonus never expires.
      const noExpiry = ok(await srv.gql(UPDATE_SETTINGS, { input: { welcomeBonusExpiresAfterDays: null } })).updateSettings;
      expect(noExpiry.welcomeBonusExpiresAfterDays).toBeNull();

      const current = ok(await srv.gql(`{ settings { ${SETTINGS_FIELDS} } }`)).settings;
      const bad = [
        { welcomeBonusCredits: '-1' },
        { creditUsdValue: '0' },
        { creditUsdValue: '-0.01' },
        { welcomeBonusExpiresAfterDays: 0 },
        { welcomeBonusExpiresAfterDays: 5000 },
        { referralRewardCredits: '-3' },
        { referralMaxRewardsPerAccount: -1 },
        { alertThresholds: [101] },
        { alertThresholds: [5, 5] },
        { alertThresholds: [-1] },
        { welcomeBonusCredits: '1.0000001' },
      ];
      for (const input of bad) {
        const res = await srv.gql(UPDATE_SETTINGS, { input });
        expectError(res, 'BAD_USER_INPUT');
        expect(ok(await srv.gql(`{ settings { ${SETTINGS_FIELDS} } }`)).settings, JSON.stringify(input)).toEqual(current);
      }
    } finally {
      const restored = ok(await srv.gql(UPDATE_SETTINGS, { input: original })).updateSettings;
      expect(restored).toEqual(original);
    }
  });
});
