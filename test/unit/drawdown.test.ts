import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  compareDrawdownOrder,
  drawdownOrder,
  isSpendable,
  planDrawdown,
  type DrawableBatch,
} from '../../src/ledger/drawdown.js';

const T0 = Date.UTC(2026, 10, 21, 10, 0, 0);
const at = (ms: number) => new Date(T0 + ms);
const DAY = 86_400_000;

function batch(p: Partial<DrawableBatch> & { id: string }): DrawableBatch {
  return {
    type: 'PAID',
    remainingMicroCredits: 1_000_000n,
    expiresAt: null,
    addedAt: at(-DAY),
    ...p,
  };
}

describe('drawdown order', () => {
  it('draws FREE before PAID even when the PAID batch expires sooner and is older', () => {
    const paid = batch({ id: 'a-paid', type: 'PAID', expiresAt: at(DAY), addedAt: at(-10 * DAY) });
    const free = batch({ id: 'z-free', type: 'FREE', expiresAt: null, addedAt: at(-DAY) });
    expect(drawdownOrder([paid, free], at(0)).map((b) => b.id)).toEqual(['z-free', 'a-paid']);
  });

  it('within a type: soonest expiry first, never-expiring last', () => {
    const never = batch({ id: 'never', addedAt: at(-30 * DAY) });
    const late = batch({ id: 'late', expiresAt: at(30 * DAY) });
    const soon = batch({ id: 'soon', expiresAt: at(DAY) });
    expect(drawdownOrder([never, late, soon], at(0)).map((b) => b.id)).toEqual(['soon', 'late', 'never']);
  });

  it('same expiry: oldest addedAt first, then id', () => {
    const exp = at(5 * DAY);
    const newer = batch({ id: 'a', expiresAt: exp, addedAt: at(-DAY) });
    const older = batch({ id: 'b', expiresAt: exp, addedAt: at(-2 * DAY) });
    const olderC = batch({ id: 'c', expiresAt: exp, addedAt: at(-2 * DAY) });
    expect(drawdownOrder([newer, olderC, older], at(0)).map((b) => b.id)).toEqual(['b', 'c', 'a']);
  });

  it('never-expiring batches are ordered by addedAt then id', () => {
    const x = batch({ id: 'x', addedAt: at(-DAY) });
    const y = batch({ id: 'y', addedAt: at(-DAY) });
    const w = batch({ id: 'w', addedAt: at(-3 * DAY) });
    expect(drawdownOrder([y, x, w], at(0)).map((b) => b.id)).toEqual(['w', 'x', 'y']);
  });

  it('a batch at exactly its expiresAt does not pay; 1 ms before it does', () => {
    const b = batch({ id: 'b', type: 'FREE', expiresAt: at(0) });
    expect(isSpendable(b, at(0))).toBe(false);
    expect(isSpendable(b, at(-1))).toBe(true);
    expect(planDrawdown([b], 500n, at(0))).toEqual({ parts: [], drawnMicroCredits: 0n, shortfallMicroCredits: 500n });
    expect(planDrawdown([b], 500n, at(-1)).parts).toEqual([{ batchId: 'b', amountMicroCredits: 500n }]);
  });

  it('skips empty batches and does not mutate its input', () => {
    const input = [batch({ id: 'p' }), batch({ id: 'e', type: 'FREE', remainingMicroCredits: 0n })];
    const copy = input.map((b) => ({ ...b }));
    expect(drawdownOrder(input, at(0)).map((b) => b.id)).toEqual(['p']);
    expect(input).toEqual(copy);
  });

  it('compareDrawdownOrder is 0 only for the same key', () => {
    const a = batch({ id: 'a' });
    expect(compareDrawdownOrder(a, { ...a })).toBe(0);
    expect(compareDrawdownOrder(a, { ...a, id: 'b' })).toBeLessThan(0);
  });
});

describe('planDrawdown', () => {
  it('takes from FREE first, then PAID, partially from the last', () => {
    const free = batch({ id: 'free', type: 'FREE', remainingMicroCredits: 300n, expiresAt: at(DAY) });
    const paid = batch({ id: 'paid', type: 'PAID', remainingMicroCredits: 1000n });
    expect(planDrawdown([paid, free], 500n, at(0))).toEqual({
      parts: [
        { batchId: 'free', amountMicroCredits: 300n },
        { batchId: 'paid', amountMicroCredits: 200n },
      ],
      drawnMicroCredits: 500n,
      shortfallMicroCredits: 0n,
    });
  });

  it('reports the shortfall when batches run out', () => {
    const b = batch({ id: 'only', remainingMicroCredits: 100n });
    expect(planDrawdown([b], 250n, at(0))).toEqual({
      parts: [{ batchId: 'only', amountMicroCredits: 100n }],
      drawnMicroCredits: 100n,
      shortfallMicroCredits: 150n,
    });
  });

  it('draws nothing for a zero amount', () => {
    expect(planDrawdown([batch({ id: 'a' })], 0n, at(0))).toEqual({ parts: [], drawnMicroCredits: 0n, shortfallMicroCredits: 0n });
  });

  it('rejects a negative amount (assertion)', () => {
    expect(() => planDrawdown([], -1n, at(0))).toThrow(/assertion failed/);
  });
});

const batchArb = fc.record({
  type: fc.constantFrom<'FREE' | 'PAID'>('FREE', 'PAID'),
  remainingMicroCredits: fc.bigInt({ min: 0n, max: 5_000_000n }),
  // Expiry around "now" (some expired, some exactly now, some later) or never.
  expiresAtMs: fc.option(fc.integer({ min: -3, max: 6 }).map((d) => d * DAY), { nil: null }),
  addedAtMs: fc.integer({ min: -5, max: 0 }).map((d) => d * DAY),
});
const batchesArb = fc.array(batchArb, { maxLength: 12 }).map((bs) =>
  bs.map((b, i): DrawableBatch => ({
    id: `b${String(i).padStart(2, '0')}`,
    type: b.type,
    remainingMicroCredits: b.remainingMicroCredits,
    expiresAt: b.expiresAtMs === null ? null : at(b.expiresAtMs),
    addedAt: at(b.addedAtMs),
  })),
);

describe('planDrawdown properties', () => {
  const now = at(0);
  const prop = (check: (batches: DrawableBatch[], amount: bigint) => void) =>
    fc.assert(fc.property(batchesArb, fc.bigInt({ min: 0n, max: 40_000_000n }), check), { numRuns: 400 });

  it('parts sum to the drawn amount, drawn + shortfall == requested, every part > 0', () => {
    prop((batches, amount) => {
      const plan = planDrawdown(batches, amount, now);
      expect(plan.parts.reduce((s, p) => s + p.amountMicroCredits, 0n)).toBe(plan.drawnMicroCredits);
      expect(plan.drawnMicroCredits + plan.shortfallMicroCredits).toBe(amount);
      expect(plan.shortfallMicroCredits >= 0n).toBe(true);
      for (const p of plan.parts) expect(p.amountMicroCredits > 0n).toBe(true);
    });
  });

  it('no part exceeds its batch remaining, each batch at most once, only spendable batches pay', () => {
    prop((batches, amount) => {
      const byId = new Map(batches.map((b) => [b.id, b]));
      const plan = planDrawdown(batches, amount, now);
      const ids = plan.parts.map((p) => p.batchId);
      expect(new Set(ids).size).toBe(ids.length);
      for (const p of plan.parts) {
        const b = byId.get(p.batchId);
        expect(b).toBeDefined();
        expect(p.amountMicroCredits <= b!.remainingMicroCredits).toBe(true);
        expect(isSpendable(b!, now)).toBe(true);
      }
    });
  });

  it('respects the order: parts follow the drawdown order, and every part but the last empties its batch', () => {
    prop((batches, amount) => {
      const plan = planDrawdown(batches, amount, now);
      const order = drawdownOrder(batches, now).map((b) => b.id);
      expect(plan.parts.map((p) => p.batchId)).toEqual(order.slice(0, plan.parts.length));
      const byId = new Map(batches.map((b) => [b.id, b]));
      plan.parts.slice(0, -1).forEach((p) => expect(p.amountMicroCredits).toBe(byId.get(p.batchId)!.remainingMicroCredits));
      // FREE parts come before PAID parts.
      const types = plan.parts.map((p) => byId.get(p.batchId)!.type);
      expect(types.join(',')).toMatch(/^(FREE,?)*(PAID,?)*$/);
    });
  });

  it('shortfall > 0 only when every spendable batch is fully used', () => {
    prop((batches, amount) => {
      const plan = planDrawdown(batches, amount, now);
      const spendable = batches.filter((b) => isSpendable(b, now));
      const available = spendable.reduce((s, b) => s + b.remainingMicroCredits, 0n);
      if (plan.shortfallMicroCredits > 0n) {
        expect(plan.drawnMicroCredits).toBe(available);
        for (const b of spendable.filter((b) => b.remainingMicroCredits > 0n)) {
          expect(plan.parts.find((p) => p.batchId === b.id)?.amountMicroCredits).toBe(b.remainingMicroCredits);
        }
      } else {
        expect(amount <= available).toBe(true);
      }
    });
  });

  it('the drawdown order is a total order consistent with the rule', () => {
    prop((batches) => {
      const ordered = drawdownOrder(batches, now);
      for (let i = 1; i < ordered.length; i++) {
        const a = ordered[i - 1]!;
        const b = ordered[i]!;
        expect(compareDrawdownOrder(a, b)).toBeLessThan(0);
        if (a.type === b.type) {
          const ae = a.expiresAt?.getTime() ?? Infinity;
          const be = b.expiresAt?.getTime() ?? Infinity;
          expect(ae <= be).toBe(true);
          if (ae === be) expect(a.addedAt.getTime() <= b.addedAt.getTime()).toBe(true);
        } else {
          expect(a.type).toBe('FREE');
        }
      }
    });
  });
});
