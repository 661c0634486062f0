/**
 * Which account owns a reservation, remembered by the process that made the hold, so that its
 * settle can join its account's group-commit transaction without first asking the database
 * (issue #6, target 4: a job's settle paid one more query on the pool than its other
 * operations). A reservation's account never changes (no statement updates
 * `reservations.account_id`), so a remembered owner is never stale; a reservation this process
 * does not remember (made by another process, forgotten, or unknown) is looked up as before.
 */

import { BoundedMap } from '../util/bounded-map.js';

/** Default bound: about 15 MB of uuid pairs at most. */
export const DEFAULT_RESERVATION_OWNERS_CAPACITY = 100_000;

/**
 * A bounded map reservation id -> account id. When full, remembering one more forgets the
 * oldest remembered entry (insertion order); `forget` drops an entry whose hold was closed.
 */
export class ReservationOwners {
  private readonly owners: BoundedMap<string, string>;

  /**
   * @param capacity most entries kept (an integer >= 1).
   * @throws RangeError when `capacity` is not an integer >= 1.
   */
  constructor(capacity: number = DEFAULT_RESERVATION_OWNERS_CAPACITY) {
    this.owners = new BoundedMap(capacity);
  }

  /**
   * Remembers that `reservationId` belongs to `accountId` (uuids, as stored). Remembering one it
   * knows already changes nothing (its place in the eviction order stays its first one).
   */
  remember(reservationId: string, accountId: string): void {
    if (this.owners.get(reservationId) === undefined) this.owners.set(reservationId, accountId);
  }

  /** The remembered owner of `reservationId`, or undefined when this process does not know it. */
  ownerOf(reservationId: string): string | undefined {
    return this.owners.get(reservationId);
  }

  /** Forgets `reservationId` (its hold was settled or released: no more settles expected). */
  forget(reservationId: string): void {
    this.owners.delete(reservationId);
  }

  /** Entries kept now. */
  get size(): number {
    return this.owners.size;
  }
}
