/**
 * Charge outcomes for GET /metrics: `creditpool_usage_events_total{outcome}`, counted by the
 * GraphQL resolvers (graphql/mutations.ts) once per usage event asked for (a recordUsage, an item
 * of recordUsageBatch, a usage item of settleReservation) once its outcome is known.
 *
 * The label's values are a fixed set ({@link USAGE_OUTCOMES}): `recorded`, `replayed` (a retry of
 * a recorded idempotency key) or the refusal's public error code (ledger/errors.ts ERROR_CODES),
 * `INTERNAL_SERVER_ERROR` for a bug. Never an account, a key or any other input: no tenant data.
 * A billing refusal counts under its real code also when a public visitor reads UNAVAILABLE
 * instead (graphql/errors.ts maskError): the operator's view, not the caller's.
 */
import { Counter, type Registry } from 'prom-client';
import { ERROR_CODES, LedgerError } from '../ledger/errors.js';
import { isDatabaseUnavailable } from '../db/pg.js';

/** Every value of the `outcome` label, in the order the series are created. */
export const USAGE_OUTCOMES = ['recorded', 'replayed', ...ERROR_CODES, 'INTERNAL_SERVER_ERROR'] as const;

/** One value of the `outcome` label. */
export type UsageOutcome = (typeof USAGE_OUTCOMES)[number];

/**
 * The outcome of a charge that threw `error`: a LedgerError's code; UNAVAILABLE for a database
 * that could not be reached, dropped the connection or ran out of time (db/pg.ts
 * isDatabaseUnavailable, as maskError answers it); INTERNAL_SERVER_ERROR for anything else (a bug).
 */
export function usageOutcomeOf(error: unknown): UsageOutcome {
  if (error instanceof LedgerError) return error.code;
  if (isDatabaseUnavailable(error)) return 'UNAVAILABLE';
  return 'INTERNAL_SERVER_ERROR';
}

/** Counts charge outcomes (see the module comment). */
export interface UsageOutcomeCounter {
  /** Adds `events` (default 1; a non-negative integer) usage events with `outcome`. */
  count(outcome: UsageOutcome, events?: number): void;
}

/** A counter that counts nothing (METRICS_ENABLED=false, scripts). */
export const NO_USAGE_OUTCOMES: UsageOutcomeCounter = { count: () => undefined };

/**
 * Registers `creditpool_usage_events_total{outcome}` on `registry` with one series per
 * {@link USAGE_OUTCOMES} value, created now (each exported from 0, so a rate over a refusal that
 * never happened yet is 0, not absent), and returns a counter whose `count` increments the
 * precreated series: no label object is built per charge.
 */
export function registerUsageOutcomes(registry: Registry): UsageOutcomeCounter {
  const counter = new Counter({
    name: 'creditpool_usage_events_total',
    help: 'Usage events asked for through recordUsage, recordUsageBatch items and settleReservation usage items, by outcome: recorded, replayed (idempotent retry) or the refusal code.',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const series = new Map<UsageOutcome, { inc(value?: number): void }>();
  for (const outcome of USAGE_OUTCOMES) {
    const child = counter.labels(outcome);
    child.inc(0);
    series.set(outcome, child);
  }
  return {
    count(outcome, events = 1) {
      if (events > 0) series.get(outcome)!.inc(events);
    },
  };
}
