/**
 * A Map with a bound on its size, for the per-process memos of the refusal path
 * (depletion-alerts.ts DepletionAlerts, refusal-top-ups.ts RefusalTopUps): when full, setting one
 * more key forgets the entry set longest ago (setting a key again makes it the newest). A memo
 * that forgets costs one more check, never a wrong answer: the database's unique keys decide.
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

  /** Entries kept now. */
  get size(): number {
    return this.entries.size;
  }
}
