/**
 * The query cost estimate (src/graphql/cost-limit.ts): graphql-armor's, with page sizes passed as
 * variables counted like literal ones, and lists read without a page size counted for what they
 * serve (a connection's default page, a capped list's weight, a list sized by an argument its
 * value, a stated weight).
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { Kind, parse, validate, type DocumentNode } from 'graphql';
import { costLimitRule } from '@escape.tech/graphql-armor-cost-limit';
import { schema } from '../../src/graphql/schema.js';
import { CAPPED_LIST_COST_ITEMS, estimateOperationCost as estimateWithSchema } from '../../src/graphql/cost-limit.js';
import { DEFAULT_CONNECTION_SIZE } from '../../src/graphql/builder.js';
import {
  ACCOUNT_BATCHES_CAP,
  ACCOUNT_RESERVATIONS_CAP,
  USAGE_HISTORY_DEFAULT_MONTHS,
  USAGE_HISTORY_MAX_MONTHS,
} from '../../src/graphql/types/account.js';
import { DRAWDOWN_COST_ITEMS } from '../../src/graphql/types/ledger.js';
import { VIEWER_ACCOUNTS_MAX } from '../../src/graphql/queries.js';
import { USAGE_SUMMARY_MAX_ROWS } from '../../src/services/usage-summary.js';
import { parseEnv } from '../../src/config/env.js';

/** estimateOperationCost against the served schema. */
const estimateOperationCost = (document: DocumentNode, operationName: string | undefined, variables: Record<string, unknown> | null) =>
  estimateWithSchema(schema, document, operationName, variables);

/** graphql-armor's own estimate of the (single) operation of `query`. */
function armorCost(query: string): number {
  let found = Number.NaN;
  validate(schema, parse(query), [costLimitRule({ maxCost: Number.MAX_SAFE_INTEGER, onAccept: [(_ctx, { n }) => (found = n)] })]);
  return found;
}

/** Documents reading no connection and no weighted list (only lists counted as 1): armor's estimate exactly. */
const UNPAGED_DOCUMENTS = [
  `{ priceBook { version rules { category kind } } plans { id } creditPacks { id } modelPrices { model } }`,
  `query($id: ID!) { account(id: $id) { id balance { total available } } taskCost(accountId: $id, taskId: "t") { credits byCategory { category credits } } }`,
  `query($id: ID!) { account(id: $id) { ...A } usageEvent(id: $id) { id lines { item amount } reservation { id } } } fragment A on Account { id name balance { total } }`,
];

const PAGED_DOCUMENTS = [
  `query($id: ID!) { account(id: $id) { usage(first: 20) { edges { node { id cost lines { item amount } } } } } }`,
  `query($id: ID!) { account(id: $id) { ledger(last: 3) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } } }`,
  `query($id: ID!) { node(id: $id) { ... on Account { id usage(first: 7) { edges { node { account { grants(first: 2) { edges { node { id } } } } } } } } } }`,
];

describe('estimateOperationCost', () => {
  it.each(UNPAGED_DOCUMENTS)('equals graphql-armor without connections or weighted lists: %s', (query) => {
    expect(estimateOperationCost(parse(query), undefined, {})).toEqual({ cost: armorCost(query), usesVariables: false });
  });

  it.each(PAGED_DOCUMENTS)('is at most graphql-armor for literal page sizes: %s', (query) => {
    const estimate = estimateOperationCost(parse(query), undefined, {})!;
    expect(estimate.usesVariables).toBe(false);
    expect(estimate.cost).toBeLessThanOrEqual(armorCost(query));
  });

  it('multiplies what a page resolves per item by its size, and pageInfo once', () => {
    // account: 2 + 1.5 * usage; usage: 2 + 1.5 * (300 * edges + pageInfo);
    // edges: 2 + 1.5 * (cursor 1 + node (2 + 1.5 * id 1)) = 8.75; pageInfo: 2 + 1.5 * 2 = 5.
    const expected = 2 + 1.5 * (2 + 1.5 * (300 * 8.75 + 5));
    const literal = `query($id: ID!) { account(id: $id) { usage(first: 300) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } } }`;
    expect(estimateOperationCost(parse(literal), undefined, {})).toEqual({ cost: expected, usesVariables: false });
  });

  it('counts a page size passed as a variable (or its default) as the literal it stands for', () => {
    const literal = `query($id: ID!) { account(id: $id) { usage(first: 300) { edges { node { id } } } } }`;
    const expected = estimateOperationCost(parse(literal), undefined, {})!.cost;
    const variable = parse(`query($id: ID!, $n: Int) { account(id: $id) { usage(first: $n) { edges { node { id } } } } }`);
    expect(estimateOperationCost(variable, undefined, { n: 300 })).toEqual({ cost: expected, usesVariables: true });
    const defaulted = parse(`query($id: ID!, $n: Int = 300) { account(id: $id) { usage(first: $n) { edges { node { id } } } } }`);
    expect(estimateOperationCost(defaulted, undefined, {})).toEqual({ cost: expected, usesVariables: true });
    // Left out or null: like an absent argument, the default page.
    const absent = estimateOperationCost(parse(`query($id: ID!) { account(id: $id) { usage { edges { node { id } } } } }`), undefined, {})!.cost;
    expect(estimateOperationCost(variable, undefined, {})!.cost).toBe(absent);
    expect(estimateOperationCost(variable, undefined, { n: null })!.cost).toBe(absent);
  });

  it('counts a connection read without first / last as its default page (armor counted 1)', () => {
    // Fails before the fix: the unpaged connection cost what a page of one did.
    const unpaged = `query($id: ID!) { account(id: $id) { ledger { edges { node { id amount batch { id } } } pageInfo { hasNextPage } } } }`;
    const paged = unpaged.replace('ledger {', `ledger(first: ${DEFAULT_CONNECTION_SIZE}) {`);
    const expected = estimateOperationCost(parse(paged), undefined, {})!.cost;
    expect(estimateOperationCost(parse(unpaged), undefined, {})).toEqual({ cost: expected, usesVariables: false });
    expect(expected).toBeGreaterThan(armorCost(unpaged) * 10);
    // `first: null` serves the default page too.
    expect(estimateOperationCost(parse(unpaged.replace('ledger {', 'ledger(first: null) {')), undefined, {})!.cost).toBe(expected);
  });

  it('counts a capped plain list (Account.batches, Account.reservations) as its weight, each child once per item', () => {
    // Fails before the fix: the lists cost one item each.
    const items = Math.min(ACCOUNT_BATCHES_CAP, CAPPED_LIST_COST_ITEMS);
    expect(Math.min(ACCOUNT_RESERVATIONS_CAP, CAPPED_LIST_COST_ITEMS)).toBe(items);
    // account: 2 + 1.5 * (batches + reservations); each: 2 + 1.5 * items * (1 + 1 + __typename 1).
    const query = `query($id: ID!) { account(id: $id) { batches { id remaining __typename } reservations(status: [ACTIVE]) { id amount __typename } } }`;
    const list = 2 + 1.5 * items * 3;
    expect(estimateOperationCost(parse(query), undefined, {})).toEqual({ cost: 2 + 1.5 * (list + list), usesVariables: false });
    // Through a fragment on Account, and under a page: the page multiplies the list.
    const nested = `query($id: ID!) { account(id: $id) { usage(first: 2) { edges { node { account { ...L } } } } } } fragment L on Account { batches { id } }`;
    const fragment = 2 + 1.5 * (2 + 1.5 * items * 1);
    const node = 2 + 1.5 * (2 + 1.5 * (1 + 1.5 * fragment));
    expect(estimateOperationCost(parse(nested), undefined, {})!.cost).toBe(2 + 1.5 * (2 + 1.5 * 2 * (2 + 1.5 * node)));
  });

  it('counts usageHistory by its months argument: a literal, a variable, the variable\'s default, else the schema\'s default; at most the cap', () => {
    // account: 2 + 1.5 * usageHistory; usageHistory: 2 + 1.5 * months * (month 1 + total 1 + byCategory (2 + 1.5 * 2)).
    const cost = (months: number) => 2 + 1.5 * (2 + 1.5 * months * 7);
    const query = (months: string, variables = '') => parse(`query($id: ID!${variables}) { account(id: $id) { usageHistory${months} { month total byCategory { category credits } } } }`);
    // Fails before the fix: every one of these cost what one month did.
    expect(estimateOperationCost(query('(months: 60)'), undefined, {})).toEqual({ cost: cost(60), usesVariables: false });
    expect(estimateOperationCost(query(''), undefined, {})).toEqual({ cost: cost(USAGE_HISTORY_DEFAULT_MONTHS), usesVariables: false });
    const variable = query('(months: $m)', ', $m: Int');
    expect(estimateOperationCost(variable, undefined, { m: 60 })).toEqual({ cost: cost(60), usesVariables: true });
    expect(estimateOperationCost(query('(months: $m)', ', $m: Int = 60'), undefined, {})).toEqual({ cost: cost(60), usesVariables: true });
    // Left out or null: the resolver serves the schema's default.
    expect(estimateOperationCost(variable, undefined, {})!.cost).toBe(cost(USAGE_HISTORY_DEFAULT_MONTHS));
    expect(estimateOperationCost(variable, undefined, { m: null })!.cost).toBe(cost(USAGE_HISTORY_DEFAULT_MONTHS));
    // Beyond the cap the resolver refuses: counted at the cap; 0 or less as armor's minimum of 1.
    expect(estimateOperationCost(variable, undefined, { m: 100_000 })!.cost).toBe(cost(USAGE_HISTORY_MAX_MONTHS));
    expect(estimateOperationCost(variable, undefined, { m: 0 })!.cost).toBe(cost(1));
  });

  it('counts recordUsageBatch by the inputs sent, as a list literal or a variable, at most CAPPED_LIST_COST_ITEMS', () => {
    // recordUsageBatch: 2 + 1.5 * inputs * (errorCode 1 + event (2 + 1.5 * id 1)).
    const cost = (inputs: number) => 2 + 1.5 * inputs * 4.5;
    const variable = parse(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode event { id } } }`);
    const input = { accountId: 'a', idempotencyKey: 'k', category: 'unit' };
    // Fails before the fix: a batch cost what one item did.
    expect(estimateOperationCost(variable, undefined, { inputs: Array.from({ length: 60 }, () => input) })).toEqual({ cost: cost(60), usesVariables: true });
    const literal = parse(`mutation($a: RecordUsageInput!) { recordUsageBatch(inputs: [$a, $a, {accountId: "a", idempotencyKey: "k", category: "unit"}]) { errorCode event { id } } }`);
    expect(estimateOperationCost(literal, undefined, { a: input })).toEqual({ cost: cost(3), usesVariables: false });
    // One object where the list is expected is a list of one (input coercion); more than the
    // weight counts as the weight (its results are the rows the call wrote; module comment).
    expect(estimateOperationCost(variable, undefined, { inputs: input })!.cost).toBe(cost(1));
    expect(estimateOperationCost(variable, undefined, { inputs: new Array(1000).fill(input) })!.cost).toBe(cost(CAPPED_LIST_COST_ITEMS));
  });

  it('counts usageSummary as a capped list, budgets and userBudgets at the capped weight, Viewer.accounts as its 2, drawdowns at their weight', () => {
    // Fails before the fix: each list counted one item.
    const list = (items: number, children: number) => 2 + 1.5 * items * children;
    const account = `query($id: ID!) { account(id: $id) { usageSummary(groupBy: [MODEL]) { model credits } budgets { agentId limit spent } userBudgets { userId } } }`;
    const summaryItems = Math.min(USAGE_SUMMARY_MAX_ROWS, CAPPED_LIST_COST_ITEMS);
    expect(estimateOperationCost(parse(account), undefined, {})!.cost).toBe(
      2 + 1.5 * (list(summaryItems, 2) + list(CAPPED_LIST_COST_ITEMS, 3) + list(CAPPED_LIST_COST_ITEMS, 1)),
    );
    // viewer: 2 + 1.5 * accounts; accounts: 2 + 1.5 * 2 * (id 1 + name 1).
    expect(VIEWER_ACCOUNTS_MAX).toBe(2);
    expect(estimateOperationCost(parse(`{ viewer { accounts { id name } } }`), undefined, {})!.cost).toBe(2 + 1.5 * list(VIEWER_ACCOUNTS_MAX, 2));
    // usageEvent: 2 + 1.5 * (id 1 + drawdowns); drawdowns: 2 + 1.5 * items * (amount 1 + batch (2 + 1.5 * id 1)).
    const event = `query($id: ID!) { usageEvent(id: $id) { id drawdowns { amount batch { id } } } }`;
    expect(estimateOperationCost(parse(event), undefined, {})!.cost).toBe(2 + 1.5 * (1 + list(DRAWDOWN_COST_ITEMS, 4.5)));
  });

  /**
   * One document per newly weighted list, each under the default limit while the list counted as
   * one item (checked against the old estimate) and beyond it now, by the list's weight alone.
   */
  const REFUSED_FOR_THE_LIST: [string, string, Record<string, unknown>][] = [
    ['usageSummary', `query($id: ID!) { account(id: $id) { usage(first: 20) { edges { node { account { usageSummary(groupBy: [TASK]) { taskId credits events } } } } } } }`, {}],
    ['usageHistory', `query($id: ID!) { account(id: $id) { usage(first: 20) { edges { node { account { usageHistory(months: 120) { month total byCategory { category credits } } } } } } } }`, {}],
    ['usageHistory (months as a variable)', `query($id: ID!, $m: Int) { account(id: $id) { usage(first: 20) { edges { node { account { usageHistory(months: $m) { month total byCategory { category credits } } } } } } } }`, { m: 120 }],
    ['budgets', `query($id: ID!) { account(id: $id) { usage(first: 20) { edges { node { account { budgets { agentId limit spent } } } } } } }`, {}],
    ['userBudgets', `query($id: ID!) { account(id: $id) { usage(first: 20) { edges { node { account { userBudgets { userId limit spent } } } } } } }`, {}],
    ['Viewer.accounts', `{ viewer { accounts { usage(first: 500) { edges { node { id cost } } } } } }`, {}],
    ['drawdowns', `query($id: ID!) { account(id: $id) { usage(first: 200) { edges { node { id drawdowns { amount batch { id remaining } } } } } } }`, {}],
    [
      'recordUsageBatch',
      `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { event { account { usage(first: 20) { edges { node { id } } } } } } }`,
      { inputs: Array.from({ length: 100 }, (_, i) => ({ accountId: 'a', idempotencyKey: `k${i}`, category: 'unit' })) },
    ],
  ];

  it.each(REFUSED_FOR_THE_LIST)('refuses a document it used to accept for the rows %s serves', (_field, query, variables) => {
    const maxCost = parseEnv({}).GRAPHQL_MAX_COST;
    expect(estimateOperationCost(parse(query), undefined, variables)!.cost).toBeGreaterThan(maxCost);
  });

  it('keeps the project\'s batches under the default GRAPHQL_MAX_COST at the sizes it sends them', () => {
    // demo/replay.ts sends RecordUsageBatch (drawdowns included) 100 inputs at a time;
    // bench/record-usage.ts sends RecordUsageBatchLean up to MAX_BATCH_ITEMS inputs at a time.
    const env = parseEnv({});
    const document = parse(readFileSync(new URL('../../schema/operations/usage.graphql', import.meta.url), 'utf8'));
    const inputs = (n: number) => Array.from({ length: n }, (_, i) => ({ accountId: 'a', idempotencyKey: `k${i}`, category: 'unit' }));
    expect(estimateOperationCost(document, 'RecordUsageBatch', { inputs: inputs(100) })!.cost).toBeLessThan(env.GRAPHQL_MAX_COST);
    expect(estimateOperationCost(document, 'RecordUsageBatchLean', { inputs: inputs(env.MAX_BATCH_ITEMS) })!.cost).toBeLessThan(env.GRAPHQL_MAX_COST);
    // An integrator's full batch with its events' fields and cost lines fits too.
    const rich = parse(`mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) {
      event { id cost occurredAt category model agentId taskId idempotencyKey lines { kind quantity amount } } errorCode errorMessage } }`);
    expect(estimateOperationCost(rich, undefined, { inputs: inputs(env.MAX_BATCH_ITEMS) })!.cost).toBeLessThan(env.GRAPHQL_MAX_COST);
  });

  it('keeps every operation of schema/operations (demo, bench, SDK) under the default GRAPHQL_MAX_COST', () => {
    const maxCost = parseEnv({}).GRAPHQL_MAX_COST;
    const dir = new URL('../../schema/operations/', import.meta.url);
    let operations = 0;
    for (const file of readdirSync(dir).filter((f) => f.endsWith('.graphql'))) {
      const document = parse(readFileSync(new URL(file, dir), 'utf8'));
      for (const d of document.definitions) {
        if (d.kind !== Kind.OPERATION_DEFINITION) continue;
        operations++;
        expect(estimateOperationCost(document, d.name?.value, {})!.cost, `${file} ${d.name?.value}`).toBeLessThan(maxCost / 2);
      }
    }
    expect(operations).toBeGreaterThan(5);
  });

  it('estimates the operation named, and answers null for a name the document lacks', () => {
    const document = parse(`query A { priceBook { version } } query B { settings { creditUsdValue } plans { id name } }`);
    expect(estimateOperationCost(document, 'B', null)!.cost).toBe(armorCost(`query B { settings { creditUsdValue } plans { id name } }`));
    expect(estimateOperationCost(document, 'C', null)).toBeNull();
  });
});
