/**
 * In-process signal from the ledger's transactions to the outbox relay: a transaction that wrote
 * outbox rows is marked (`markOutboxWritten`), and `withTransaction` calls `outboxCommitted()`
 * right after its COMMIT, so the relay of the process that committed publishes at once instead
 * of waiting for its next poll. The poll remains the safety net (other processes, crashes).
 */

const written = new WeakSet<object>();
const listeners = new Set<() => void>();

/** Marks the transaction's client as having written outbox rows. */
export function markOutboxWritten(tx: object): void {
  written.add(tx);
}

/** Clears the mark of `tx` and returns whether it was set. */
export function takeOutboxWritten(tx: object): boolean {
  return written.delete(tx);
}

/** Calls every registered listener (after a COMMIT that wrote outbox rows). Never throws. */
export function outboxCommitted(): void {
  for (const listener of listeners) {
    try {
      listener();
    } catch {
      // a listener's failure must not turn a committed transaction into an error
    }
  }
}

/** Registers `listener`; returns its unregister function. */
export function onOutboxCommitted(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}
