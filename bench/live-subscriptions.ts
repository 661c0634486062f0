/**
 * Live subscriptions under load (issue #3): commit-to-delivery latency, lost events and server
 * memory per idle WebSocket connection, with two API instances sharing PostgreSQL and Redis.
 *
 * What it does:
 *   1. Creates a fresh database `creditpool_bench_live` on the DATABASE_URL server, migrates it and
 *      publishes the default price book (`tsx prisma/seed.ts`), then starts TWO servers (A and B,
 *      logs in .data/logs/bench-live-*.log) with the same admin key and a private live-channel
 *      prefix, publishes the demo/bench price book and creates --accounts accounts with ample PAID
 *      credit.
 *   2. Warm-up (not measured): 100 temporary subscribers per instance and 5 s of charges, so both
 *      servers are warm before any memory baseline is taken.
 *   3. Phase 1: --subscribers graphql-ws clients, ONE WebSocket connection each (a browser tab),
 *      half on A and half on B, every account watched on both instances, each holding
 *      `balanceChanged(accountId)`. Server RSS (VmRSS from /proc) and V8 heap are read before and
 *      after they connected (connected + first snapshot received), each time right after two
 *      forced full GCs (the servers run with --inspect=127.0.0.1:0 and the bench asks their
 *      inspector): (after - before) / N * 1000 = memory per 1,000 idle connections. Then
 *      recordUsage charges arrive at --rate per second for --seconds, paced by a timer schedule,
 *      round robin over the accounts, alternately over HTTP (keep-alive fetch) to A and B.
 *   4. Phase 2: more subscribers are connected (the phase-1 ones stay) until --held are held, and
 *      the same charge load runs again.
 *   For each phase: p50/p99/max latency, events expected/received/lost, achieved charge rate, CPU
 *   time of each process during the charge window (from /proc; PostgreSQL counts only the bench
 *   database's backends and the shared processes), each server's event-loop delay and GC time
 *   (observed through its inspector) and a per-second timeline, printed as a table (timeline in
 *   the JSON only) and written to bench/results/live-subscriptions.json. Exits 1 when any event
 *   was lost (or a subscriber could not connect, was dropped, or a charge failed), 2 on bad
 *   arguments. The database is left in place for inspection and re-created by the next run.
 *
 * Latency = receipt time in this process (Date.now() when graphql-ws hands the event over) minus
 * `Balance.updatedAt` of the event. `updatedAt` is the wall-clock time the charge's transaction
 * took when it locked the account, BEFORE its statements and COMMIT, so the figure over-states
 * commit-to-receipt by the transaction's own duration. Same machine, same clock.
 *
 * Lost events: every subscriber of an account must receive every balance version after its
 * snapshot; per subscriber and phase, lost = (final version - version held at phase start)
 * - versions received. The final version is read from the API after the charges, and the bench
 * waits (at most 30 s) for deliveries to settle before counting.
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/live-subscriptions.ts
 *          [--accounts 500] [--subscribers 2000] [--held 10000] [--rate 200] [--seconds 20]
 *          [--connect-concurrency 100]
 * The bench process itself holds every client connection, so --held needs that many file
 * descriptors here (`ulimit -n`).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { TypedDocumentNode } from '@graphql-typed-document-node/core';
import { parse } from 'graphql';
import { createClient as createWsClient, type Client as WsClient } from 'graphql-ws';
import pg from 'pg';
import WebSocket from 'ws';
import { DEFAULT_DATABASE_URL, ROOT, ensureCodegen, startServer, type StartedServer } from '../demo/server-process.js';
import type { GraphQLClient } from '../src/client/graphql-client.js';

const DATABASE_NAME = 'creditpool_bench_live';
const SUBSCRIPTION = 'subscription ($id: ID!) { balanceChanged(accountId: $id) { version available updatedAt } }';
const CLK_TCK = 100;
const SETTLE_TIMEOUT_MS = 30_000;
const WARMUP_SUBSCRIBERS = 100;
const WARMUP_SECONDS = 5;

/** The bench's options (see the module comment). */
interface Options {
  accounts: number;
  subscribers: number;
  held: number;
  rate: number;
  seconds: number;
  connectConcurrency: number;
}

type Instance = 'A' | 'B';

/** One subscriber: one WebSocket connection holding one balanceChanged subscription. */
interface Subscriber {
  index: number;
  account: number;
  instance: Instance;
  client: WsClient;
  /** Version of the first event (the snapshot); null until it arrived. */
  snapshotVersion: number | null;
  /** Newest version received. */
  lastVersion: number;
  /** Versions received after the snapshot during the current phase. */
  receivedInPhase: number;
  /** lastVersion when the current phase started. */
  phaseStartVersion: number;
  /** Events whose version was not exactly lastVersion + 1 (gaps or repeats). */
  irregular: number;
  /** Why the connection or subscription ended unexpectedly, if it did. */
  failure: string | null;
}

/** CPU seconds per tracked process group, as read from /proc. */
type CpuTicks = Record<string, number>;

/** Figures of one measured phase. */
interface PhaseResult {
  phase: string;
  subscribers: number;
  perInstance: Record<Instance, number>;
  connectSeconds: number;
  connectFailures: number;
  memory: Record<Instance, MemoryDelta>;
  /** The same for this process (the clients), for scale. */
  benchMemory: MemoryDelta;
  charges: { planned: number; ok: number; failed: number; errors: Record<string, number>; sendSeconds: number; achievedPerSecond: number; httpP50Ms: number; httpP99Ms: number; maxSendLagMs: number };
  events: { expected: number; received: number; lost: number; irregular: number; droppedConnections: number; settleSeconds: number };
  latencyMs: { samples: number; p50: number; p99: number; max: number; perInstance: Record<Instance, { p50: number; p99: number; max: number }> };
  cpuPercent: Record<string, number>;
  benchEventLoopDelayMs: { p99: number; max: number };
  /** Each server's event-loop delay (beyond the 5 ms sampling interval) and GC time during the measured window (null when its inspector was not reachable). */
  serverLoop: Record<Instance, ServerLoopStats | null>;
  /** Per second of the measured window: events received and their worst latency, charges sent and their worst HTTP time. */
  timeline: { second: number; events: number; maxLatencyMs: number; charges: number; maxChargeHttpMs: number }[];
}

/** A server's event loop during a window, observed through its inspector. */
interface ServerLoopStats {
  loopP50Ms: number;
  loopP99Ms: number;
  loopMaxMs: number;
  gcCount: number;
  gcMs: number;
  gcMaxMs: number;
}

/** A process's memory after a forced full GC (when available). */
interface MemoryReading {
  rssMiB: number;
  /** V8 heap used, MiB (null when the process could not be asked). */
  heapUsedMiB: number | null;
  /** A full GC ran just before the reading. */
  gc: boolean;
}

/** Memory before and after connecting `addedConnections`, and the growth per 1,000 of them. */
interface MemoryDelta {
  before: MemoryReading;
  after: MemoryReading;
  addedConnections: number;
  rssMiBPer1000: number;
  heapMiBPer1000: number | null;
}

function usage(message: string): never {
  console.error(
    `${message}\nusage: tsx bench/live-subscriptions.ts [--accounts 500] [--subscribers 2000] [--held 10000] [--rate 200] [--seconds 20] [--connect-concurrency 100]`,
  );
  process.exit(2);
}

function intOption(value: string | undefined, name: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) usage(`--${name} must be an integer in ${min}..${max}`);
  return n;
}

function readOptions(): Options {
  const { values } = parseArgs({
    options: {
      accounts: { type: 'string', default: '500' },
      subscribers: { type: 'string', default: '2000' },
      held: { type: 'string', default: '10000' },
      rate: { type: 'string', default: '200' },
      seconds: { type: 'string', default: '20' },
      'connect-concurrency': { type: 'string', default: '100' },
    },
  });
  const o: Options = {
    accounts: intOption(values.accounts, 'accounts', 1, 100_000),
    subscribers: intOption(values.subscribers, 'subscribers', 2, 100_000),
    held: intOption(values.held, 'held', 0, 100_000),
    rate: intOption(values.rate, 'rate', 1, 10_000),
    seconds: intOption(values.seconds, 'seconds', 1, 600),
    connectConcurrency: intOption(values['connect-concurrency'], 'connect-concurrency', 1, 2_000),
  };
  if (o.held !== 0 && o.held <= o.subscribers) usage('--held must be 0 (no phase 2) or more than --subscribers');
  return o;
}

/** Nearest-rank percentile of an ascending-sorted array; 0 for an empty one. */
function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1] as number;
}

function sortedCopy(values: number[]): Float64Array {
  return Float64Array.from(values).sort();
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** VmRSS of a process in MiB (0 when it is gone). */
function rssMiB(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : 0;
  } catch {
    return 0;
  }
}

/**
 * Calls DevTools-protocol methods, one after the other, on an inspector WebSocket.
 * @returns each method's `result`
 * @throws Error when the inspector answers with an error or does not answer within 30 s
 */
async function inspectorCalls(url: string, calls: { method: string; params?: Record<string, unknown> }[]): Promise<unknown[]> {
  const socket = new WebSocket(url);
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('open', () => resolve());
      socket.once('error', reject);
    });
    const results: unknown[] = [];
    for (const [i, call] of calls.entries()) {
      const id = i + 1;
      const answer = new Promise<unknown>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`inspector: no answer to ${call.method}`)), 30_000);
        const onMessage = (data: WebSocket.RawData) => {
          const msg = JSON.parse(data.toString()) as { id?: number; result?: unknown; error?: { message: string } };
          if (msg.id !== id) return;
          clearTimeout(timer);
          socket.off('message', onMessage);
          if (msg.error) reject(new Error(`inspector: ${call.method}: ${msg.error.message}`));
          else resolve(msg.result);
        };
        socket.on('message', onMessage);
      });
      socket.send(JSON.stringify({ id, method: call.method, params: call.params ?? {} }));
      results.push(await answer);
    }
    return results;
  } finally {
    socket.close();
  }
}

/** The inspector WebSocket URL a server printed to its log (it runs with --inspect=127.0.0.1:0), or null. */
function inspectorUrl(server: StartedServer): string | null {
  try {
    return /Debugger listening on (ws:\/\/\S+)/.exec(readFileSync(server.logs.server, 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

/** A server's RSS and V8 heap right after two forced full GCs through its inspector (RSS alone if that fails). */
async function serverMemory(server: StartedServer): Promise<MemoryReading> {
  const url = inspectorUrl(server);
  if (url) {
    try {
      const results = await inspectorCalls(url, [
        { method: 'HeapProfiler.collectGarbage' },
        { method: 'HeapProfiler.collectGarbage' },
        { method: 'Runtime.evaluate', params: { expression: 'process.memoryUsage().heapUsed', returnByValue: true } },
      ]);
      const heapUsed = (results[2] as { result?: { value?: number } }).result?.value;
      await sleep(300);
      return { rssMiB: round1(rssMiB(server.pids.server)), heapUsedMiB: typeof heapUsed === 'number' ? round1(heapUsed / 1048576) : null, gc: true };
    } catch (e) {
      console.warn(`  (could not force a GC in pid ${server.pids.server}: ${(e as Error).message})`);
    }
  }
  return { rssMiB: round1(rssMiB(server.pids.server)), heapUsedMiB: null, gc: false };
}

let benchGc: (() => void) | null | undefined;
/** This process's RSS and V8 heap after two full GCs (gc exposed at runtime through v8 flags). */
async function benchMemory(): Promise<MemoryReading> {
  if (benchGc === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      benchGc = runInNewContext('gc') as () => void;
    } catch {
      benchGc = null;
    }
  }
  benchGc?.();
  benchGc?.();
  await sleep(300);
  return { rssMiB: round1(rssMiB(process.pid)), heapUsedMiB: round1(process.memoryUsage().heapUsed / 1048576), gc: benchGc !== null };
}

/** Growth from `before` to `after` per 1,000 of `added` connections. */
function memoryDelta(before: MemoryReading, after: MemoryReading, added: number): MemoryDelta {
  const per = (a: number, b: number) => round1(((b - a) / Math.max(1, added)) * 1000);
  return {
    before,
    after,
    addedConnections: added,
    rssMiBPer1000: per(before.rssMiB, after.rssMiB),
    heapMiBPer1000: before.heapUsedMiB !== null && after.heapUsedMiB !== null ? per(before.heapUsedMiB, after.heapUsedMiB) : null,
  };
}

const round1 = (x: number) => Number(x.toFixed(1));

/** Event-loop lag in ms from a monitorEventLoopDelay value (ns) sampled every 5 ms: the interval is subtracted. */
const loopLagMs = (ns: number) => Math.max(0, round1((ns - 5e6) / 1e6));

const LOOP_PROBE_START = `(() => {
  const ph = process.getBuiltinModule('node:perf_hooks');
  const probe = { gc: [], loop: ph.monitorEventLoopDelay({ resolution: 5 }) };
  probe.observer = new ph.PerformanceObserver((list) => { for (const e of list.getEntries()) probe.gc.push(e.duration); });
  probe.observer.observe({ entryTypes: ['gc'] });
  probe.loop.enable();
  globalThis.__creditpoolBenchProbe = probe;
  return true;
})()`;
const LOOP_PROBE_STOP = `(() => {
  const p = globalThis.__creditpoolBenchProbe;
  delete globalThis.__creditpoolBenchProbe;
  p.observer.disconnect();
  p.loop.disable();
  const ms = (ns) => Math.max(0, Math.round((ns - 5e6) / 1e5) / 10); // minus the 5 ms sampling interval
  return { loopP50Ms: ms(p.loop.percentile(50)), loopP99Ms: ms(p.loop.percentile(99)), loopMaxMs: ms(p.loop.max),
    gcCount: p.gc.length, gcMs: Math.round(p.gc.reduce((a, b) => a + b, 0)), gcMaxMs: Math.round(Math.max(0, ...p.gc)) };
})()`;

/**
 * Starts (`start`) or ends and reads (`stop`) an event-loop-delay histogram and a GC observer
 * inside a server, through its inspector.
 * @returns the window's figures for `stop`, null for `start` or when the inspector is unreachable
 */
async function serverLoopProbe(server: StartedServer, action: 'start' | 'stop'): Promise<ServerLoopStats | null> {
  const url = inspectorUrl(server);
  if (!url) return null;
  try {
    const [result] = await inspectorCalls(url, [
      { method: 'Runtime.evaluate', params: { expression: action === 'start' ? LOOP_PROBE_START : LOOP_PROBE_STOP, returnByValue: true } },
    ]);
    const value = (result as { result?: { value?: unknown } }).result?.value;
    return action === 'stop' && value && typeof value === 'object' ? (value as ServerLoopStats) : null;
  } catch (e) {
    console.warn(`  (event-loop probe in pid ${server.pids.server} failed: ${(e as Error).message})`);
    return null;
  }
}

/** utime + stime of a process in clock ticks (0 when it is gone). */
function cpuTicksOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0;
  }
}

function readCmdline(pid: string): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

/**
 * CPU ticks of the servers, this process, PostgreSQL (postmaster, background processes and the
 * bench database's backends), redis-server, and the whole machine.
 */
function sampleCpu(servers: Record<Instance, StartedServer>): CpuTicks {
  const ticks: CpuTicks = { 'server A': cpuTicksOf(servers.A.pids.server), 'server B': cpuTicksOf(servers.B.pids.server), 'bench (clients)': cpuTicksOf(process.pid), postgres: 0, redis: 0 };
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let comm = '';
    try {
      comm = readFileSync(`/proc/${entry}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    if (comm === 'postgres') {
      // Backends of other databases (e.g. a test run) are not ours: they end up in "other".
      const backendOf = /^postgres: [^:]+: \S+ (\S+) /.exec(readCmdline(entry))?.[1];
      if (backendOf === undefined || backendOf === DATABASE_NAME) ticks.postgres = (ticks.postgres ?? 0) + cpuTicksOf(Number(entry));
    }
    else if (comm === 'redis-server') ticks.redis = (ticks.redis ?? 0) + cpuTicksOf(Number(entry));
  }
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = (cpu[3] ?? 0) + (cpu[4] ?? 0);
  ticks['machine busy'] = cpu.reduce((a, b) => a + b, 0) - idle;
  return ticks;
}

/** Percent of ONE core per process group between two samples (machine busy: of all cores). */
function cpuPercent(before: CpuTicks, after: CpuTicks, seconds: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const key of Object.keys(after)) out[key] = Math.round((((after[key] ?? 0) - (before[key] ?? 0)) / CLK_TCK / seconds) * 100);
  const tracked = ['server A', 'server B', 'bench (clients)', 'postgres', 'redis'].reduce((a, k) => a + (out[k] ?? 0), 0);
  out['other'] = Math.max(0, (out['machine busy'] ?? 0) - tracked);
  return out;
}

/** Drops and re-creates the bench database on DATABASE_URL's server, then migrates and seeds it. */
async function prepareDatabase(baseUrl: string): Promise<string> {
  const url = new URL(baseUrl);
  url.pathname = '/postgres';
  const admin = new pg.Client({ connectionString: url.toString() });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${DATABASE_NAME} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${DATABASE_NAME}`);
  } finally {
    await admin.end();
  }
  url.pathname = `/${DATABASE_NAME}`;
  const databaseUrl = url.toString();
  execFileSync(process.execPath, ['--import', 'tsx', 'prisma/seed.ts'], { cwd: ROOT, env: { ...process.env, DATABASE_URL: databaseUrl }, stdio: 'inherit' });
  return databaseUrl;
}

/** Runs `work(i)` for i in [0, count) with at most `limit` in flight. */
async function boundedEach(count: number, limit: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, count) }, async () => {
      while (next < count) await work(next++);
    }),
  );
}

interface BalanceEvent {
  balanceChanged: { version: string; available: string; updatedAt: string };
}

const BalanceVersionDocument = parse('query BenchBalanceVersion($id: ID!) { account(id: $id) { balance { version } } }') as TypedDocumentNode<
  { account: { balance: { version: string } } | null },
  { id: string }
>;

async function main(): Promise<number> {
  const o = readOptions();
  const ulimit = Number(execFileSync('bash', ['-c', 'ulimit -n']).toString().trim());
  const needFds = Math.max(o.subscribers, o.held) + 200;
  if (ulimit < needFds) console.warn(`warning: ulimit -n is ${ulimit}; ${needFds} descriptors are needed for ${Math.max(o.subscribers, o.held)} client connections`);

  await ensureCodegen();
  const gql = await import('../src/generated/graphql.js');
  const { createClient } = await import('../src/client/graphql-client.js');
  const { planReplay } = await import('../demo/plan.js');
  const { demoPriceBook } = await import('../demo/price-book.js');

  console.log(`Preparing database ${DATABASE_NAME} (fresh) ...`);
  const databaseUrl = await prepareDatabase(process.env.DATABASE_URL || DEFAULT_DATABASE_URL);
  const runId = `live-${Date.now().toString(36)}-${process.pid}`;
  process.env.ADMIN_API_KEY = `cp_admin_${randomBytes(24).toString('hex')}`;
  process.env.JWT_SECRET = randomBytes(32).toString('hex');
  const serverEnv = {
    DATABASE_URL: databaseUrl,
    LOG_LEVEL: 'warn',
    LIVE_MAX_CONNECTIONS_PER_TOKEN: '100000',
    PG_POOL_SIZE: '20',
    MIGRATE_ON_BOOT: 'false',
    LIVE_CHANNEL_PREFIX: `creditpool:bench-live:${runId}:`,
    // An inspector on a free port, so the bench can force a full GC before reading memory.
    NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --inspect=127.0.0.1:0`.trim(),
  };

  const subscribers: Subscriber[] = [];
  const servers: Partial<Record<Instance, StartedServer>> = {};
  let disposing = false;
  const stopAll = async () => {
    disposing = true;
    await Promise.allSettled(subscribers.map((s) => Promise.resolve(s.client.dispose())));
    await Promise.allSettled([servers.A?.stop(), servers.B?.stop()]);
  };
  const onSignal = () => void stopAll().finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);

  try {
    console.log('Starting servers A and B (logs in .data/logs/bench-live-{a,b}-server.log) ...');
    [servers.A, servers.B] = await Promise.all([
      startServer({ name: 'bench-live-a', workers: false, env: serverEnv }),
      startServer({ name: 'bench-live-b', workers: false, env: serverEnv }),
    ]);
    const srv = servers as Record<Instance, StartedServer>;
    const http: Record<Instance, GraphQLClient> = {
      A: createClient({ url: srv.A.graphqlUrl, token: srv.A.adminKey }),
      B: createClient({ url: srv.B.graphqlUrl, token: srv.B.adminKey }),
    };
    console.log(`A: ${srv.A.graphqlUrl} (pid ${srv.A.pids.server})   B: ${srv.B.graphqlUrl} (pid ${srv.B.pids.server})`);
    await http.A.request(gql.PublishPriceBookDocument, { input: demoPriceBook(`creditpool live bench ${runId}`) });
    await sleep(1_500); // B's price-book cache lives 1 s

    const accountIds: string[] = [];
    const tCreate = performance.now();
    await boundedEach(o.accounts, 16, async (i) => {
      const a = await http.A.request(gql.CreateAccountDocument, { input: { externalId: `${runId}-acct-${i}`, name: `live bench ${i}`, kind: 'ORGANIZATION', welcomeBonus: false } });
      await http.A.request(gql.GrantCreditsDocument, {
        input: { accountId: a.createAccount.id, amount: '100000000', type: 'PAID', source: 'PURCHASE', idempotencyKey: `${runId}-grant-${i}` },
      });
      accountIds[i] = a.createAccount.id;
    });
    console.log(`Created ${o.accounts} accounts with 100,000,000 PAID credits each in ${((performance.now() - tCreate) / 1000).toFixed(1)} s.`);

    // --- subscribers ---------------------------------------------------------------------------
    let phase = 'setup';
    const samples = new Map<string, Record<Instance, number[]>>();
    const samplesOf = (p: string): Record<Instance, number[]> => {
      let s = samples.get(p);
      if (!s) samples.set(p, (s = { A: [], B: [] }));
      return s;
    };
    // Per-second buckets of the measured window (phaseT0 = 0 outside it).
    let phaseT0 = 0;
    let timeline: PhaseResult['timeline'] = [];
    const bucket = (atMs: number): PhaseResult['timeline'][number] | null => {
      if (phaseT0 === 0 || atMs < phaseT0) return null;
      const second = Math.floor((atMs - phaseT0) / 1000);
      for (let i = timeline.length; i <= second; i++) timeline.push({ second: i, events: 0, maxLatencyMs: 0, charges: 0, maxChargeHttpMs: 0 });
      return timeline[second]!;
    };

    /** Subscriber `index` watches account index % accounts on `instance`; it is added to `into`. */
    const connect = (index: number, instance: Instance, into: Subscriber[]): Promise<void> => {
      const account = index % o.accounts;
      const s: Subscriber = {
        index,
        account,
        instance,
        snapshotVersion: null,
        lastVersion: 0,
        receivedInPhase: 0,
        phaseStartVersion: 0,
        irregular: 0,
        failure: null,
        client: createWsClient({
          url: srv[instance].graphqlUrl.replace(/^http/, 'ws'),
          webSocketImpl: WebSocket,
          connectionParams: { authorization: `Bearer ${srv[instance].adminKey}` },
          retryAttempts: 0,
          lazy: true,
          on: {
            closed: (event) => {
              if (!disposing && s.failure === null) s.failure = `closed ${(event as { code?: number }).code ?? '?'}`;
            },
          },
        }),
      };
      into.push(s);
      return new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          s.failure ??= 'no snapshot within 60 s';
          resolve();
        }, 60_000);
        s.client.subscribe<BalanceEvent>(
          { query: SUBSCRIPTION, variables: { id: accountIds[account]! } },
          {
            next: (result) => {
              const received = Date.now();
              const b = result.data?.balanceChanged;
              if (!b) {
                s.failure ??= `error: ${result.errors?.[0]?.message ?? 'no data'}`;
                clearTimeout(timer);
                resolve();
                return;
              }
              const v = Number(b.version);
              if (s.snapshotVersion === null) {
                s.snapshotVersion = s.lastVersion = s.phaseStartVersion = v;
                clearTimeout(timer);
                resolve();
                return;
              }
              if (v !== s.lastVersion + 1) s.irregular++;
              if (v > s.lastVersion) {
                s.lastVersion = v;
                s.receivedInPhase++;
              }
              const latency = received - Date.parse(b.updatedAt);
              samplesOf(phase)[instance].push(latency);
              const at = bucket(received);
              if (at) {
                at.events++;
                at.maxLatencyMs = Math.max(at.maxLatencyMs, latency);
              }
            },
            error: (err) => {
              if (!disposing) s.failure ??= `error: ${err instanceof Error ? err.message : JSON.stringify(err).slice(0, 200)}`;
              clearTimeout(timer);
              resolve();
            },
            complete: () => {
              if (!disposing) s.failure ??= 'completed by the server';
              clearTimeout(timer);
              resolve();
            },
          },
        );
      });
    };

    // --- charges -------------------------------------------------------------------------------
    const trace = planReplay('azure');
    let seq = 0;
    const runCharges = async (tag: string, seconds: number) => {
      const total = o.rate * seconds;
      const interval = 1000 / o.rate;
      const errors: Record<string, number> = {};
      const httpMs: number[] = [];
      let ok = 0;
      let maxLag = 0;
      let lastSend = 0;
      const inflight = new Set<Promise<void>>();
      const fire = (k: number) => {
        const n = seq++;
        const p = trace[n % trace.length]!;
        const instance: Instance = (k + Math.floor(k / o.accounts)) % 2 === 0 ? 'A' : 'B';
        const t = performance.now();
        const sentAt = Date.now();
        const job = http[instance]
          .requestRaw(gql.RecordUsageLeanDocument, {
            input: {
              accountId: accountIds[k % o.accounts]!,
              idempotencyKey: `${runId}:${tag}:${n}`,
              category: 'llm',
              model: p.model,
              agentId: p.agentId,
              userId: p.userId,
              taskId: p.taskId,
              quantities: { inputTokens: p.inputTokens, outputTokens: p.outputTokens },
            },
          })
          .then(
            (r) => {
              const code = r.errors[0]?.extensions?.code;
              if (r.errors.length === 0 && r.data) {
                ok++;
                const ms = performance.now() - t;
                httpMs.push(ms);
                const at = bucket(sentAt);
                if (at) {
                  at.charges++;
                  at.maxChargeHttpMs = Math.max(at.maxChargeHttpMs, Math.round(ms));
                }
              } else errors[String(code ?? 'UNKNOWN')] = (errors[String(code ?? 'UNKNOWN')] ?? 0) + 1;
            },
            (e: unknown) => {
              errors[(e as { code?: string }).code ?? 'CLIENT'] = (errors[(e as { code?: string }).code ?? 'CLIENT'] ?? 0) + 1;
            },
          )
          .finally(() => inflight.delete(job));
        inflight.add(job);
      };
      const t0 = performance.now();
      await new Promise<void>((resolve) => {
        let k = 0;
        const tick = () => {
          const now = performance.now();
          while (k < total && t0 + k * interval <= now) {
            maxLag = Math.max(maxLag, now - (t0 + k * interval));
            fire(k++);
            lastSend = now;
          }
          if (k < total) setTimeout(tick, Math.max(0, t0 + k * interval - performance.now()));
          else resolve();
        };
        tick();
      });
      await Promise.all([...inflight]);
      const sendSeconds = (lastSend - t0) / 1000 + interval / 1000;
      const sorted = sortedCopy(httpMs);
      return {
        planned: total,
        ok,
        failed: total - ok,
        errors,
        sendSeconds: Number(sendSeconds.toFixed(2)),
        achievedPerSecond: Math.round(total / sendSeconds),
        httpP50Ms: Number(percentile(sorted, 50).toFixed(1)),
        httpP99Ms: Number(percentile(sorted, 99).toFixed(1)),
        maxSendLagMs: Number(maxLag.toFixed(1)),
      };
    };

    const finalVersions = async (): Promise<number[]> => {
      const versions: number[] = [];
      await boundedEach(o.accounts, 16, async (i) => {
        const r = await http.A.request(BalanceVersionDocument, { id: accountIds[i]! });
        versions[i] = Number(r.account?.balance.version ?? NaN);
      });
      return versions;
    };
    const live = () => subscribers.filter((s) => s.failure === null && s.snapshotVersion !== null);
    /** Waits until every live subscriber holds its account's final version (or the timeout). */
    const settle = async (finals: number[]): Promise<number> => {
      const t = performance.now();
      while (performance.now() - t < SETTLE_TIMEOUT_MS) {
        if (live().every((s) => s.lastVersion >= finals[s.account]!)) break;
        await sleep(50);
      }
      return (performance.now() - t) / 1000;
    };
    const startPhase = (name: string) => {
      for (const s of subscribers) {
        s.phaseStartVersion = s.lastVersion;
        s.receivedInPhase = 0;
        s.irregular = 0;
      }
      phase = name;
      timeline = [];
      phaseT0 = Date.now();
    };

    /** Subscriber i is on A for the first `accounts` indexes, on B for the next, and so on: every account is watched on both. */
    const instanceOf = (index: number): Instance => (Math.floor(index / o.accounts) % 2 === 0 ? 'A' : 'B');

    // Warm-up (JIT, pools, channels, price cache on both instances), so the RSS baselines are
    // taken on warm servers: temporary subscribers on both instances, charges, then close them.
    console.log(`Warm-up: ${WARMUP_SUBSCRIBERS} temporary subscribers per instance, ${o.rate} charges/s for ${WARMUP_SECONDS} s (not measured) ...`);
    const temporary: Subscriber[] = [];
    phase = 'warm-up';
    await boundedEach(2 * WARMUP_SUBSCRIBERS, o.connectConcurrency, (i) => connect(i, i % 2 === 0 ? 'A' : 'B', temporary));
    await runCharges('warm-up', WARMUP_SECONDS);
    await sleep(1_000);
    for (const s of temporary) s.failure ??= 'warm-up subscriber closed';
    await Promise.allSettled(temporary.map((s) => Promise.resolve(s.client.dispose())));
    await sleep(2_000);

    const results: PhaseResult[] = [];
    const runPhase = async (name: string, target: number): Promise<PhaseResult> => {
      const already = subscribers.length;
      const before = { A: await serverMemory(srv.A), B: await serverMemory(srv.B), bench: await benchMemory() };
      const added = { A: 0, B: 0 };
      for (let i = already; i < target; i++) added[instanceOf(i)]++;
      console.log(`\n[${name}] connecting ${target - already} subscribers (${target} in total, ${o.connectConcurrency} connects in flight) ...`);
      const tc = performance.now();
      phase = `${name}:connect`;
      await boundedEach(target - already, o.connectConcurrency, (i) => connect(already + i, instanceOf(already + i), subscribers));
      const connectSeconds = (performance.now() - tc) / 1000;
      const connectFailures = subscribers.filter((s) => s.index >= already && s.snapshotVersion === null).length;
      const why = new Map<string, number>();
      for (const s of subscribers) if (s.failure) why.set(s.failure, (why.get(s.failure) ?? 0) + 1);
      console.log(`  connected in ${connectSeconds.toFixed(1)} s; failures: ${connectFailures}${why.size ? ` (${[...why].map(([w, n]) => `${w} x${n}`).join(', ')})` : ''}`);
      await sleep(2_000);
      const memory = {
        A: memoryDelta(before.A, await serverMemory(srv.A), added.A),
        B: memoryDelta(before.B, await serverMemory(srv.B), added.B),
      };
      const benchDelta = memoryDelta(before.bench, await benchMemory(), target - already);
      for (const i of ['A', 'B'] as const) {
        const m = memory[i];
        console.log(
          `  server ${i}: RSS ${m.before.rssMiB} -> ${m.after.rssMiB} MiB, heap ${m.before.heapUsedMiB} -> ${m.after.heapUsedMiB} MiB for ${m.addedConnections} connections` +
            ` = ${m.rssMiBPer1000} MiB RSS (${m.heapMiBPer1000} MiB heap) per 1,000${m.after.gc ? ' (after forced GC)' : ''}`,
        );
      }

      startPhase(name);
      const dropped0 = subscribers.filter((s) => s.failure !== null).length;
      await Promise.all([serverLoopProbe(srv.A, 'start'), serverLoopProbe(srv.B, 'start')]);
      const loop = monitorEventLoopDelay({ resolution: 5 });
      loop.enable();
      const cpu0 = sampleCpu(srv);
      const t0 = performance.now();
      console.log(`  measuring: ${o.rate} charges/s for ${o.seconds} s, alternately to A and B ...`);
      const charges = await runCharges(name, o.seconds);
      const finals = await finalVersions();
      const settleSeconds = await settle(finals);
      const cpu1 = sampleCpu(srv);
      const cpuWindow = (performance.now() - t0) / 1000;
      loop.disable();
      const [loopA, loopB] = await Promise.all([serverLoopProbe(srv.A, 'stop'), serverLoopProbe(srv.B, 'stop')]);
      phase = `${name}:done`;
      phaseT0 = 0;

      let expected = 0;
      let received = 0;
      let irregular = 0;
      for (const s of subscribers) {
        if (s.snapshotVersion === null) continue;
        expected += finals[s.account]! - s.phaseStartVersion;
        received += s.receivedInPhase;
        irregular += s.irregular;
      }
      const all = samplesOf(name);
      const lat = (xs: number[]) => {
        const sorted = sortedCopy(xs);
        return { p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: sorted.length ? sorted[sorted.length - 1]! : 0 };
      };
      const both = lat([...all.A, ...all.B]);
      const result: PhaseResult = {
        phase: name,
        subscribers: live().length,
        perInstance: { A: subscribers.filter((s) => s.instance === 'A').length, B: subscribers.filter((s) => s.instance === 'B').length },
        connectSeconds: Number(connectSeconds.toFixed(1)),
        connectFailures,
        memory,
        benchMemory: benchDelta,
        charges,
        events: {
          expected,
          received,
          lost: expected - received,
          irregular,
          droppedConnections: subscribers.filter((s) => s.failure !== null).length - dropped0,
          settleSeconds: Number(settleSeconds.toFixed(2)),
        },
        latencyMs: { samples: all.A.length + all.B.length, ...both, perInstance: { A: lat(all.A), B: lat(all.B) } },
        cpuPercent: cpuPercent(cpu0, cpu1, cpuWindow),
        benchEventLoopDelayMs: { p99: loopLagMs(loop.percentile(99)), max: loopLagMs(loop.max) },
        serverLoop: { A: loopA, B: loopB },
        timeline,
      };
      const worst = [...timeline].sort((a, b) => b.maxLatencyMs - a.maxLatencyMs).slice(0, 3);
      console.log(`  worst seconds: ${worst.map((w) => `t=${w.second}s latency max ${w.maxLatencyMs} ms / charge HTTP max ${w.maxChargeHttpMs} ms`).join('; ')}`);
      console.log(
        `  ${charges.ok}/${charges.planned} charges at ${charges.achievedPerSecond}/s; events ${received}/${expected} (lost ${expected - received}); ` +
          `latency p50 ${both.p50} ms, p99 ${both.p99} ms, max ${both.max} ms; CPU % ${JSON.stringify(result.cpuPercent)}`,
      );
      return result;
    };

    results.push(await runPhase('phase 1', o.subscribers));
    if (o.held > 0) results.push(await runPhase('phase 2', o.held));

    // --- report --------------------------------------------------------------------------------
    console.log('');
    console.log(
      `Live balanceChanged under load: ${o.accounts} accounts, 2 server instances, ${o.rate} recordUsage/s for ${o.seconds} s, one WebSocket per subscriber, all on this ${readCpuCount()}-core machine.`,
    );
    console.log('Latency = receipt in the client - Balance.updatedAt (taken when the charge transaction locks the account, before COMMIT: over-states commit-to-receipt).');
    const header = ['', ...results.map((r) => `${r.phase}: ${r.subscribers.toLocaleString('en-US')} subscribers`)];
    const rows: string[][] = [
      ['subscribers A / B', ...results.map((r) => `${r.perInstance.A.toLocaleString('en-US')} / ${r.perInstance.B.toLocaleString('en-US')}`)],
      ['connect time (failures)', ...results.map((r) => `${r.connectSeconds} s (${r.connectFailures})`)],
      ['charges ok / planned', ...results.map((r) => `${r.charges.ok} / ${r.charges.planned}`)],
      ['achieved charge rate', ...results.map((r) => `${r.charges.achievedPerSecond}/s (max send lag ${r.charges.maxSendLagMs} ms)`)],
      ['charge HTTP p50 / p99', ...results.map((r) => `${r.charges.httpP50Ms} / ${r.charges.httpP99Ms} ms`)],
      ['events expected / received', ...results.map((r) => `${r.events.expected.toLocaleString('en-US')} / ${r.events.received.toLocaleString('en-US')}`)],
      ['events LOST', ...results.map((r) => String(r.events.lost))],
      ['out-of-order or repeated', ...results.map((r) => String(r.events.irregular))],
      ['connections dropped', ...results.map((r) => String(r.events.droppedConnections))],
      ['latency p50', ...results.map((r) => `${r.latencyMs.p50} ms`)],
      ['latency p99', ...results.map((r) => `${r.latencyMs.p99} ms`)],
      ['latency max', ...results.map((r) => `${r.latencyMs.max} ms`)],
      ['p99 via A / via B', ...results.map((r) => `${r.latencyMs.perInstance.A.p99} / ${r.latencyMs.perInstance.B.p99} ms`)],
      ['connections added A / B', ...results.map((r) => `+${r.memory.A.addedConnections} / +${r.memory.B.addedConnections}`)],
      ['server A RSS before -> after', ...results.map((r) => `${r.memory.A.before.rssMiB} -> ${r.memory.A.after.rssMiB} MiB`)],
      ['server B RSS before -> after', ...results.map((r) => `${r.memory.B.before.rssMiB} -> ${r.memory.B.after.rssMiB} MiB`)],
      ['server RSS per 1,000 idle conns', ...results.map((r) => `A ${r.memory.A.rssMiBPer1000} / B ${r.memory.B.rssMiBPer1000} MiB`)],
      ['server heap per 1,000 idle conns', ...results.map((r) => `A ${r.memory.A.heapMiBPer1000} / B ${r.memory.B.heapMiBPer1000} MiB`)],
      ['bench client RSS / heap per 1,000', ...results.map((r) => `${r.benchMemory.rssMiBPer1000} / ${r.benchMemory.heapMiBPer1000} MiB`)],
      ...(['A', 'B'] as const).flatMap((i) => [
        [`server ${i} event-loop delay p50/p99/max`, ...results.map((r) => (r.serverLoop[i] ? `${r.serverLoop[i].loopP50Ms} / ${r.serverLoop[i].loopP99Ms} / ${r.serverLoop[i].loopMaxMs} ms` : 'n/a'))],
        [`server ${i} GC time (count, longest)`, ...results.map((r) => (r.serverLoop[i] ? `${r.serverLoop[i].gcMs} ms (${r.serverLoop[i].gcCount}, ${r.serverLoop[i].gcMaxMs} ms)` : 'n/a'))],
      ]),
      ['bench event-loop delay p99 / max', ...results.map((r) => `${r.benchEventLoopDelayMs.p99} / ${r.benchEventLoopDelayMs.max} ms`)],
      ...['server A', 'server B', 'bench (clients)', 'postgres', 'redis', 'other', 'machine busy'].map((k) => [
        k === 'machine busy' ? `CPU machine busy (of ${readCpuCount() * 100} %)` : k === 'other' ? 'CPU other processes (% of a core)' : `CPU ${k} (% of a core)`,
        ...results.map((r) => `${r.cpuPercent[k] ?? 0} %`),
      ]),
    ];
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    const line = (cells: string[]) => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
    console.log(line(header));
    console.log('|' + widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|');
    for (const row of rows) console.log(line(row));

    const outDir = join(ROOT, 'bench/results');
    mkdirSync(outDir, { recursive: true });
    const outFile = join(outDir, 'live-subscriptions.json');
    writeFileSync(
      outFile,
      JSON.stringify(
        {
          measuredAt: new Date().toISOString(),
          options: o,
          machine: { cpus: readCpuCount(), ulimitN: ulimit },
          latencyDefinition: 'client receipt time (Date.now()) minus Balance.updatedAt, the wall-clock time the charge transaction took when it locked the account (before COMMIT)',
          phases: results,
        },
        null,
        2,
      ) + '\n',
    );
    console.log(`Results written to ${outFile}`);

    const lost = results.reduce((a, r) => a + r.events.lost, 0);
    const broken = results.reduce((a, r) => a + r.connectFailures + r.events.droppedConnections + r.charges.failed, 0);
    if (lost > 0) console.error(`FAIL: ${lost} event(s) lost`);
    if (broken > 0) console.error(`FAIL: ${broken} connect failure(s), dropped connection(s) or failed charge(s)`);
    return lost > 0 || broken > 0 ? 1 : 0;
  } catch (e) {
    console.error(`bench failed: ${(e as Error).stack ?? (e as Error).message}`);
    return 1;
  } finally {
    await stopAll();
  }
}

function readCpuCount(): number {
  return readFileSync('/proc/cpuinfo', 'utf8').split('\n').filter((l) => l.startsWith('processor')).length;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
