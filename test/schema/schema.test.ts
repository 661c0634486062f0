/**
 * The printed SDL is committed and current, and compatible with the public contract
 * (../shared/contract/schema.graphql, copied to schema/contract.graphql).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { buildSchema, findBreakingChanges } from 'graphql';
import { printedSchema } from '../../src/graphql/print-schema.js';

const read = (p: string) => readFileSync(new URL(`../../${p}`, import.meta.url), 'utf8');

/**
 * Contract coordinates not delivered yet, each with the issue that delivers it. This is the ONE
 * place that lists them; every later issue empties its part. Anything else missing fails.
 */
const PENDING: Record<string, string> = {
  // issue 3: live credit bars
  // issue 4: workers (plans, packs, auto top-up, alerts, test clocks)
  RolloverPolicy: '#4',
  Plan: '#4',
  PlanSubscription: '#4',
  CreditPack: '#4',
  AutoTopUpSettings: '#4',
  CreatePlanInput: '#4',
  CreateCreditPackInput: '#4',
  SetAutoTopUpInput: '#4',
  'Account.subscription': '#4',
  'Account.autoTopUp': '#4',
  'Query.plans': '#4',
  'Query.creditPacks': '#4',
  'Mutation.createPlan': '#4',
  'Mutation.subscribeToPlan': '#4',
  'Mutation.cancelSubscription': '#4',
  'Mutation.createCreditPack': '#4',
  'Mutation.purchaseCreditPack': '#4',
  'Mutation.setAutoTopUp': '#4',
  'Mutation.advanceTestClock': '#4',
};

describe('schema', () => {
  it('schema/schema.graphql is what the code prints today (run `npm run schema:print`)', () => {
    expect(read('schema/schema.graphql')).toBe(printedSchema());
  });

  it('schema/contract.graphql is the current public contract', () => {
    const shared = new URL('../../../shared/contract/schema.graphql', import.meta.url);
    let upstream: string | null = null;
    try {
      upstream = readFileSync(shared, 'utf8');
    } catch {
      upstream = null; // a checkout without ../shared: the committed copy is the reference
    }
    if (upstream !== null) expect(read('schema/contract.graphql')).toBe(upstream);
    expect(read('schema/contract.graphql')).toContain('type Mutation');
  });

  it('breaks nothing in the contract except the coordinates still pending', () => {
    const changes = findBreakingChanges(buildSchema(read('schema/contract.graphql')), buildSchema(printedSchema()));
    const unexpected = changes.filter((c) => {
      const m = /^([A-Za-z]+(?:\.[A-Za-z]+)?) was removed\.$/.exec(c.description);
      return !(m && m[1] && PENDING[m[1]]);
    });
    expect(unexpected.map((c) => `${c.type}: ${c.description}`)).toEqual([]);
    // Every pending entry is really still missing (an entry left behind after delivery fails).
    const removed = new Set(changes.map((c) => /^(\S+) was removed\.$/.exec(c.description)?.[1]));
    expect(Object.keys(PENDING).filter((k) => !removed.has(k))).toEqual([]);
  });
});
