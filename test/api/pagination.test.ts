/**
 * The Account connections (usage, ledger, grants, alerts) over HTTP: paging forward with
 * `first`/`after` and backward with `last`/`before` visits every row exactly once, in the order
 * of the one-page answer, also when the rows share their timestamps (one recordUsageBatch: one
 * transaction, one instant); and a cursor that is not one of these lists' cursors is
 * BAD_USER_INPUT, never an INTERNAL_SERVER_ERROR.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, expectError, grant, ok, uniq } from './helpers.js';

const CONNECTIONS = ['usage', 'ledger', 'grants', 'alerts'] as const;
type Connection = (typeof CONNECTIONS)[number];

const PAGE = (c: Connection) => `query($id: ID!, $first: Int, $after: String, $last: Int, $before: String) {
  account(id: $id) { ${c}(first: $first, after: $after, last: $last, before: $before) {
    edges { cursor node { id } } pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } } }`;

let srv: TestServer;
let acct: string;

beforeAll(async () => {
  srv = await startTestServer();
  acct = await apiAccount(srv, { paid: '30' });
  for (let i = 0; i < 4; i++) await grant(srv, acct, '2.5', 'FREE');
  // 40 credits spent in one batch: one transaction, so the events share recorded_at and
  // occurred_at, the ledger entries their created_at, and the 25/15/0 % alerts theirs.
  const at = '2026-03-01T12:00:00.000Z';
  const inputs = Array.from({ length: 40 }, () => ({ accountId: acct, idempotencyKey: uniq('u'), category: 'unit', occurredAt: at }));
  const res = ok(await srv.gql(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode event { id } } }`, { inputs }));
  expect(res.recordUsageBatch.every((r: { errorCode: string | null }) => r.errorCode === null)).toBe(true);
});

afterAll(async () => {
  await srv?.close();
});

async function page(c: Connection, vars: Record<string, unknown>) {
  return ok(await srv.gql(PAGE(c), { id: acct, ...vars })).account[c] as {
    edges: { cursor: string; node: { id: string } }[];
    pageInfo: { hasNextPage: boolean; hasPreviousPage: boolean; startCursor: string | null; endCursor: string | null };
  };
}

describe('paging', () => {
  for (const c of CONNECTIONS) {
    it(`${c}: pages of 3 forward and backward give every row once, in the one-page order`, async () => {
      const all = (await page(c, { first: 500 })).edges.map((e) => e.node.id);
      expect(all.length).toBeGreaterThanOrEqual(3);
      expect(new Set(all).size).toBe(all.length);

      const forward: string[] = [];
      let after: string | null = null;
      for (;;) {
        const p = await page(c, { first: 3, after });
        forward.push(...p.edges.map((e) => e.node.id));
        if (!p.pageInfo.hasNextPage) break;
        after = p.pageInfo.endCursor;
      }
      expect(forward).toEqual(all);

      const backward: string[] = [];
      let before: string | null = null;
      for (;;) {
        const p = await page(c, { last: 3, before });
        backward.unshift(...p.edges.map((e) => e.node.id));
        if (!p.pageInfo.hasPreviousPage) break;
        before = p.pageInfo.startCursor;
      }
      expect(backward).toEqual(all);
    });
  }
});

describe('cursors that are not cursors of the list', () => {
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const bad: Array<[string, string]> = [
    ['a string cursor whose value is not a uuid', b64('GPC:S:not-a-uuid')],
    ['a number cursor', b64('GPC:N:5')],
    ['a bigint cursor', b64('GPC:I:5')],
    ['a date cursor', b64('GPC:D:1700000000000')],
    ['a null cursor', b64('GPC:Z:')],
    ['an empty string cursor', b64('GPC:S:')],
    ['not base64', 'garbage!'],
    ['another plugin namespace', b64('XYZ:S:00000000-0000-4000-8000-000000000000')],
  ];
  for (const c of CONNECTIONS) {
    for (const [name, cursor] of bad) {
      it(`${c}: ${name} is BAD_USER_INPUT as after and as before`, async () => {
        expectError(await srv.gql(PAGE(c), { id: acct, first: 2, after: cursor }), 'BAD_USER_INPUT');
        expectError(await srv.gql(PAGE(c), { id: acct, last: 2, before: cursor }), 'BAD_USER_INPUT');
      });
    }
  }

  it('a well-formed cursor of no row gives an empty page (control: not an error)', async () => {
    const cursor = b64('GPC:S:00000000-0000-4000-8000-000000000000');
    for (const c of CONNECTIONS) expect((await page(c, { first: 2, after: cursor })).edges).toEqual([]);
  });
});
