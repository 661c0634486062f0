/**
 * Which account owns a reservation, remembered by the process that made the hold, so that its
 * settle can join its account's group-commit transaction without first asking the database
 * (issue #6, target 4: a job's settle paid one more query on the pool than its other
 * operations). A reservation's account never changes (no statement updates
 * `reservations.account_id`), so a remembered owner is never stale; a reservation this process
 * does not remember (made by another process, forgotten, or unknown) is looked up as before.
 */

/** Default bound: about 15 MB of uuid pairs at most. */
export const DEFAULT_RESERVATION_OWNERS_CAPACITY = 100_000;

/**
 * A bounded map reservation id -> account id. When full, remembering one more forgets the
 * oldest remembered entry (insertion order); `forget` drops an entry whose hold was closed.
 */
export class ReservationOwners {
  private readonly owners = new Map<string, string>();

  /** @param capacity most entries kept (>= 1). */
  constructor(private readonly capacity: number = DEFAULT_RESERVATION_OWNERS_CAPACITY) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('capacity must be an integer >= 1');
  }

  /** Remembers that `reservationId` belongs to `accountId` (uuids, as stored). */
  remember(reservationId: string, accountId: string): void {
    if (this.owners.has(reservationId)) return;
    if (this.owners.size >= this.capacity) {
      const oldest = this.owners.keys().next();
      if (!oldest.done) this.owners.delete(oldest.value);
    }
    this.owners.set(reservationId, accountId);
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
