/**
 * Tenant isolation, the paths the earlier tenancy tests (auth.test.ts, tenancy.test.ts,
 * test/live/subscriptions.test.ts) leave out, over real HTTP, WebSocket and SSE:
 * - another member of the same organization (a second user token with the same `org` claim):
 *   its USER account, its usage event and its hold answer exactly like missing ones, while both
 *   read the organization's pool (README "Who may do what": an end user reads only its own USER
 *   account and its organization's account);
 * - `quote` on the caller's own account naming another tenant's hold answers like a hold of
 *   nothing (Quote.affordable: false when it names no ACTIVE hold of the account);
 * - every write an end user could aim at another tenant (the growth, billing and plan mutations
 *   included, and the hold, usage and grant mutations with foreign ids) is FORBIDDEN with the
 *   same answer as for an id of nothing, and changes nothing; so is `promoCode`;
 * - the live streams an end user could open on another tenant (usageRecorded and creditAlerts
 *   over WebSocket, all three over SSE) are refused like a missing account, and nothing of that
 *   account reaches the caller;
 * - idempotency keys belong to one account: a service key sending another account the same key
 *   and the same input records a new event, hold and grant of that account, never a replay of the
 *   first account's (schema: RecordUsageInput.idempotencyKey "Unique per account").
 * Every foreign answer is compared, byte for byte, with the answer to an id of nothing.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { ALERTS_SUB, BALANCE_SUB, USAGE_SUB, sseSubscribe, wsSubscribe, type LiveSub } from '../live/helpers.js';
import { apiAccount, dbId, expectError, expectUnchanged, gid, ok, platformCounts, snapshot, uniq } from './helpers.js';

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost account { id } } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id accountId amount } }`;
const GRANT = `mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id amount batch { id } } }`;

let srv: TestServer;
const subs: LiveSub[] = [];
const track = <T extends LiveSub>(s: T): T => (subs.push(s), s);

const orgExt = uniq('org');
const memberExt = uniq('member');
const peerExt = uniq('peer');
let org: string;
let member: string;
let peer: string;
let foreign: string;
let memberToken: string;
let peerToken: string;
/** Objects of the caller's organization, of the peer's USER account and of the other tenant. */
const own = { hold: '', event: '' };
const peerObj = { hold: '', event: '' };
const other = { hold: '', event: '', grant: '', referralCode: '', batch: '', entry: '', alert: '' };
/** The Prisma operations the server ran (`Model.operation`), in order, since the last reset. */
const prismaOps: string[] = [];
let packId: string;
let planId: string;
const promo = `TENANCY${randomUUID().replace(/-/g, '').slice(0, 12).toUpperCase()}`;

/** Records one credit of usage on `accountId` (admin key); returns the event's global id. */
async function charge(accountId: string, extra: Record<string, unknown> = {}): Promise<string> {
  return ok(await srv.gql(RECORD, { input: { accountId, idempotencyKey: uniq('u'), category: 'unit', ...extra } })).recordUsage.id;
}

/** Holds `amount` credits of `accountId` (admin key); returns the hold's global id. */
async function hold(accountId: string, amount = '1'): Promise<string> {
  return ok(await srv.gql(RESERVE, { input: { accountId, amount, idempotencyKey: uniq('h') } })).reserveCredits.id;
}

beforeAll(async () => {
  srv = await startTestServer({}, { onPrismaQuery: (model, operation) => void prismaOps.push(`${model ?? ''}.${operation}`) });
  org = await apiAccount(srv, { kind: 'ORGANIZATION', externalId: orgExt, paid: '20' });
  member = await apiAccount(srv, { kind: 'USER', externalId: memberExt, paid: '5' });
  peer = await apiAccount(srv, { kind: 'USER', externalId: peerExt, paid: '5' });
  foreign = await apiAccount(srv, { paid: '20' });
  own.event = await charge(org, { userId: peerExt, taskId: 't-org' });
  own.hold = await hold(org);
  peerObj.event = await charge(peer, { taskId: 't-peer' });
  peerObj.hold = await hold(peer);
  other.event = await charge(foreign, { taskId: 't-foreign' });
  other.hold = await hold(foreign, '2');
  other.grant = ok(await srv.gql(GRANT, { input: { accountId: foreign, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') } })).grantCredits.id;
  // 18 of 21 credits available; 14 more spent leaves 4 (19 %): the 25 % alert.
  await charge(foreign, { category: 'units', quantities: { units: '14' } });
  const seen = ok(
    await srv.gql(`query($id: ID!) { account(id: $id) { referralCode batches { id } ledger(first: 1) { edges { node { id } } } alerts(first: 1) { edges { node { id } } } } }`, { id: foreign }),
  ).account;
  other.referralCode = seen.referralCode;
  other.batch = seen.batches[0].id;
  other.entry = seen.ledger.edges[0].node.id;
  other.alert = seen.alerts.edges[0].node.id;
  packId = ok(await srv.gql(`mutation($input: CreateCreditPackInput!) { createCreditPack(input: $input) { id } }`, { input: { name: uniq('pack'), credits: '10', priceUsd: '1' } })).createCreditPack.id;
  planId = ok(await srv.gql(`mutation($input: CreatePlanInput!) { createPlan(input: $input) { id } }`, { input: { name: uniq('plan'), monthlyCredits: '10', rollover: 'RESET', priceUsd: '1' } })).createPlan.id;
  ok(await srv.gql(`mutation($input: CreatePromoCodeInput!) { createPromoCode(input: $input) { code } }`, { input: { code: promo, credits: '5' } }));
  memberToken = await signUserToken(srv.jwtSecret, { sub: memberExt, org: orgExt, expiresInSeconds: 600 });
  peerToken = await signUserToken(srv.jwtSecret, { sub: peerExt, org: orgExt, expiresInSeconds: 600 });
});

afterEach(async () => {
  await Promise.all(subs.splice(0).map((s) => s.dispose()));
});

afterAll(async () => {
  await srv?.close();
});

describe('another member of the same organization', () => {
  const ACCOUNT = `query($id: ID!) { account(id: $id) { id balance { total } } }`;
  const BY_EXTERNAL = `query($e: String!) { accountByExternalId(externalId: $e) { id balance { total } } }`;
  const NODE = `query($id: ID!) { node(id: $id) { id } }`;
  const USAGE_EVENT = `query($id: ID!) { usageEvent(id: $id) { id cost } }`;
  const TASK_COST = `query($id: ID!, $t: String!) { taskCost(accountId: $id, taskId: $t) { credits events } }`;

  it("sees the peer's USER account, usage event and hold exactly like missing ones, and both read the organization's pool", async () => {
    // Controls: each member reads its own USER account and the organization's account.
    expect(ok(await srv.gql(ACCOUNT, { id: member }, memberToken)).account).toMatchObject({ id: member });
    expect(ok(await srv.gql(ACCOUNT, { id: peer }, peerToken)).account).toMatchObject({ id: peer });
    expect(ok(await srv.gql(USAGE_EVENT, { id: peerObj.event }, peerToken)).usageEvent).toEqual({ id: peerObj.event, cost: '1' });
    for (const token of [memberToken, peerToken]) expect(ok(await srv.gql(ACCOUNT, { id: org }, token)).account).toMatchObject({ id: org });

    const pairs: Array<[string, string, Record<string, unknown>, Record<string, unknown>]> = [
      ['account', ACCOUNT, { id: peer }, { id: gid('Account', randomUUID()) }],
      ['accountByExternalId', BY_EXTERNAL, { e: peerExt }, { e: uniq('nobody') }],
      ['node(account)', NODE, { id: peer }, { id: gid('Account', randomUUID()) }],
      ['node(event)', NODE, { id: peerObj.event }, { id: gid('UsageEvent', randomUUID()) }],
      ['node(hold)', NODE, { id: peerObj.hold }, { id: gid('Reservation', randomUUID()) }],
      ['usageEvent', USAGE_EVENT, { id: peerObj.event }, { id: gid('UsageEvent', randomUUID()) }],
      ['taskCost', TASK_COST, { id: peer, t: 't-peer' }, { id: gid('Account', randomUUID()), t: 't-peer' }],
    ];
    for (const [name, query, peerVars, missingVars] of pairs) {
      const theirs = await srv.gql(query, peerVars, memberToken);
      const none = await srv.gql(query, missingVars, memberToken);
      expect(theirs.body, name).toEqual(none.body);
      expect(JSON.stringify(theirs.body), name).not.toContain(dbId(peer));
    }
  });

  it("cannot subscribe to the peer's USER account (WebSocket), which a missing account answers the same", async () => {
    const theirs = track(wsSubscribe(srv.url, `Bearer ${memberToken}`, BALANCE_SUB, { id: peer }));
    const none = track(wsSubscribe(srv.url, `Bearer ${memberToken}`, BALANCE_SUB, { id: gid('Account', randomUUID()) }));
    await theirs.waitFor((s) => s.errors.length > 0, 'the refusal');
    await none.waitFor((s) => s.errors.length > 0, 'the refusal');
    expect(theirs.errors).toEqual(none.errors);
    expect(theirs.errors[0]!.extensions?.code).toBe('NOT_FOUND');
    expect(theirs.events).toEqual([]);
  });
});

describe('the database work behind an answer to an end user', () => {
  /** Sends `query` as the member and returns the answer with the Prisma operations it ran. */
  const traced = async (query: string, variables: Record<string, unknown>) => {
    prismaOps.length = 0;
    const res = await srv.gql(query, variables, memberToken);
    return { body: res.body, ops: [...prismaOps] };
  };
  const NODE = `query($id: ID!) { node(id: $id) { id } }`;

  it("is the same for another tenant's id as for an id of nothing (an extra lookup would tell, by its time, that the id exists)", async () => {
    const probes: Array<[string, string, Record<string, unknown>, Record<string, unknown>]> = [
      ['accountByExternalId', `query($e: String!) { accountByExternalId(externalId: $e) { id } }`, { e: peerExt }, { e: uniq('nobody') }],
      ['account', `query($id: ID!) { account(id: $id) { id } }`, { id: foreign }, { id: gid('Account', randomUUID()) }],
      ['usageEvent', `query($id: ID!) { usageEvent(id: $id) { id } }`, { id: other.event }, { id: gid('UsageEvent', randomUUID()) }],
      ['taskCost', `query($id: ID!) { taskCost(accountId: $id, taskId: "t-foreign") { events } }`, { id: foreign }, { id: gid('Account', randomUUID()) }],
      ...(
        [
          ['Account', foreign],
          ['UsageEvent', other.event],
          ['Reservation', other.hold],
          ['CreditGrant', other.grant],
          ['CreditBatch', other.batch],
          ['LedgerEntry', other.entry],
          ['CreditAlert', other.alert],
        ] as const
      ).map(([type, id]): [string, string, Record<string, unknown>, Record<string, unknown>] => [`node(${type})`, NODE, { id }, { id: gid(type, randomUUID()) }]),
    ];
    const differing: string[] = [];
    for (const [name, query, theirs, none] of probes) {
      const a = await traced(query, theirs);
      const b = await traced(query, none);
      expect(a.body, name).toEqual(b.body);
      if (JSON.stringify(a.ops) !== JSON.stringify(b.ops)) differing.push(`${name}: foreign ${JSON.stringify(a.ops)} vs missing ${JSON.stringify(b.ops)}`);
    }
    expect(differing).toEqual([]);
    // Control: the caller's own objects do resolve.
    expect(ok(await srv.gql(NODE, { id: own.event }, memberToken)).node).toEqual({ id: own.event });
  });
});

describe("quote on the caller's own account", () => {
  const QUOTE = `query($input: RecordUsageInput!) { quote(input: $input) { cost affordable } }`;
  const quote = (reservationId: string, token: string | undefined = memberToken) =>
    srv.gql(QUOTE, { input: { accountId: org, idempotencyKey: 'q', category: 'units', quantities: { units: '2' }, reservationId } }, token);

  it("naming another tenant's hold answers like a hold of nothing: it never counts what that hold keeps", async () => {
    // The organization's own hold of 1 plus its available credit covers 2; the foreign hold of 2
    // alone would, but it is not the organization's.
    expect(ok(await quote(own.hold)).quote).toEqual({ cost: '2', affordable: true });
    const theirs = await quote(other.hold);
    const none = await quote(gid('Reservation', randomUUID()));
    expect(ok(theirs).quote).toEqual({ cost: '2', affordable: false });
    expect(theirs.body).toEqual(none.body);
    // The same for a key that reads every account (a service key's quote names one account too).
    expect((await quote(other.hold, srv.adminKey)).body).toEqual((await quote(gid('Reservation', randomUUID()), srv.adminKey)).body);
  });
});

describe("an end user's writes aimed at another tenant", () => {
  /** Each mutation once with the other tenant's objects and once with ids of nothing. */
  const writes = (): Array<[string, string, Record<string, unknown>, Record<string, unknown>]> => {
    const missingAccount = gid('Account', randomUUID());
    return [
      ['settleReservation', `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id } }`, { input: { reservationId: other.hold, usage: [] } }, { input: { reservationId: gid('Reservation', randomUUID()), usage: [] } }],
      ['releaseReservation', `mutation($id: ID!) { releaseReservation(reservationId: $id) { id } }`, { id: other.hold }, { id: gid('Reservation', randomUUID()) }],
      ['extendReservation', `mutation($id: ID!) { extendReservation(reservationId: $id, ttlSeconds: 60) { id } }`, { id: other.hold }, { id: gid('Reservation', randomUUID()) }],
      ['refundUsage', `mutation($id: ID!) { refundUsage(usageEventId: $id, reason: "r") { id } }`, { id: other.event }, { id: gid('UsageEvent', randomUUID()) }],
      ['voidGrant', `mutation($id: ID!) { voidGrant(grantId: $id, reason: "r") { id } }`, { id: other.grant }, { id: gid('CreditGrant', randomUUID()) }],
      ['redeemPromoCode', `mutation($id: ID!, $c: String!) { redeemPromoCode(accountId: $id, code: $c) { id } }`, { id: foreign, c: promo }, { id: missingAccount, c: promo }],
      ['redeemReferral (into the caller, with the other tenant\'s code)', `mutation($id: ID!, $c: String!) { redeemReferral(accountId: $id, code: $c) { id } }`, { id: org, c: other.referralCode }, { id: org, c: 'NOSUCHCODE1' }],
      ['purchaseCreditPack', `mutation($id: ID!, $p: ID!, $k: String!) { purchaseCreditPack(accountId: $id, packId: $p, idempotencyKey: $k) { id } }`, { id: foreign, p: packId, k: 'k' }, { id: missingAccount, p: packId, k: 'k' }],
      ['attachPaymentMethod', `mutation($id: ID!) { attachPaymentMethod(accountId: $id, reference: "pm_x") { provider } }`, { id: foreign }, { id: missingAccount }],
      ['setAutoTopUp', `mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) { enabled } }`, { input: { accountId: foreign, enabled: false, thresholdCredits: '1', packId } }, { input: { accountId: missingAccount, enabled: false, thresholdCredits: '1', packId } }],
      ['setAgentBudget', `mutation($id: ID!) { setAgentBudget(accountId: $id, agentId: "a", limit: "1") { limit } }`, { id: foreign }, { id: missingAccount }],
      ['setUserBudget', `mutation($id: ID!) { setUserBudget(accountId: $id, userId: "u", limit: "1") { limit } }`, { id: foreign }, { id: missingAccount }],
      ['subscribeToPlan', `mutation($id: ID!, $p: ID!) { subscribeToPlan(accountId: $id, planId: $p) { active } }`, { id: foreign, p: planId }, { id: missingAccount, p: planId }],
      ['cancelSubscription', `mutation($id: ID!) { cancelSubscription(accountId: $id) { active } }`, { id: foreign }, { id: missingAccount }],
      ['advanceTestClock', `mutation($id: ID!, $to: DateTime!) { advanceTestClock(accountId: $id, to: $to) { id } }`, { id: foreign, to: '2099-01-01T00:00:00.000Z' }, { id: missingAccount, to: '2099-01-01T00:00:00.000Z' }],
      ['recordUsage', `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId: foreign, idempotencyKey: 'k', category: 'unit' } }, { input: { accountId: missingAccount, idempotencyKey: 'k', category: 'unit' } }],
      ['reserveCredits', `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, { input: { accountId: foreign, amount: '1', idempotencyKey: 'k' } }, { input: { accountId: missingAccount, amount: '1', idempotencyKey: 'k' } }],
    ];
  };

  it('is FORBIDDEN exactly as for an id of nothing, and changes nothing on either tenant or anywhere else', async () => {
    for (const [name, doc, theirs, none] of writes()) {
      const counts = await platformCounts(srv);
      const before = await Promise.all([org, foreign].map((a) => snapshot(srv, a)));
      const res = await srv.gql(doc, theirs, memberToken);
      expectError(res, 'FORBIDDEN');
      expect(res.body, name).toEqual((await srv.gql(doc, none, memberToken)).body);
      expect(await Promise.all([org, foreign].map((a) => snapshot(srv, a))), name).toEqual(before);
      expect(await platformCounts(srv), name).toEqual(counts);
    }
  });

  it('promoCode (how often a platform code was redeemed) is FORBIDDEN to end users', async () => {
    const res = await srv.gql(`query($c: String!) { promoCode(code: $c) { redemptions } }`, { c: promo }, memberToken);
    expectError(res, 'FORBIDDEN');
    expect(res.body.data?.promoCode ?? null).toBeNull();
  });
});

describe("an end user's live streams of another tenant", () => {
  const missing = () => gid('Account', randomUUID());
  const refusedLikeMissing = async (open: (id: string) => LiveSub) => {
    const theirs = track(open(foreign));
    const none = track(open(missing()));
    await theirs.waitFor((s) => s.errors.length > 0 || s.completed, 'the refusal');
    await none.waitFor((s) => s.errors.length > 0 || s.completed, 'the refusal');
    return { theirs, none };
  };

  it('usageRecorded and creditAlerts over WebSocket are NOT_FOUND like a missing account and deliver nothing of it', async () => {
    for (const doc of [USAGE_SUB, ALERTS_SUB]) {
      const { theirs, none } = await refusedLikeMissing((id) => wsSubscribe(srv.url, `Bearer ${memberToken}`, doc, { id }));
      expect(theirs.errors).toEqual(none.errors);
      expect(theirs.errors.map((e) => e.extensions?.code)).toEqual(['NOT_FOUND']);
      expect(theirs.events).toEqual([]);
    }
  });

  it('balanceChanged, usageRecorded and creditAlerts over SSE are refused like a missing account; own streams get their own updates only', async () => {
    const mine = track(sseSubscribe(srv.url, `Bearer ${memberToken}`, USAGE_SUB, { id: org }));
    const opened: LiveSub[] = [];
    for (const doc of [BALANCE_SUB, USAGE_SUB, ALERTS_SUB]) {
      const { theirs, none } = await refusedLikeMissing((id) => sseSubscribe(srv.url, `Bearer ${memberToken}`, doc, { id }));
      expect(theirs.errors).toEqual(none.errors);
      expect(JSON.stringify(theirs.errors)).toContain('NOT_FOUND');
      expect(theirs.events).toEqual([]);
      opened.push(theirs);
    }
    // Drive the other tenant into its 15 % alert (4 of 21 available: spend 1) and record on the
    // organization: only the organization's event reaches the member.
    await charge(foreign, { category: 'units', quantities: { units: '1' } });
    const ownEvent = await charge(org);
    await mine.waitFor((s) => s.events.length === 1, "the organization's event");
    expect(mine.events.map((e) => e.usageRecorded.id)).toEqual([ownEvent]);
    expect(opened.flatMap((s) => s.events)).toEqual([]);
  });
});

describe('idempotency keys belong to one account (service key)', () => {
  it("another account sending the same key and input gets a new event, hold and grant of its own, never a replay of the first account's", async () => {
    const a = await apiAccount(srv, { paid: '5' });
    const b = await apiAccount(srv, { paid: '5' });
    const key = uniq('shared');
    const send = (accountId: string) =>
      Promise.all([
        srv.gql(RECORD, { input: { accountId, idempotencyKey: key, category: 'unit' } }),
        srv.gql(RESERVE, { input: { accountId, amount: '1', idempotencyKey: key } }),
        srv.gql(GRANT, { input: { accountId, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: key } }),
      ]).then((all) => all.map((r) => ok(r)));
    const [ea, ha, ga] = await send(a);
    const [eb, hb, gb] = await send(b);
    expect(eb.recordUsage.id).not.toBe(ea.recordUsage.id);
    expect(eb.recordUsage.account.id).toBe(b);
    expect(hb.reserveCredits.id).not.toBe(ha.reserveCredits.id);
    expect(hb.reserveCredits.accountId).toBe(b);
    expect(gb.grantCredits.id).not.toBe(ga.grantCredits.id);
    // Each account was charged, held and granted once; a retry on either replays its own.
    for (const acct of [a, b]) {
      const s = await snapshot(srv, acct);
      expect(s.counts).toMatchObject({ events: 1, reservations: 1, grants: 2 });
    }
    const [ea2, ha2, ga2] = await expectUnchanged(srv, [a, b], () => send(a));
    expect([ea2.recordUsage.id, ha2.reserveCredits.id, ga2.grantCredits.id]).toEqual([ea.recordUsage.id, ha.reserveCredits.id, ga.grantCredits.id]);
  });
});
