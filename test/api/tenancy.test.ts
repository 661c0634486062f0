/**
 * Tenant isolation at the edges the earlier audits did not reach (the tenancy audit): what an
 * end user (JWT) can learn about another tenant from ids it was never given to read. Each case
 * compares the answer to a foreign id with the answer to a random id of nothing: they must be
 * the same, byte for byte (README "Who may do what": any other account id answers exactly like
 * a missing one; src/graphql/ids.ts). A cursor of one of the caller's own accounts used on the
 * list of its other account gets the answer of a cursor of no row too (README "Limits": a cursor
 * is good only on the list of the account it came from).
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { signUserToken } from '../../src/auth/jwt.js';
import { apiAccount, gid, ok, uniq } from './helpers.js';

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`;

let srv: TestServer;
const userExt = uniq('user');
const orgExt = uniq('org');
let orgAcct: string;
let userAcct: string;
let otherOrg: string;
let userToken: string;
/** Ids of the other tenant's credit alert and of one of the organization's (the control). */
const alertId = { foreign: '', own: '' };

/** Records `units` credits of usage on `accountId` (admin key). */
async function spend(accountId: string, units: number): Promise<void> {
  ok(await srv.gql(RECORD, { input: { accountId, idempotencyKey: uniq('u'), category: 'units', quantities: { units: String(units) } } }));
}

/** The connections of Account whose cursors are row ids, and the row each cursor names. */
const CONNECTIONS = ['usage', 'grants', 'ledger', 'alerts'] as const;
type Connection = (typeof CONNECTIONS)[number];
/** Cursors of rows of the other tenant, one per connection. */
const foreignCursor = {} as Record<Connection, string>;
/** Cursors of rows of the caller's organization, one per connection (the control). */
const ownCursor = {} as Record<Connection, string>;
/** Cursors of rows of the caller's own USER account, one per connection. */
const userCursor = {} as Record<Connection, string>;

/** Every connection's newest cursor of `accountId` (admin key). */
async function newestCursors(accountId: string): Promise<Record<Connection, string>> {
  const fields = CONNECTIONS.map((c) => `${c}(first: 1) { edges { cursor } }`).join(' ');
  const account = ok(await srv.gql(`query($id: ID!) { account(id: $id) { ${fields} } }`, { id: accountId })).account;
  return Object.fromEntries(CONNECTIONS.map((c) => [c, account[c].edges[0].cursor])) as Record<Connection, string>;
}

beforeAll(async () => {
  srv = await startTestServer();
  userAcct = await apiAccount(srv, { kind: 'USER', externalId: userExt, paid: '3' });
  orgAcct = await apiAccount(srv, { kind: 'ORGANIZATION', externalId: orgExt, paid: '20' });
  otherOrg = await apiAccount(srv, { paid: '20' });
  // The other tenant's rows fall between the organization's older and newer rows of every list
  // (grants, usage, ledger entries and the 25 % / 15 % / 0 % alerts, all numbered by one global
  // seq), so a cursor naming one of them would cut the organization's list if it were used.
  await spend(orgAcct, 16); // 20 % left: the 25 % alert
  await spend(otherOrg, 16); // the foreign usage event, ledger entry and 25 % alert
  ok(
    await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, {
      input: { accountId: otherOrg, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') },
    }),
  );
  Object.assign(foreignCursor, await newestCursors(otherOrg));
  // The caller's own USER account's rows fall between the organization's too (its 0 % alert,
  // usage event, ledger entries and a grant).
  await spend(userAcct, 3);
  ok(
    await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, {
      input: { accountId: userAcct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') },
    }),
  );
  Object.assign(userCursor, await newestCursors(userAcct));
  ok(
    await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, {
      input: { accountId: orgAcct, amount: '1', type: 'PAID', source: 'PURCHASE', idempotencyKey: uniq('g') },
    }),
  ); // 5 of 21 left
  await spend(orgAcct, 2); // 3 of 21 (14 %) left: the 15 % alert
  await spend(orgAcct, 3); // 0 left: the 0 % alert
  Object.assign(ownCursor, await newestCursors(orgAcct));
  const newestAlert = async (id: string) => ok(await srv.gql(`query($id: ID!) { account(id: $id) { alerts(first: 1) { edges { node { id } } } } }`, { id })).account.alerts.edges[0].node.id as string;
  alertId.foreign = await newestAlert(otherOrg);
  alertId.own = await newestAlert(orgAcct);
  userToken = await signUserToken(srv.jwtSecret, { sub: userExt, org: orgExt, expiresInSeconds: 600 });
});

afterAll(async () => {
  await srv?.close();
});

describe("an end user's connection cursors", () => {
  const page = (connection: Connection, direction: 'after' | 'before', cursor: string) =>
    srv.gql(
      `query($id: ID!, $c: String!) { account(id: $id) { ${connection}(${direction}: $c, ${direction === 'after' ? 'first' : 'last'}: 50) { edges { cursor } pageInfo { hasNextPage hasPreviousPage } } } }`,
      { id: orgAcct, c: cursor },
      userToken,
    );

  it("a cursor naming another tenant's row answers like a cursor of no row (empty page), never a page of the caller's rows cut at that row", async () => {
    const missing = Buffer.from(`GPC:S:${randomUUID()}`).toString('base64');
    for (const connection of CONNECTIONS) {
      // Control: the caller's own cursor pages its own rows.
      expect(ok(await page(connection, 'after', ownCursor[connection])).account[connection].edges.length, `${connection} own`).toBeGreaterThan(0);
      for (const direction of ['after', 'before'] as const) {
        const foreign = await page(connection, direction, foreignCursor[connection]);
        const none = await page(connection, direction, missing);
        expect(ok(none).account[connection].edges, `${connection} ${direction} missing`).toEqual([]);
        expect(foreign.body, `${connection} ${direction} foreign`).toEqual(none.body);
      }
    }
  });
});

describe("a cursor of one of the caller's own accounts on the list of the other", () => {
  // README "Limits": a cursor is good only on the list of the account it came from. The caller
  // may read both accounts, so nothing is hidden here; the rule is the one for a cursor of another
  // tenant's row, and the answer that of a cursor of no row: an empty page.
  const page = (accountId: string, connection: Connection, direction: 'after' | 'before', cursor: string) =>
    srv.gql(
      `query($id: ID!, $c: String!) { account(id: $id) { ${connection}(${direction}: $c, ${direction === 'after' ? 'first' : 'last'}: 50) { edges { cursor } pageInfo { hasNextPage hasPreviousPage } } } }`,
      { id: accountId, c: cursor },
      userToken,
    );

  it("its USER account's cursor on the organization's list, and the organization's on its USER account's list, answer like a cursor of no row", async () => {
    const missing = Buffer.from(`GPC:S:${randomUUID()}`).toString('base64');
    for (const connection of CONNECTIONS) {
      for (const [list, cursor] of [
        [orgAcct, userCursor[connection]],
        [userAcct, ownCursor[connection]],
      ] as const) {
        for (const direction of ['after', 'before'] as const) {
          const other = await page(list, connection, direction, cursor);
          const none = await page(list, connection, direction, missing);
          expect(ok(none).account[connection].edges, `${connection} ${direction} missing`).toEqual([]);
          expect(other.body, `${connection} ${direction} ${list === orgAcct ? 'user cursor on the organization' : 'organization cursor on the user'}`).toEqual(none.body);
        }
      }
    }
  });
});

describe("an end user's node(id) of a credit alert", () => {
  it("another tenant's alert is null, exactly like an alert id of nothing; its own alert resolves", async () => {
    const NODE = `query($id: ID!) { node(id: $id) { id ... on CreditAlert { threshold available } } }`;
    expect(ok(await srv.gql(NODE, { id: alertId.own }, userToken)).node).toMatchObject({ id: alertId.own, threshold: 0 });
    expect(ok(await srv.gql(NODE, { id: alertId.foreign })).node).toMatchObject({ id: alertId.foreign }); // exists (admin)
    const foreign = await srv.gql(NODE, { id: alertId.foreign }, userToken);
    expect(ok(foreign).node).toBeNull();
    expect(foreign.body).toEqual((await srv.gql(NODE, { id: gid('CreditAlert', randomUUID()) }, userToken)).body);
  });
});
