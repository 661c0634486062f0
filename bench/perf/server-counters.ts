/**
 * The creditpool server's own counters, read from its /readyz (src/server.ts): the group
 * committer's (transactions, items) and the outbox relay's drain transactions. Differences
 * before/after a scenario say how many items each charge transaction carried and how many relay
 * transactions (4 round trips each) ran per unit, how long a charge transaction took on average,
 * and how busy the server's one event loop was (the JavaScript thread that also runs every
 * round trip's reply: at high utilization a reply waits behind HTTP and GraphQL work) and how
 * late it ran, on average, what was due (that wait, measured).
 */

import type { StatementTiming } from '../../src/db/query-timings.js';

/** The counters this bench reads from /readyz. */
export interface ServerCounters {
  transactions: number;
  items: number;
  largestGroup: number;
  relayDrains: number;
  /** Sum of charge transactions' wall time (ms). */
  transactionMs: number;
  /** Charge transactions committed from carried state, and those rolled back to a fresh read (0 when not reported). */
  carriedState: number;
  carriedStateMisses: number;
  /** Event loop busy / idle time since boot (ms; null when the server does not report them). */
  eventLoopActiveMs: number | null;
  eventLoopIdleMs: number | null;
  /** Event-loop delay samples since boot and their summed lateness (ms; null when not reported). */
  eventLoopDelaySamples: number | null;
  eventLoopLatenessMs: number | null;
  /** The ledger pool's statements' counts and summed wall times (PG_QUERY_TIMINGS; null when off). */
  statements: Record<string, StatementTiming> | null;
  /** The ledger pool's round trips to PostgreSQL since boot (PG_QUERY_TIMINGS; null when off). */
  pgRoundTrips: number | null;
}

/** One statement's share of a scenario (client-side wall time, src/db/query-timings.ts). */
export interface StatementWork {
  statement: string;
  /** Executions per unit. */
  perUnit: number;
  /** Mean wall time of one execution, ms: PostgreSQL's work plus every wait around it. */
  meanMs: number;
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
  /** Mean wall time of one group-commit transaction, ms (null when none ran). */
  meanTransactionMs?: number | null;
  /**
   * Share of the group-commit transactions that committed from the state the account's previous
   * transaction left (one round trip, no state read), and misses (rolled back, run again from a
   * fresh read) per such transaction; null when none ran.
   */
  carriedShare?: number | null;
  carriedMissesPerTransaction?: number | null;
  /** Share of the scenario's time the server's event loop was busy, 0..1 (null when unknown). */
  eventLoopUtilization?: number | null;
  /**
   * Mean lateness of the event loop over the scenario, ms: how long a timer (and so a reply from
   * PostgreSQL) waited behind other work before it ran (null when unknown).
   */
  eventLoopLatenessMs?: number | null;
  /** The ledger pool's round trips to PostgreSQL per unit, relay included (absent when not timed). */
  pgRoundTripsPerUnit?: number;
  /** The statements with the most summed wall time, most first (at most 8; absent when not timed). */
  statements?: StatementWork[];
}

/**
 * Reads the counters from the server at `graphqlUrl` (its /readyz on the same origin).
 * @returns the counters, or null when /readyz does not answer with them.
 */
export async function readServerCounters(graphqlUrl: string): Promise<ServerCounters | null> {
  try {
    const res = await fetch(new URL('/readyz', graphqlUrl));
    const body = (await res.json()) as {
      live?: { outboxDrains?: number };
      groupCommit?: { transactions: number; charges: number; largestGroup: number; transactionMs?: number; carriedState?: number; carriedStateMisses?: number } | null;
      eventLoop?: { activeMs: number; idleMs: number; delaySamples?: number; delayLatenessMs?: number };
      queryTimings?: Record<string, StatementTiming> | null;
      pgRoundTrips?: number | null;
    };
    return {
      transactions: body.groupCommit?.transactions ?? 0,
      items: body.groupCommit?.charges ?? 0,
      largestGroup: body.groupCommit?.largestGroup ?? 0,
      relayDrains: body.live?.outboxDrains ?? 0,
      transactionMs: body.groupCommit?.transactionMs ?? 0,
      carriedState: body.groupCommit?.carriedState ?? 0,
      carriedStateMisses: body.groupCommit?.carriedStateMisses ?? 0,
      eventLoopActiveMs: body.eventLoop?.activeMs ?? null,
      eventLoopIdleMs: body.eventLoop?.idleMs ?? null,
      eventLoopDelaySamples: body.eventLoop?.delaySamples ?? null,
      eventLoopLatenessMs: body.eventLoop?.delayLatenessMs ?? null,
      statements: body.queryTimings ?? null,
      pgRoundTrips: body.pgRoundTrips ?? null,
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
  const busyMs = before.eventLoopActiveMs !== null && after.eventLoopActiveMs !== null ? after.eventLoopActiveMs - before.eventLoopActiveMs : null;
  const idleMs = before.eventLoopIdleMs !== null && after.eventLoopIdleMs !== null ? after.eventLoopIdleMs - before.eventLoopIdleMs : null;
  return {
    transactionsPerUnit: transactions > 0 ? r(transactions / units) : null,
    itemsPerTransaction: transactions > 0 ? r((after.items - before.items) / transactions) : null,
    largestGroup: after.largestGroup > 0 ? after.largestGroup : null,
    relayDrainsPerUnit: r((after.relayDrains - before.relayDrains) / units),
    meanTransactionMs: transactions > 0 ? r((after.transactionMs - before.transactionMs) / transactions) : null,
    carriedShare: transactions > 0 ? r((after.carriedState - before.carriedState) / transactions) : null,
    carriedMissesPerTransaction: transactions > 0 ? r((after.carriedStateMisses - before.carriedStateMisses) / transactions) : null,
    eventLoopUtilization: busyMs !== null && idleMs !== null && busyMs + idleMs > 0 ? r(busyMs / (busyMs + idleMs)) : null,
    eventLoopLatenessMs: meanLateness(before, after),
    ...(before.pgRoundTrips !== null && after.pgRoundTrips !== null ? { pgRoundTripsPerUnit: r((after.pgRoundTrips - before.pgRoundTrips) / units) } : {}),
    ...(before.statements && after.statements ? { statements: statementWork(before.statements, after.statements, units) } : {}),
  };
}

/** Mean event-loop lateness (ms) between two reads, or null when unknown or nothing was sampled. */
function meanLateness(before: ServerCounters, after: ServerCounters): number | null {
  if (before.eventLoopDelaySamples === null || after.eventLoopDelaySamples === null) return null;
  if (before.eventLoopLatenessMs === null || after.eventLoopLatenessMs === null) return null;
  const samples = after.eventLoopDelaySamples - before.eventLoopDelaySamples;
  if (samples <= 0) return null;
  return Math.round(((after.eventLoopLatenessMs - before.eventLoopLatenessMs) / samples) * 1000) / 1000;
}

/** The statements' growth from `before` to `after`: the 8 with the most wall time, per unit. */
function statementWork(before: Record<string, StatementTiming>, after: Record<string, StatementTiming>, units: number): StatementWork[] {
  const r = (x: number) => Math.round(x * 1000) / 1000;
  return Object.entries(after)
    .map(([statement, t]) => ({ statement, count: t.count - (before[statement]?.count ?? 0), ms: t.totalMs - (before[statement]?.totalMs ?? 0) }))
    .filter((d) => d.count > 0)
    .sort((a, b) => b.ms - a.ms)
    .slice(0, 8)
    .map((d) => ({ statement: d.statement, perUnit: r(d.count / units), meanMs: r(d.ms / d.count) }));
}
