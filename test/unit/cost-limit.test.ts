/**
 * The query cost estimate (src/graphql/cost-limit.ts): graphql-armor's, with page sizes passed as
 * variables counted like literal ones.
 */
import { describe, expect, it } from 'vitest';
import { parse, validate } from 'graphql';
import { costLimitRule } from '@escape.tech/graphql-armor-cost-limit';
import { schema } from '../../src/graphql/schema.js';
import { estimateOperationCost } from '../../src/graphql/cost-limit.js';

/** graphql-armor's own estimate of the (single) operation of `query`. */
function armorCost(query: string): number {
  let found = Number.NaN;
  validate(schema, parse(query), [costLimitRule({ maxCost: Number.MAX_SAFE_INTEGER, onAccept: [(_ctx, { n }) => (found = n)] })]);
  return found;
}

const UNPAGED_DOCUMENTS = [
  `{ priceBook { version } }`,
  `query($id: ID!) { account(id: $id) { id balance { total available } usage { edges { node { id cost lines { item amount } } } } } }`,
  `query($id: ID!) { account(id: $id) { ...A ledger { edges { node { ...E } } } } } fragment A on Account { id name batches { ...B } } fragment B on CreditBatch { id remaining } fragment E on LedgerEntry { id amount batch { ...B } }`,
];

const PAGED_DOCUMENTS = [
  `query($id: ID!) { account(id: $id) { usage(first: 20) { edges { node { id cost lines { item amount } } } } } }`,
  `query($id: ID!) { account(id: $id) { ledger(last: 3) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } } }`,
  `query($id: ID!) { node(id: $id) { ... on Account { id usage(first: 7) { edges { node { account { grants(first: 2) { edges { node { id } } } } } } } } } }`,
];

describe('estimateOperationCost', () => {
  it.each(UNPAGED_DOCUMENTS)('equals graphql-armor without page sizes: %s', (query) => {
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
    // Left out or null: like an absent argument (armor counts 1).
    const absent = armorCost(`query($id: ID!) { account(id: $id) { usage { edges { node { id } } } } }`);
    expect(estimateOperationCost(variable, undefined, {})!.cost).toBe(absent);
    expect(estimateOperationCost(variable, undefined, { n: null })!.cost).toBe(absent);
  });

  it('estimates the operation named, and answers null for a name the document lacks', () => {
    const document = parse(`query A { priceBook { version } } query B { settings { creditUsdValue } plans { id name } }`);
    expect(estimateOperationCost(document, 'B', null)!.cost).toBe(armorCost(`query B { settings { creditUsdValue } plans { id name } }`));
    expect(estimateOperationCost(document, 'C', null)).toBeNull();
  });
});
