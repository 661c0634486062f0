/**
 * A Map with a bound on its size, for per-process memos whose inputs come from callers (so their
 * keys cannot grow memory without bound): the refusal path's (depletion-alerts.ts DepletionAlerts,
 * refusal-top-ups.ts RefusalTopUps), reservation-owners.ts ReservationOwners, the API key lookup
 * cache (src/auth/api-keys.ts) and the LLM price catalog's resolved models
 * (src/pricing/catalog.ts). When full, setting one more key forgets the entry set longest ago
 * (insertion order; setting a key again makes it the newest; reading does not). A memo that
 * forgets costs one more lookup, never a wrong answer. It imports nothing and sits in src/util, below every room, so auth, pricing and services may all use it (shared/docs/architecture.md: dependencies point one way).
 */
export class BoundedMap<K, V> {
  private readonly entries = new Map<K, V>();

  /**
   * @param capacity most entries kept (an integer >= 1).
   * @throws RangeError when `capacity` is not an integer >= 1.
   */
  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('capacity must be an integer >= 1');
  }

  /** The value kept for `key`, or undefined. */
  get(key: K): V | undefined {
    return this.entries.get(key);
  }

  /** Keeps `value` for `key` as the newest entry, forgetting the oldest one when full. */
  set(key: K, value: V): void {
    this.entries.delete(key);
    if (this.entries.size >= this.capacity) {
      const oldest = this.entries.keys().next();
      if (!oldest.done) this.entries.delete(oldest.value);
    }
    this.entries.set(key, value);
  }

  /** Forgets `key`. */
  delete(key: K): void {
    this.entries.delete(key);
  }

  /** Forgets every entry. */
  clear(): void {
    this.entries.clear();
  }

  /**
   * The entries kept, oldest first, as [key, value] pairs; deleting entries while iterating is
   * safe (as with a Map).
   */
  [Symbol.iterator](): IterableIterator<[K, V]> {
    return this.entries.entries();
  }

  /** Entries kept now. */
  get size(): number {
    return this.entries.size;
  }
}
