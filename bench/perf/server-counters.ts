/**
 * The creditpool server's own counters, read from its /readyz (src/server.ts): the group
 * committer's (transactions, items) and the outbox relay's drain transactions. Differences
 * before/after a scenario say how many items each charge transaction carried and how many relay
 * transactions (4 round trips each) ran per unit.
 */

/** The counters this bench reads from /readyz. */
export interface ServerCounters {
  transactions: number;
  items: number;
  largestGroup: number;
  relayDrains: number;
}

/** Per-unit work of the server over a scenario (`perUnit`). */
export interface ServerWork {
  /** Group-commit transactions per unit (null without a group committer). */
  transactionsPerUnit: number | null;
  /** Charges and operations per group-commit transaction (null when none ran). */
  itemsPerTransaction: number | null;
  /** Most charges of one account in one transaction since the server started. */
  largestGroup: number | null;
  /** Outbox relay drain transactions per unit. */
  relayDrainsPerUnit: number;
}

/**
 * Reads the counters from the server at `graphqlUrl` (its /readyz on the same origin).
 * @returns the counters, or null when /readyz does not answer with them.
 */
export async function readServerCounters(graphqlUrl: string): Promise<ServerCounters | null> {
  try {
    const res = await fetch(new URL('/readyz', graphqlUrl));
    const body = (await res.json()) as { live?: { outboxDrains?: number }; groupCommit?: { transactions: number; charges: number; largestGroup: number } | null };
    return {
      transactions: body.groupCommit?.transactions ?? 0,
      items: body.groupCommit?.charges ?? 0,
      largestGroup: body.groupCommit?.largestGroup ?? 0,
      relayDrains: body.live?.outboxDrains ?? 0,
    };
  } catch {
    return null;
  }
}

/** The counters' growth from `before` to `after` per unit (`units` > 0), rounded to 3 decimals. */
export function serverWorkPerUnit(before: ServerCounters | null, after: ServerCounters | null, units: number): ServerWork | null {
  if (!before || !after || units <= 0) return null;
  const r = (x: number) => Math.round(x * 1000) / 1000;
  const transactions = after.transactions - before.transactions;
  return {
    transactionsPerUnit: transactions > 0 ? r(transactions / units) : null,
    itemsPerTransaction: transactions > 0 ? r((after.items - before.items) / transactions) : null,
    largestGroup: after.largestGroup > 0 ? after.largestGroup : null,
    relayDrainsPerUnit: r((after.relayDrains - before.relayDrains) / units),
  };
}
