/**
 * How a thread shared the CPUs over a window, from Linux's per-task scheduler statistics: the
 * time it ran, the time it was runnable but waited on a run queue (another task had its CPU),
 * and its voluntary (it blocked, e.g. in epoll_wait) and involuntary (preempted) context
 * switches. Source: /proc/<pid>/task/<tid>/schedstat (Linux Documentation/scheduler/sched-stats:
 * "time spent on the cpu", "time spent waiting on a runqueue", both in ns) and
 * /proc/<pid>/task/<tid>/status (`voluntary_ctxt_switches`, `nonvoluntary_ctxt_switches`).
 *
 * The bench uses it for the API server's main (JavaScript) thread: a V8 CPU profile counts the
 * time the thread waited for a CPU as time in the function it was preempted in (mostly `writev`:
 * the PostgreSQL backend or Redis its write woke takes over its CPU), so only this says how much
 * of the thread's time was CPU and how much was waiting for one.
 */
import { readFileSync } from 'node:fs';

/** One reading of a thread's scheduler counters. */
export interface ThreadSchedReading {
  /** Wall-clock time of the reading, ms since the epoch (Date.now()). */
  atMs: number;
  /** Time on a CPU since the thread started, ns. */
  runNs: number;
  /** Time runnable on a run queue (waiting for a CPU) since the thread started, ns. */
  waitNs: number;
  /** Context switches where the thread blocked. */
  voluntary: number;
  /** Context switches where it was preempted while runnable. */
  involuntary: number;
}

/** What a thread did between two readings; shares in percent of the window's wall time. */
export interface ThreadSchedWindow {
  seconds: number;
  /** On a CPU, % of wall time. */
  runningPercent: number;
  /** Runnable but waiting for a CPU, % of wall time. */
  waitingPercent: number;
  /** Blocked (nothing to do, or waiting on I/O), % of wall time: the rest. */
  blockedPercent: number;
  /** Preemptions per second. */
  involuntaryPerSecond: number;
  /** Blocking switches per second. */
  voluntaryPerSecond: number;
}

/**
 * Reads the scheduler counters of thread `tid` of process `pid` (the main thread: tid = pid).
 * @returns null where /proc does not have them (not Linux, the process gone, schedstats off).
 */
export function readThreadSched(pid: number, tid = pid): ThreadSchedReading | null {
  try {
    const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').trim().split(/\s+/).map(Number);
    const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
    const reading = { atMs: Date.now(), runNs: run!, waitNs: wait!, voluntary: field('voluntary_ctxt_switches'), involuntary: field('nonvoluntary_ctxt_switches') };
    return Object.values(reading).every(Number.isFinite) ? reading : null;
  } catch {
    return null;
  }
}

/** The window between two readings of the same thread (null if either is missing or the window is empty). */
export function schedWindow(a: ThreadSchedReading | null, b: ThreadSchedReading | null): ThreadSchedWindow | null {
  if (!a || !b || b.atMs <= a.atMs) return null;
  const seconds = (b.atMs - a.atMs) / 1000;
  const pct = (ns: number) => Math.round((1000 * ns) / 1e9 / seconds) / 10;
  const runningPercent = pct(b.runNs - a.runNs);
  const waitingPercent = pct(b.waitNs - a.waitNs);
  return {
    seconds: Math.round(seconds * 10) / 10,
    runningPercent,
    waitingPercent,
    blockedPercent: Math.max(0, Math.round(10 * (100 - runningPercent - waitingPercent)) / 10),
    involuntaryPerSecond: Math.round((b.involuntary - a.involuntary) / seconds),
    voluntaryPerSecond: Math.round((b.voluntary - a.voluntary) / seconds),
  };
}
