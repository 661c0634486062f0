/**
 * The query cost estimate (src/graphql/cost-limit.ts): graphql-armor's, with page sizes passed as
 * variables counted like literal ones, and lists read without a page size counted for what they
 * serve (a connection's default page, a capped list's weight).
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync } from 'node:fs';
import { Kind, parse, validate, type DocumentNode } from 'graphql';
import { costLimitRule } from '@escape.tech/graphql-armor-cost-limit';
import { schema } from '../../src/graphql/schema.js';
import { CAPPED_LIST_COST_ITEMS, estimateOperationCost as estimateWithSchema } from '../../src/graphql/cost-limit.js';
import { DEFAULT_CONNECTION_SIZE } from '../../src/graphql/builder.js';
import { ACCOUNT_BATCHES_CAP, ACCOUNT_RESERVATIONS_CAP } from '../../src/graphql/types/account.js';
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

/** Documents reading no connection and no capped list: armor's estimate exactly. */
const UNPAGED_DOCUMENTS = [
  `{ priceBook { version } }`,
  `query($id: ID!) { account(id: $id) { id balance { total available } budgets { agentId limit } } }`,
  `query($id: ID!) { account(id: $id) { ...A } usageEvent(id: $id) { id lines { item amount } drawdowns { batch { ...B } } } } fragment A on Account { id name balance { total } } fragment B on CreditBatch { id remaining }`,
];

const PAGED_DOCUMENTS = [
  `query($id: ID!) { account(id: $id) { usage(first: 20) { edges { node { id cost lines { item amount } } } } } }`,
  `query($id: ID!) { account(id: $id) { ledger(last: 3) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } } }`,
  `query($id: ID!) { node(id: $id) { ... on Account { id usage(first: 7) { edges { node { account { grants(first: 2) { edges { node { id } } } } } } } } } }`,
];

describe('estimateOperationCost', () => {
  it.each(UNPAGED_DOCUMENTS)('equals graphql-armor without connections or capped lists: %s', (query) => {
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
