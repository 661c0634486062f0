/**
 * Closed-loop load for the perf bench: N concurrent loops, each sending its next operation as
 * soon as the previous one answered, for a fixed duration. Records per-operation latency (one
 * HTTP round trip, or a whole multi-request job) and error codes.
 */
import { performance } from 'node:perf_hooks';

/** What one operation did: events recorded (or jobs completed) and error codes (empty when ok). */
export interface OpOutcome {
  /** Units of work that succeeded (events for recordUsage/recordUsageBatch, 1 per job). */
  units: number;
  /** Error codes of the failed parts (an operation may partly fail, e.g. a batch item). */
  errors: string[];
}

/** The measured figures of one closed-loop run. */
export interface LoadResult {
  concurrency: number;
  seconds: number;
  ops: number;
  units: number;
  unitsPerSecond: number;
  latencyMs: { p50: number; p95: number; p99: number; max: number; mean: number };
  errors: Record<string, number>;
  errorCount: number;
}

/** Nearest-rank percentile of an ascending-sorted array; 0 for an empty one. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1] as number;
}

/** Rounds to `digits` decimals. */
export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** p50/p95/p99/max/mean of latencies in ms (sorts a copy). */
export function latencyStats(samples: readonly number[]): LoadResult['latencyMs'] {
  const s = [...samples].sort((a, b) => a - b);
  const mean = s.length ? s.reduce((a, b) => a + b, 0) / s.length : 0;
  return { p50: round(percentile(s, 50), 2), p95: round(percentile(s, 95), 2), p99: round(percentile(s, 99), 2), max: round(s.at(-1) ?? 0, 2), mean: round(mean, 2) };
}

/**
 * Runs `op(i)` in `concurrency` loops for `seconds` (i counts operations across loops). An
 * operation that throws counts as one CLIENT error. Operations already started when the time is
 * up are awaited and counted; throughput is units / wall time from start to the last answer.
 */
export async function closedLoop(concurrency: number, seconds: number, op: (i: number) => Promise<OpOutcome>): Promise<LoadResult> {
  const latencies: number[] = [];
  const errors: Record<string, number> = {};
  let units = 0;
  let ops = 0;
  let next = 0;
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (performance.now() < deadline) {
        const i = next++;
        const t = performance.now();
        let outcome: OpOutcome;
        try {
          outcome = await op(i);
        } catch (e) {
          outcome = { units: 0, errors: [`CLIENT: ${(e as Error).message.slice(0, 80)}`] };
        }
        latencies.push(performance.now() - t);
        ops++;
        units += outcome.units;
        for (const code of outcome.errors) errors[code] = (errors[code] ?? 0) + 1;
      }
    }),
  );
  const wall = (performance.now() - t0) / 1000;
  const errorCount = Object.values(errors).reduce((a, b) => a + b, 0);
  return { concurrency, seconds: round(wall, 2), ops, units, unitsPerSecond: round(units / wall, 1), latencyMs: latencyStats(latencies), errors, errorCount };
}

/**
 * One LoadResult for several closed-loop slices of the same load (bench/perf.ts's same-minute
 * (2a) rows: slices of one path alternating with another's): ops, units and seconds summed, the
 * rate over the summed seconds, errors added up. Percentiles cannot be merged without the
 * samples: p50/p95/p99 and mean are the means of the slices' figures weighted by their ops, max
 * the largest.
 * @param slices at least one result, all at the same concurrency.
 * @throws Error on an empty list.
 */
export function mergeLoadResults(slices: readonly LoadResult[]): LoadResult {
  if (slices.length === 0) throw new Error('mergeLoadResults: no slices');
  const ops = slices.reduce((a, s) => a + s.ops, 0);
  const units = slices.reduce((a, s) => a + s.units, 0);
  const seconds = slices.reduce((a, s) => a + s.seconds, 0);
  const weighted = (f: (s: LoadResult) => number) => (ops > 0 ? round(slices.reduce((a, s) => a + f(s) * s.ops, 0) / ops, 2) : 0);
  const errors: Record<string, number> = {};
  for (const s of slices) for (const [code, n] of Object.entries(s.errors)) errors[code] = (errors[code] ?? 0) + n;
  return {
    concurrency: slices[0]!.concurrency,
    seconds: round(seconds, 2),
    ops,
    units,
    unitsPerSecond: seconds > 0 ? round(units / seconds, 1) : 0,
    latencyMs: {
      p50: weighted((s) => s.latencyMs.p50),
      p95: weighted((s) => s.latencyMs.p95),
      p99: weighted((s) => s.latencyMs.p99),
      max: Math.max(...slices.map((s) => s.latencyMs.max)),
      mean: weighted((s) => s.latencyMs.mean),
    },
    errors,
    errorCount: slices.reduce((a, s) => a + s.errorCount, 0),
  };
}
