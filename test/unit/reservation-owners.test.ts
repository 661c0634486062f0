import { describe, expect, it } from 'vitest';
import { ReservationOwners } from '../../src/services/reservation-owners.js';

describe('ReservationOwners', () => {
  it('keeps at most `capacity` owners, forgetting the oldest remembered first', () => {
    const owners = new ReservationOwners(2);
    owners.remember('r1', 'a1');
    owners.remember('r2', 'a2');
    owners.remember('r1', 'a1'); // already known: neither refreshed nor counted twice
    owners.remember('r3', 'a3');
    expect([owners.ownerOf('r1'), owners.ownerOf('r2'), owners.ownerOf('r3')]).toEqual([undefined, 'a2', 'a3']);
    expect(owners.size).toBe(2);
    owners.forget('r2');
    expect(owners.ownerOf('r2')).toBeUndefined();
    expect(owners.size).toBe(1);
  });

  it('refuses a capacity below 1', () => {
    expect(() => new ReservationOwners(0)).toThrow(RangeError);
  });
});
