import { describe, expect, it } from 'vitest';
import { BoundedMap } from '../../src/util/bounded-map.js';

describe('BoundedMap (the per-process memos)', () => {
  it('keeps at most capacity entries, forgetting the one set longest ago; setting a key again makes it the newest', () => {
    const m = new BoundedMap<string, number>(2);
    m.set('a', 1);
    m.set('b', 2);
    m.set('a', 3); // a is now the newest
    m.set('c', 4); // forgets b, the oldest
    expect([m.get('a'), m.get('b'), m.get('c'), m.size]).toEqual([3, undefined, 4, 2]);
    m.delete('a');
    expect([m.get('a'), m.size]).toEqual([undefined, 1]);
  });

  it('iterates its entries oldest first, and may delete while iterating or forget them all', () => {
    const m = new BoundedMap<string, number>(3);
    m.set('a', 1);
    m.set('b', 2);
    m.set('c', 3);
    m.set('a', 4);
    expect([...m]).toEqual([['b', 2], ['c', 3], ['a', 4]]);
    for (const [k, v] of m) if (v % 2 === 0) m.delete(k);
    expect([...m]).toEqual([['c', 3]]);
    m.clear();
    expect([[...m], m.size, m.get('c')]).toEqual([[], 0, undefined]);
  });

  it('refuses a capacity that is not an integer >= 1', () => {
    for (const capacity of [0, -1, 1.5, Number.NaN]) expect(() => new BoundedMap(capacity)).toThrow(RangeError);
  });
});
