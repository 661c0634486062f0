/**
 * Who used the CPU during a scenario, read from /proc (Linux only): the creditpool server, this
 * bench process (the load generator), a child tool (pgbench or autocannon), PostgreSQL (every
 * `postgres` process of the bench's databases plus the shared ones, see setOwnDatabases), Redis, and the machine
 * as a whole (so "other" = what the rest of the machine, e.g. other engineers' runs, took).
 *
 * Processes that start and exit during the window (pgbench's backends) are caught by sampling
 * every 250 ms and keeping each pid's last reading. Figures are percent of ONE core
 * (200 = both cores of this machine busy); "machine busy" is percent of one core too.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/<pid>/stat's utime and stime (USER_HZ, 100 on Linux). */
export const CLK_TCK = 100;

/** Databases whose backends count as "postgres"; backends of other databases count as "other". */
let ownDatabases: ReadonlySet<string> = new Set();

/**
 * Names the bench's databases. PostgreSQL backends of any OTHER database (other engineers'
 * tests and benches on the same server) are then left out of "postgres" and land in "other";
 * shared processes (checkpointer, WAL writer, autovacuum launcher...) stay in "postgres".
 */
export function setOwnDatabases(names: readonly string[]): void {
  ownDatabases = new Set(names);
}

/** CPU use of one window, in percent of one core. */
export interface CpuUsage {
  seconds: number;
  server: number;
  bench: number;
  tool: number;
  postgres: number;
  redis: number;
  /** All cores, busy (non-idle, non-iowait). */
  machineBusy: number;
  /** machineBusy minus the tracked groups (other processes of the machine). */
  other: number;
  /** iowait of all cores. */
  iowait: number;
  cores: number;
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return null;
  }
}

/** utime + stime of a process in clock ticks (null when it is gone). */
export function cpuTicksOf(pid: number): number | null {
  const stat = readText(`/proc/${pid}/stat`);
  if (stat === null) return null;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]);
}

/** VmRSS of a process in MiB (null when it is gone). */
export function rssMiB(pid: number): number | null {
  const status = readText(`/proc/${pid}/status`);
  const m = status ? /VmRSS:\s+(\d+) kB/.exec(status) : null;
  return m ? Math.round((Number(m[1]) / 1024) * 10) / 10 : null;
}

function machineTicks(): { busy: number; iowait: number; cores: number } {
  const lines = (readText('/proc/stat') ?? '').split('\n');
  const cpu = (lines[0] ?? '').trim().split(/\s+/).slice(1).map(Number);
  const idle = cpu[3] ?? 0;
  const iowait = cpu[4] ?? 0;
  return { busy: cpu.reduce((a, b) => a + b, 0) - idle - iowait, iowait, cores: lines.filter((l) => /^cpu\d+ /.test(l)).length };
}

type Group = 'server' | 'bench' | 'tool' | 'postgres' | 'redis';

/** Samples CPU ticks per process group over a window; see the module comment. */
export class CpuSampler {
  private readonly first = new Map<number, { group: Group; ticks: number }>();
  private readonly last = new Map<number, number>();
  private timer: NodeJS.Timeout | null = null;
  private t0 = 0;
  private m0 = { busy: 0, iowait: 0, cores: 1 };

  /**
   * @param serverPid the creditpool server (null when none runs)
   * @param toolPid a child tool whose CPU is reported separately (settable later with setTool)
   */
  constructor(
    private readonly serverPid: number | null,
    private toolPid: number | null = null,
  ) {}

  /** Sets the child tool pid (pgbench / autocannon) once it has been spawned. */
  setTool(pid: number | null): void {
    this.toolPid = pid;
    this.sample();
  }

  private groupOf(pid: number): Group | null {
    if (pid === this.serverPid) return 'server';
    if (pid === process.pid) return 'bench';
    if (pid === this.toolPid) return 'tool';
    const comm = readText(`/proc/${pid}/comm`)?.trim();
    if (comm === 'postgres') {
      // "postgres: 15/main: <user> <database> <client> <state>" or "... autovacuum worker <database>".
      const cmd = (readText(`/proc/${pid}/cmdline`) ?? '').replace(/\0/g, ' ').trim();
      const db = /^postgres: (?:[^:]+: )?(?:autovacuum worker (\S+)|\S+ (\S+) (?:\d|\[local\]|127\.|::1|\S+\(\d+\)))/.exec(cmd);
      const name = db?.[1] ?? db?.[2];
      if (name !== undefined && ownDatabases.size > 0 && !ownDatabases.has(name)) return null;
      return 'postgres';
    }
    if (comm === 'redis-server') return 'redis';
    return null;
  }

  private sample(): void {
    let entries: string[];
    try {
      entries = readdirSync('/proc');
    } catch {
      return;
    }
    for (const e of entries) {
      if (!/^\d+$/.test(e)) continue;
      const pid = Number(e);
      const known = this.first.get(pid);
      if (known) {
        const t = cpuTicksOf(pid);
        if (t !== null) this.last.set(pid, t);
        continue;
      }
      const group = this.groupOf(pid);
      if (group === null) continue;
      const t = cpuTicksOf(pid);
      if (t === null) continue;
      // A process first seen after the start began during the window (its ticks are all ours),
      // except at the initial sample where the baseline is its current reading.
      this.first.set(pid, { group, ticks: this.timer === null && this.t0 === 0 ? t : 0 });
      this.last.set(pid, t);
    }
  }

  /** Takes the baseline and starts sampling every 250 ms. */
  start(): void {
    this.t0 = 0;
    this.sample();
    this.t0 = Date.now();
    this.m0 = machineTicks();
    this.timer = setInterval(() => this.sample(), 250);
    this.timer.unref();
  }

  /** Stops sampling and returns the usage of the window. */
  stop(): CpuUsage {
    this.sample();
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    const seconds = Math.max(0.001, (Date.now() - this.t0) / 1000);
    const m1 = machineTicks();
    const sum: Record<Group, number> = { server: 0, bench: 0, tool: 0, postgres: 0, redis: 0 };
    for (const [pid, f] of this.first) sum[f.group] += Math.max(0, (this.last.get(pid) ?? f.ticks) - f.ticks);
    const pct = (ticks: number) => Math.round((ticks / CLK_TCK / seconds) * 100);
    const usage = {
      seconds: Math.round(seconds * 10) / 10,
      server: pct(sum.server),
      bench: pct(sum.bench),
      tool: pct(sum.tool),
      postgres: pct(sum.postgres),
      redis: pct(sum.redis),
      machineBusy: pct(m1.busy - this.m0.busy),
      iowait: pct(m1.iowait - this.m0.iowait),
      cores: m1.cores,
      other: 0,
    };
    usage.other = Math.max(0, usage.machineBusy - usage.server - usage.bench - usage.tool - usage.postgres - usage.redis);
    return usage;
  }
}

/**
 * Runs `work` while sampling CPU.
 * @returns the work's result and the CPU usage of the window
 */
export async function withCpu<T>(serverPid: number | null, work: (sampler: CpuSampler) => Promise<T>): Promise<{ result: T; cpu: CpuUsage }> {
  const sampler = new CpuSampler(serverPid);
  sampler.start();
  try {
    const result = await work(sampler);
    return { result, cpu: sampler.stop() };
  } catch (e) {
    sampler.stop();
    throw e;
  }
}

/**
 * The CPU use of several sampled periods as one: each percentage is the mean of the periods'
 * weighted by their seconds (so it is the share of a core over their summed time), seconds
 * summed. For bench/perf.ts's same-minute (2a) rows, whose slices alternate with another
 * server's.
 * @throws Error on an empty list.
 */
export function mergeCpuUsage(periods: readonly CpuUsage[]): CpuUsage {
  if (periods.length === 0) throw new Error('mergeCpuUsage: no periods');
  const seconds = periods.reduce((a, p) => a + p.seconds, 0);
  const mean = (f: (p: CpuUsage) => number) => (seconds > 0 ? Math.round(periods.reduce((a, p) => a + f(p) * p.seconds, 0) / seconds) : 0);
  return {
    seconds: Math.round(seconds * 10) / 10,
    server: mean((p) => p.server),
    bench: mean((p) => p.bench),
    tool: mean((p) => p.tool),
    postgres: mean((p) => p.postgres),
    redis: mean((p) => p.redis),
    machineBusy: mean((p) => p.machineBusy),
    other: mean((p) => p.other),
    iowait: mean((p) => p.iowait),
    cores: periods[0]!.cores,
  };
}
