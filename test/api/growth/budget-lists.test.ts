/**
 * Account.budgets and Account.userBudgets serve at most ACCOUNT_BUDGETS_CAP (1,000) budgets, in
 * subject id order (bytes), and `after` (the last subject id of the answer) reads on, so an
 * organization with more budgeted agents or users than that still reads them all (README
 * "Limits"); the query cost estimate weighs them as the other capped lists
 * (src/graphql/cost-limit.ts: CAPPED_LIST_COST_ITEMS items). Before, nothing bounded the list.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'graphql';
import { startTestServer, type TestServer } from '../../setup/test-server.js';
import { dbId, ok } from '../helpers.js';
import { createAccount } from './growth-helpers.js';
import { CAPPED_LIST_COST_ITEMS, estimateOperationCost } from '../../../src/graphql/cost-limit.js';
import { schema } from '../../../src/graphql/schema.js';
import { ACCOUNT_BUDGETS_CAP } from '../../../src/graphql/growth.js';

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer();
});

afterAll(async () => {
  await srv?.close();
});

/** Gives account `accountId` a budget of 1 credit for each of `ids` (one statement). */
async function budgetsFor(accountId: string, kind: 'AGENT' | 'USER', ids: string[]): Promise<void> {
  await srv.services.pool.query(
    `INSERT INTO spending_budgets (id, account_id, subject_kind, subject_id, limit_micro_credits)
     SELECT gen_random_uuid(), $1, $2, s, 1000000 FROM unnest($3::text[]) AS s`,
    [accountId, kind, ids],
  );
}

/** Subject ids whose byte order is not their order under a linguistic collation ("B" < "a"). */
const subjects = (prefix: string, n: number) =>
  Array.from({ length: n }, (_, i) => `${i % 2 ? prefix.toUpperCase() : prefix}-${String(i).padStart(4, '0')}`);
const byteOrder = (ids: string[]) => [...ids].sort((a, b) => (Buffer.compare(Buffer.from(a), Buffer.from(b))));

describe('Account.budgets and userBudgets over the cap', () => {
  it('serve at most ACCOUNT_BUDGETS_CAP rows in subject id order, and `after` reads the rest', async () => {
    expect(ACCOUNT_BUDGETS_CAP).toBe(1_000);
    const org = (await createAccount(srv)).id;
    const agents = subjects('agent', 2_500);
    const users = subjects('user', 1_300);
    await budgetsFor(dbId(org), 'AGENT', agents);
    await budgetsFor(dbId(org), 'USER', users);
    const Q = `query($id: ID!, $a: String, $u: String) { account(id: $id) { budgets(after: $a) { agentId limit } userBudgets(after: $u) { userId } } }`;
    const read = async (field: 'budgets' | 'userBudgets', key: 'agentId' | 'userId') => {
      const seen: string[] = [];
      const pages: number[] = [];
      let after: string | null = null;
      for (;;) {
        const res = ok(await srv.gql(Q, { id: org, [field === 'budgets' ? 'a' : 'u']: after })).account[field] as Array<Record<string, string>>;
        pages.push(res.length);
        seen.push(...res.map((b) => b[key]!));
        if (res.length < ACCOUNT_BUDGETS_CAP) return { seen, pages };
        after = res[res.length - 1]![key]!;
      }
    };
    const a = await read('budgets', 'agentId');
    expect(a.pages).toEqual([1_000, 1_000, 500]);
    expect(a.seen).toEqual(byteOrder(agents));
    const u = await read('userBudgets', 'userId');
    expect(u.pages).toEqual([1_000, 300]);
    expect(u.seen).toEqual(byteOrder(users));
  });

  it('weigh as the other capped lists: the estimate counts CAPPED_LIST_COST_ITEMS items', () => {
    const one = estimateOperationCost(schema, parse(`query { account(id: "x") { budgets { agentId } } }`), null, {})!.cost;
    const two = estimateOperationCost(schema, parse(`query { account(id: "x") { budgets { agentId limit } } }`), null, {})!.cost;
    // Each further field of an item adds its cost once per item the list is counted for.
    expect((two - one) / (1.5 * 1.5)).toBe(CAPPED_LIST_COST_ITEMS);
    const u1 = estimateOperationCost(schema, parse(`query { account(id: "x") { userBudgets { userId } } }`), null, {})!.cost;
    const u2 = estimateOperationCost(schema, parse(`query { account(id: "x") { userBudgets(after: "u") { userId limit } } }`), null, {})!.cost;
    expect((u2 - u1) / (1.5 * 1.5)).toBe(CAPPED_LIST_COST_ITEMS);
  });
});
