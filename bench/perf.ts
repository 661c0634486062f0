/**
 * Issue #6 "Measure first": ONE command that measures, in ONE run (so the ratios hold on a
 * shared, noisy machine), the limits of the machine and creditpool's figures against them:
 *
 *   1a  pgbench on a scratch database of the same PostgreSQL server: per transaction ONE
 *       statement (a CTE) that updates one row and inserts one row; one hot row and random rows
 *       of 10,000; 8 and 32 clients (-j 2 -n -M prepared).
 *   1b  the creditpool server answering `{ __typename }` (POST /graphql, keep-alive), autocannon
 *       at 8 and 32 connections: HTTP + GraphQL + auth without database work.
 *   1c  (not in the issue) the requests of (2b), and 1d those of (3) on the accounts, answered by
 *       the ledger-stub server (bench/perf/ledger-stub/: the product's server whose charge
 *       services validate and answer without pricing or database work): what the GraphQL
 *       request around a charge costs. Printed as references after the targets
 *       (computeReferences); --skip-stub-rows leaves them out.
 *   2   recordUsage over HTTP (keep-alive, a fresh idempotency key per event, token counts of the
 *       real Azure 2023 trace priced per token): (a) one hot account, (b) --accounts accounts;
 *       8, 32 and 64 concurrent clients. (a) and (b) run on a server started with
 *       CHARGE_PATH=group and again on one started with CHARGE_PATH=naive; then (a) once more
 *       with a second group server beside the naive one, slices alternating between them, so
 *       both paths are measured on the same minutes (rows 2a-same-*; --skip-same-minutes).
 *   3   recordUsageBatch with 100 and 1,000 events per request (--batch-concurrency requests in
 *       flight), on the accounts and on one hot account.
 *   4   jobs: reserveCredits -> recordUsage x3 against the reservation (partial captures) ->
 *       settleReservation, at 8, 32 and 64 concurrent jobs, on the accounts.
 *   5   usageSummary (current period, groupBy [CATEGORY, TIER, MODEL]) and usageHistory(months:
 *       12) on ONE account holding --history-events usage events over 12 months, generated with
 *       SQL (bench/perf/history.ts): p50/p95 over up to --history-calls sequential calls, after
 *       a first call and 50 untimed warm-up calls.
 *   6   the server's RSS (VmRSS) at the end of every scenario, and CPU per process group during
 *       it (bench/perf/procstat.ts), which says what limited the number.
 * Then it checks the ledger invariant of every account in the bench database (all were created
 * by this run): balances.total = SUM(remaining of ACTIVE batches) - debt = SUM(ledger entries
 * other than RESERVE/RELEASE), and that the events the API acknowledged are the events stored.
 * Prints a table and the targets of the issue as ratios, writes bench/results/perf-<time>.json,
 * exits 1 when a check fails (2 on bad arguments).
 *
 * Database: `creditpool_bench_perf` on DATABASE_URL's server, dropped, re-created and seeded
 * (`tsx prisma/seed.ts`) by every run (and dropped at its end unless --keep-db); migrations that
 * appear during the run are applied before the next server starts; the pgbench scratch database
 * `creditpool_bench_perf_pgbench` is dropped at the end. Servers are started one at a time
 * (demo/server-process.ts, logs in .data/logs/bench-perf-*-server.log), without workers, except
 * that the ledger-stub server (rows 1c, 1d) runs beside the idle group server, and a second group
 * server beside the naive one for the same-minute (2a) rows.
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/perf.ts [--quick] [--seconds 10]
 *          [--accounts 10000] [--history-events 10000000] [--skip-history] [--history-calls 200]
 *          [--history-max-seconds 75] [--batch-concurrency 4] [--pool-size 32] [--skip-pgbench] [--skip-same-minutes]
 *          [--skip-stub-rows] [--keep-db]
 * --quick: 3 s per scenario, 100,000 history events, at most 20 s per history query kind.
 * The bench database is dropped at the end (~9 GB after a full run) unless --keep-db.
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { DEFAULT_DATABASE_URL, ROOT, startServer, type StartedServer } from '../demo/server-process.js';
import { planReplay, llmQuantities } from '../demo/plan.js';
import { demoPriceBook } from '../demo/price-book.js';
import { createPerfClient, type PerfClient } from './perf/http.js';
import { closedLoop, latencyStats, mergeLoadResults, round, type LoadResult, type OpOutcome } from './perf/load.js';
import { mergeCpuUsage, rssMiB, setOwnDatabases, withCpu, type CpuUsage } from './perf/procstat.js';
import { seedClosedHolds } from './perf/closed-holds.js';
import { dropDatabase, recreateDatabase } from './perf/scratch-db.js';
import {
  PGBENCH_ACCOUNTS,
  PGBENCH_DATABASE,
  PGBENCH_SCRIPT,
  dropPgbenchDatabase,
  findPgbench,
  preparePgbenchDatabase,
  runAutocannon,
  runPgbench,
  type LimitRun,
} from './perf/limits.js';
import { generateHistory, historyAnchor, type HistoryGeneration } from './perf/history.js';
import { readCounters, workPerUnit, type DbWork } from './perf/dbwork.js';
import { readServerCounters, serverWorkPerUnit, type ServerWork } from './perf/server-counters.js';
import { enablePgStatements, formatPgStatement, readPgStatements, resetPgStatements, type PgStatementWork } from './perf/pg-statements.js';
import { tryDecodeId } from '../src/graphql/ids.js';
import { applyMigrations } from '../src/db/migrate.js';

/** The bench database (dropped and re-created by every run). */
export const PERF_DATABASE = 'creditpool_bench_perf';

const LEVELS = [8, 32, 64] as const;
const LIMIT_LEVELS = [8, 32] as const;
/** Entry of the ledger-stub server (rows 1c, 1d), relative to the repository root. */
const LEDGER_STUB_ENTRY = 'bench/perf/ledger-stub/main.ts';
/** ABBA pairs of slices per concurrency of the same-minute (2a) rows (2 with --quick). */
const SAME_MINUTES_PAIRS = 4;

/** Parsed command line. */
export interface PerfOptions {
  quick: boolean;
  seconds: number;
  accounts: number;
  historyEvents: number;
  skipHistory: boolean;
  historyCalls: number;
  historyMaxSeconds: number;
  batchConcurrency: number;
  poolSize: number;
  skipPgbench: boolean;
  keepDb: boolean;
  /** Skip the (2a) rows measured on the same minutes (2a-same-*). */
  skipSameMinutes: boolean;
  /** Skip the rows of the ledger-stub server (1c-*, 1d-*). */
  skipStubRows: boolean;
}

/** One measured row of the result table. */
export interface ScenarioRow {
  id: string;
  scenario: string;
  server: string;
  accounts: string;
  concurrency: number;
  rate: number;
  unit: string;
  latencyMs: LoadResult['latencyMs'];
  ops: number;
  units: number;
  errors: Record<string, number>;
  errorCount: number;
  seconds: number;
  rssMiB: number | null;
  cpu: CpuUsage;
  /** PostgreSQL work per unit (bench/perf/dbwork.ts); null when nothing was done. */
  db?: DbWork | null;
  /** Group-commit transactions and relay drains per unit (bench/perf/server-counters.ts). */
  serverWork?: ServerWork | null;
  /** PostgreSQL's own time per statement (bench/perf/pg-statements.ts); absent without pg_stat_statements. */
  pgStatements?: PgStatementWork[];
  note?: string;
}

/** One target of the issue, measured against its goal. */
export interface TargetCheck {
  target: string;
  measured: number;
  goal: number;
  /** measured / goal (>= 1 meets it; for a latency ceiling goal / measured). */
  ratio: number;
  met: boolean;
  detail: string;
}

const USAGE = `usage: tsx bench/perf.ts [--quick] [--seconds 10] [--accounts 10000] [--history-events 10000000] [--skip-history] [--history-calls 200] [--history-max-seconds 75] [--batch-concurrency 4] [--pool-size 32] [--skip-pgbench] [--skip-same-minutes] [--skip-stub-rows] [--keep-db]`;

function fail(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

function intOption(value: string | undefined, name: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) fail(`--${name} must be an integer in ${min}..${max}`);
  return n;
}

/** Parses argv into {@link PerfOptions}; exits 2 on bad arguments. */
export function parseOptions(argv: string[]): PerfOptions {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      quick: { type: 'boolean', default: false },
      seconds: { type: 'string' },
      accounts: { type: 'string', default: '10000' },
      'history-events': { type: 'string' },
      'skip-history': { type: 'boolean', default: false },
      'history-calls': { type: 'string', default: '200' },
      'history-max-seconds': { type: 'string' },
      'batch-concurrency': { type: 'string', default: '4' },
      'pool-size': { type: 'string', default: '32' },
      'skip-pgbench': { type: 'boolean', default: false },
      'skip-same-minutes': { type: 'boolean', default: false },
      'skip-stub-rows': { type: 'boolean', default: false },
      'keep-db': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const quick = values.quick === true;
  return {
    quick,
    seconds: intOption(values.seconds ?? (quick ? '3' : '10'), 'seconds', 1, 600),
    accounts: intOption(values.accounts, 'accounts', 1, 100_000),
    historyEvents: intOption(values['history-events'] ?? (quick ? '100000' : '10000000'), 'history-events', 1, 100_000_000),
    skipHistory: values['skip-history'] === true,
    historyCalls: intOption(values['history-calls'], 'history-calls', 1, 10_000),
    historyMaxSeconds: intOption(values['history-max-seconds'] ?? (quick ? '20' : '75'), 'history-max-seconds', 1, 3_600),
    batchConcurrency: intOption(values['batch-concurrency'], 'batch-concurrency', 1, 64),
    poolSize: intOption(values['pool-size'], 'pool-size', 1, 200),
    skipPgbench: values['skip-pgbench'] === true,
    skipSameMinutes: values['skip-same-minutes'] === true,
    skipStubRows: values['skip-stub-rows'] === true,
    keepDb: values['keep-db'] === true,
  };
}

// ---------------------------------------------------------------------------------------------
// GraphQL operations (plain strings: the bench's client sends them as they are).

const Q = {
  publishPriceBook: 'mutation PerfPublishPriceBook($input: PriceBookInput!) { publishPriceBook(input: $input) { version } }',
  createAccount: 'mutation PerfCreateAccount($input: CreateAccountInput!) { createAccount(input: $input) { id } }',
  grantCredits: 'mutation PerfGrantCredits($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }',
  recordUsage: 'mutation PerfRecordUsage($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }',
  recordUsageBatch: 'mutation PerfRecordUsageBatch($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { event { id } errorCode } }',
  reserveCredits: 'mutation PerfReserveCredits($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }',
  settleReservation: 'mutation PerfSettleReservation($input: SettleReservationInput!) { settleReservation(input: $input) { id status consumed } }',
  usageSummary:
    'query PerfUsageSummary($id: ID!) { account(id: $id) { usageSummary(groupBy: [CATEGORY, TIER, MODEL]) { category tier model credits events } } }',
  usageHistory: 'query PerfUsageHistory($id: ID!) { account(id: $id) { usageHistory(months: 12) { month total byCategory { category credits events } } } }',
};

/** The LLM calls replayed: token counts of the real Azure 2023 trace (conv -> gpt-4o-mini, code -> codestral-latest). */
interface TraceCall {
  model: string;
  agentId: string;
  userId: string;
  taskId: string;
  inputTokens: number;
  outputTokens: number;
  quantities: Record<string, number>;
}

function loadTrace(): TraceCall[] {
  return planReplay('azure').map((p) => ({
    model: p.model,
    agentId: p.agentId,
    userId: p.userId,
    taskId: p.taskId,
    inputTokens: p.inputTokens,
    outputTokens: p.outputTokens,
    quantities: llmQuantities(p, p.outputTokens) as Record<string, number>,
  }));
}

function fmt(n: number, digits = 0): string {
  return n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function log(line: string): void {
  console.log(`[${new Date().toISOString().slice(11, 19)}] ${line}`);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `work(i)` for i in [0, count) with at most `limit` in flight. */
async function boundedEach(count: number, limit: number, work: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, count) }, async () => {
      while (next < count) await work(next++);
    }),
  );
}

/** Drops and re-creates the bench database, then migrates and seeds it (`tsx prisma/seed.ts`). */
async function prepareDatabase(serverUrl: string): Promise<string> {
  const benchUrl = await recreateDatabase(serverUrl, PERF_DATABASE);
  execFileSync(process.execPath, ['--import', 'tsx', 'prisma/seed.ts'], { cwd: ROOT, env: { ...process.env, DATABASE_URL: benchUrl }, stdio: 'inherit' });
  return benchUrl;
}

/**
 * The checked-out commit, the uncommitted changes under src/, workers/ and prisma/, and a key of
 * the code the servers run (the git trees of those folders plus a hash of their uncommitted
 * diff), so a documentation-only commit during a run does not count as a code change.
 */
export function codeVersion(): { head: string; uncommitted: string[]; codeKey: string } {
  const git = (...args: string[]) => execFileSync('git', args, { cwd: ROOT, maxBuffer: 64 * 2 ** 20 }).toString();
  try {
    const dirs = ['src', 'workers', 'prisma'];
    const trees = dirs.map((d) => git('rev-parse', '--short', `HEAD:${d}`).trim()).join('.');
    const diff = git('diff', 'HEAD', '--', ...dirs) + git('ls-files', '--others', '--exclude-standard', '--', ...dirs);
    return {
      head: git('rev-parse', '--short', 'HEAD').trim(),
      uncommitted: git('status', '--short', '--', ...dirs).split('\n').filter(Boolean),
      codeKey: `${trees}+${createHash('sha1').update(diff).digest('hex').slice(0, 10)}`,
    };
  } catch {
    return { head: 'unknown', uncommitted: [], codeKey: 'unknown' };
  }
}

/** Facts about the machine and the PostgreSQL server, for the JSON. */
async function machineFacts(db: pg.Client): Promise<Record<string, unknown>> {
  const setting = async (name: string) => (await db.query('SELECT current_setting($1) AS v', [name])).rows[0]?.v as string;
  const { head: gitHead, uncommitted: gitDirty, codeKey } = codeVersion();
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memGiB: round(totalmem() / 2 ** 30, 1),
    loadAvgAtStart: loadavg().map((x) => round(x, 2)),
    note: 'shared 2-core VM: PostgreSQL, Redis, the server, this load generator and other engineers\' runs share the cores; figures are noisy',
    node: process.version,
    gitHead,
    codeKey,
    uncommittedInSrc: gitDirty,
    postgres: {
      version: await setting('server_version'),
      shared_buffers: await setting('shared_buffers'),
      fsync: await setting('fsync'),
      synchronous_commit: await setting('synchronous_commit'),
      max_connections: await setting('max_connections'),
      max_parallel_workers_per_gather: await setting('max_parallel_workers_per_gather'),
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Main

/** Runs the whole benchmark. @returns the exit code (0 ok, 1 a check failed). */
export async function main(argv: string[] = process.argv.slice(2)): Promise<number> {
  const o = parseOptions(argv);
  const serverUrl = process.env.DATABASE_URL || DEFAULT_DATABASE_URL;
  const t0 = performance.now();
  const runId = `perf${Date.now().toString(36)}`;
  const envSource = readFileSync(join(ROOT, 'src/config/env.ts'), 'utf8');
  const chargePathDeclared = envSource.includes('CHARGE_PATH');
  log(`perf bench ${runId}: ${JSON.stringify(o)}; PostgreSQL ${new URL(serverUrl).host}, Redis ${process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'}`);
  log(`CHARGE_PATH is ${chargePathDeclared ? '' : 'NOT '}declared in src/config/env.ts${chargePathDeclared ? '' : ' (the servers will ignore it: both "group" and "naive" rows measure the same default path)'}`);

  log(`preparing database ${PERF_DATABASE} (fresh, migrated and seeded) ...`);
  const benchUrl = await prepareDatabase(serverUrl);
  setOwnDatabases([PERF_DATABASE, PGBENCH_DATABASE, 'postgres']);
  const db = new pg.Client({ connectionString: benchUrl });
  await db.connect();
  const machine = await machineFacts(db);
  const pgStatements = await enablePgStatements(db);
  log(
    pgStatements
      ? 'pg_stat_statements: on (this server preloads it; its own overhead is in every number of this run)'
      : 'pg_stat_statements: not preloaded by this server (bench/pg-stat-statements.sh runs the bench on a private PostgreSQL that has it)',
  );
  const trace = loadTrace();
  log(`trace: ${fmt(trace.length)} LLM requests of the Azure LLM inference trace 2023 (conv -> gpt-4o-mini, code -> codestral-latest), cycled`);

  const rows: ScenarioRow[] = [];
  let acknowledgedEvents = 0;
  let uncertainEvents = 0; // requests that timed out or lost their connection: may or may not have committed
  let seq = 0;
  const note = (r: ScenarioRow) => {
    rows.push(r);
    const errs = Object.entries(r.errors).map(([c, n]) => `${c} x${n}`).join(', ') || 'none';
    log(
      `  ${r.id.padEnd(10)} ${r.scenario.padEnd(34)} ${r.server.padEnd(6)} c=${String(r.concurrency).padEnd(3)} ${fmt(r.rate).padStart(8)} ${r.unit}  ` +
        `p50 ${r.latencyMs.p50} ms  p99 ${r.latencyMs.p99} ms  RSS ${r.rssMiB ?? '-'} MiB  cpu srv ${r.cpu.server}% pg ${r.cpu.postgres}% load ${r.cpu.bench + r.cpu.tool}% other ${r.cpu.other}% busy ${r.cpu.machineBusy}% iowait ${r.cpu.iowait}%  errors: ${errs}` +
        (r.serverWork ? `  tx/unit ${r.serverWork.transactionsPerUnit ?? '-'} items/tx ${r.serverWork.itemsPerTransaction ?? '-'} relay drains/unit ${r.serverWork.relayDrainsPerUnit} tx ms ${r.serverWork.meanTransactionMs ?? '-'} carried ${r.serverWork.carriedShare ?? '-'} (misses ${r.serverWork.carriedMissesPerTransaction ?? '-'}) pg round trips/unit ${r.serverWork.pgRoundTripsPerUnit ?? '-'} event loop busy ${r.serverWork.eventLoopUtilization ?? '-'} late ${r.serverWork.eventLoopLatenessMs ?? '-'} ms` : ''),
    );
    if (r.serverWork?.statements?.length) {
      log(`             statements (per unit x mean wall ms): ${r.serverWork.statements.map((t) => `${t.statement} ${t.perUnit}x${t.meanMs}`).join(', ')}`);
    }
    for (const t of (r.pgStatements ?? []).slice(0, 8)) {
      log(`             pg_stat_statements ${formatPgStatement(t, 80)}`);
    }
  };
  const uncertain = (codes: string[]) => {
    for (const c of codes) if (c === 'TIMEOUT' || c === 'NETWORK_ERROR') uncertainEvents++;
  };

  // ---- 1a: pgbench --------------------------------------------------------------------------
  const pgbenchRuns: { rows: number; run: LimitRun }[] = [];
  if (!o.skipPgbench) {
    const bin = findPgbench();
    if (!bin) {
      log('pgbench not found: install it with `apt-get install -y postgresql-contrib` (or run with --skip-pgbench)');
      return 1;
    }
    log(`1a: pgbench (${bin}) on scratch database, ${o.seconds} s per run ...`);
    await preparePgbenchDatabase(serverUrl);
    for (const n of [1, PGBENCH_ACCOUNTS]) {
      for (const c of LIMIT_LEVELS) {
        const before = await readCounters(db, PGBENCH_DATABASE);
        const run = await runPgbench(bin, serverUrl, n, c, o.seconds);
        pgbenchRuns.push({ rows: n, run });
        await sleep(1_500);
        const dbWork = workPerUnit(before, await readCounters(db, PGBENCH_DATABASE), run.units);
        note({
          id: `1a-${n === 1 ? 'hot' : 'rand'}-${c}`,
          scenario: `pgbench UPDATE+INSERT CTE, ${n === 1 ? '1 hot row' : `random of ${fmt(n)}`}`,
          server: '-',
          accounts: n === 1 ? '1' : fmt(n),
          concurrency: c,
          rate: run.unitsPerSecond,
          unit: 'tx/s',
          latencyMs: run.latencyMs,
          ops: run.ops,
          units: run.units,
          errors: run.errors,
          errorCount: run.errorCount,
          seconds: run.seconds,
          rssMiB: null,
          cpu: run.cpu,
          db: dbWork,
        });
      }
    }
    await dropPgbenchDatabase(serverUrl);
  }

  // ---- servers --------------------------------------------------------------------------------
  const adminKey = `cp_admin_${randomBytes(24).toString('hex')}`;
  const serverEnv = (chargePath: string): Record<string, string> => ({
    // The server as deployed (README: NODE_ENV): graphql-js skips its development-only checks
    // (its `instanceOf` looks for duplicate graphql copies whenever a type test fails), and
    // GraphiQL, introspection and field suggestions are off. Runs before 2026-12-04 23:45 UTC
    // measured `development`; `SERVER_NODE_ENV=development` repeats them.
    NODE_ENV: process.env.SERVER_NODE_ENV ?? 'production',
    DATABASE_URL: benchUrl,
    ADMIN_API_KEY: adminKey,
    LOG_LEVEL: 'warn',
    PG_POOL_SIZE: String(o.poolSize),
    RUN_WORKERS: 'false',
    MIGRATE_ON_BOOT: 'false',
    CHARGE_PATH: chargePath,
    PG_QUERY_TIMINGS: 'true',
    LIVE_CHANNEL_PREFIX: `creditpool:bench-perf:${runId}:`,
    QUEUE_PREFIX: `creditpool-bench-perf-${runId}`,
  });
  let server: StartedServer | undefined;
  /** Servers running beside `server` (the ledger-stub server, the second group server), stopped on a signal too. */
  const besides = new Set<StartedServer>();
  const onSignal = () => void Promise.allSettled([server, ...besides].map((s) => s?.stop(5_000))).finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const migrationsMidRun: string[] = [];
  /** Applies migrations committed since the run began (other engineers work concurrently), so code and schema match. */
  const migrate = async () => {
    const { applied } = await applyMigrations(benchUrl);
    if (applied.length) {
      migrationsMidRun.push(...applied);
      log(`NOTE: applied migrations that appeared during the run: ${applied.join(', ')} (the code changed mid-run; rows before and after are not comparable)`);
    }
  };
  const start = async (label: string, chargePath: string, entry?: { serverEntry: string; env: Record<string, string> }): Promise<StartedServer> => {
    await migrate();
    const s = await startServer({ name: `bench-perf-${label}`, workers: false, env: { ...serverEnv(chargePath), ...entry?.env }, ...(entry ? { serverEntry: entry.serverEntry } : {}) });
    log(`server "${label}" (CHARGE_PATH=${chargePath}${entry ? `, entry ${entry.serverEntry}` : ''}) at ${s.graphqlUrl}, pid ${s.pids.server}, RSS ${rssMiB(s.pids.server)} MiB (log ${s.logs.server})`);
    return s;
  };

  const spread: string[] = [];
  const hot: Record<'group' | 'naive', string> = { group: '', naive: '' };
  let historyAccount = '';

  /** recordUsage input for trace request i of scenario `tag` on `accountId`. */
  const usageInput = (accountId: string, tag: string, extra: Record<string, unknown> = {}) => {
    const n = seq++;
    const p = trace[n % trace.length]!;
    return {
      accountId,
      idempotencyKey: `${runId}:${tag}:${n}`,
      category: 'llm',
      model: p.model,
      agentId: p.agentId,
      userId: p.userId,
      taskId: p.taskId,
      quantities: p.quantities,
      ...extra,
    };
  };

  /** One recordUsage per call; `stored` = false for the ledger-stub server (rows 1c), whose answers are not events. */
  const recordUsageOp = (c: PerfClient, account: (i: number) => string, tag: string, stored = true) => async (i: number): Promise<OpOutcome> => {
    const r = await c.gql(Q.recordUsage, { input: usageInput(account(i), tag) });
    if (r.errorCode) {
      if (stored) uncertain([r.errorCode]);
      return { units: 0, errors: [r.errorCode] };
    }
    if (stored) acknowledgedEvents++;
    return { units: 1, errors: [] };
  };

  /**
   * One recordUsageBatch of `size` events per call, on the hot group account or spread over the
   * accounts; `stored` = false for the ledger-stub server (rows 1d).
   */
  const recordUsageBatchOp = (cl: PerfClient, size: number, target: 'spread' | 'hot', tag: string, stored = true) => {
    let k = 0;
    return async (): Promise<OpOutcome> => {
      const inputs = Array.from({ length: size }, () => usageInput(target === 'hot' ? hot.group : spread[k++ % spread.length]!, tag));
      const r = await cl.gql<{ recordUsageBatch: { event: { id: string } | null; errorCode: string | null }[] }>(Q.recordUsageBatch, { inputs }, 120_000);
      if (!r.data?.recordUsageBatch) {
        if (stored) {
          uncertain([r.errorCode ?? 'BAD_RESPONSE']);
          if (r.errorCode === 'TIMEOUT' || r.errorCode === 'NETWORK_ERROR') uncertainEvents += size - 1;
        }
        return { units: 0, errors: [r.errorCode ?? 'BAD_RESPONSE'] };
      }
      let ok = 0;
      const errors: string[] = [];
      for (const item of r.data.recordUsageBatch) {
        if (item.event) ok++;
        else errors.push(item.errorCode ?? 'NO_CODE');
      }
      if (stored) acknowledgedEvents += ok;
      return { units: ok, errors };
    };
  };

  /** Runs one closed-loop scenario on the running server and records its row. */
  /** A closed-loop load of `c` clients on server `s` for `seconds`, over a client of its own. */
  const loadOn = async (s: StartedServer, c: number, seconds: number, makeOp: (cl: PerfClient) => (i: number) => Promise<OpOutcome>) => {
    const cl = createPerfClient(s.graphqlUrl, adminKey, c);
    try {
      return await closedLoop(c, seconds, makeOp(cl));
    } finally {
      cl.close();
    }
  };

  const measure = async (
    meta: Omit<ScenarioRow, 'rate' | 'latencyMs' | 'ops' | 'units' | 'errors' | 'errorCount' | 'seconds' | 'rssMiB' | 'cpu'>,
    makeOp: (c: PerfClient) => (i: number) => Promise<OpOutcome>,
    on?: StartedServer,
  ): Promise<ScenarioRow> => {
    const s = on ?? server!;
    const before = await readCounters(db, PERF_DATABASE);
    const countersBefore = await readServerCounters(s.graphqlUrl);
    if (pgStatements) await resetPgStatements(db);
    const { result, cpu } = await withCpu(s.pids.server, () => loadOn(s, meta.concurrency, o.seconds, makeOp));
    const rss = rssMiB(s.pids.server);
    await sleep(1_500); // backends publish their counters when idle, at most once a second
    const row: ScenarioRow = {
      ...meta,
      rate: result.unitsPerSecond,
      latencyMs: result.latencyMs,
      ops: result.ops,
      units: result.units,
      errors: result.errors,
      errorCount: result.errorCount,
      seconds: result.seconds,
      rssMiB: rss,
      cpu,
      db: workPerUnit(before, await readCounters(db, PERF_DATABASE), result.units),
      serverWork: serverWorkPerUnit(countersBefore, await readServerCounters(s.graphqlUrl), result.units),
      ...(pgStatements ? { pgStatements: await readPgStatements(db, PERF_DATABASE, result.units) } : {}),
    };
    note(row);
    return row;
  };

  const warmUp = async (seconds: number) => {
    const r = await loadOn(server!, 8, seconds, (c) => recordUsageOp(c, (i) => spread[i % spread.length]!, 'warmup'));
    log(`  warm-up (not measured): ${fmt(r.units)} recordUsage in ${r.seconds} s, errors ${r.errorCount}`);
    // The bench database starts empty: tables analyzed while empty make PostgreSQL plan (and
    // cache, foreign-key checks included) whole-table scans until autovacuum's ANALYZE comes by.
    // A production database has statistics; so does this one before anything is measured,
    // closed holds included (bench/perf/closed-holds.ts).
    const t0 = performance.now();
    const holds = await seedClosedHolds(db, 2);
    await db.query('ANALYZE');
    log(`  ${fmt(holds)} closed holds seeded, ANALYZE after warm-up: ${round((performance.now() - t0) / 1000, 1)} s`);
  };

  /**
   * (2a) on the same minutes (rows 2a-same-group-C and 2a-same-naive-C): the 2a rows above
   * measure the naive path minutes after the group path, and this machine's speed drifts over
   * minutes (per-run (2a) ratios at 8 clients of 3.6x-5.8x for the same code). Here a second
   * group server runs beside the naive one on the same database, and closed-loop slices of
   * recordUsage on each path's hot account alternate group, naive, naive, group, … (ABBA, so
   * neither always goes first), SAME_MINUTES_PAIRS pairs of half --seconds each per concurrency;
   * each row sums its path's slices (bench/experiments/hot-ratio-interleaved.ts does the same on
   * a database of its own).
   */
  const sameMinutes = async (naive: StartedServer) => {
    const group = await start('group-same', 'group');
    besides.add(group);
    try {
      // The new server's warm-up, as warmUp's charges (the database is analyzed already).
      await loadOn(group, 8, o.quick ? 1 : 3, (cl) => recordUsageOp(cl, (i) => spread[i % spread.length]!, 'warmup'));
      const servers = { group, naive };
      const sliceSeconds = Math.max(1, Math.round(o.seconds / 2));
      const pairs = o.quick ? 2 : SAME_MINUTES_PAIRS;
      // One unmeasured slice per path on its hot account first: the new server's charge path is
      // still being compiled by V8 after the short warm-up (a quick run measured it at 1,059
      // events/s and 97 % of a core against 1,257 and 85 % for the first group server).
      for (const path of ['group', 'naive'] as const) await loadOn(servers[path], 8, sliceSeconds, (cl) => recordUsageOp(cl, () => hot[path], `2a-same-warmup-${path}`));
      for (const c of LEVELS) {
        const slices: Record<'group' | 'naive', { result: LoadResult; cpu: CpuUsage }[]> = { group: [], naive: [] };
        for (let i = 0; i < pairs; i++) {
          for (const path of i % 2 === 0 ? (['group', 'naive'] as const) : (['naive', 'group'] as const)) {
            const s = servers[path];
            slices[path].push(await withCpu(s.pids.server, () => loadOn(s, c, sliceSeconds, (cl) => recordUsageOp(cl, () => hot[path], `2a-same-${path}-${c}`))));
          }
        }
        for (const path of ['group', 'naive'] as const) {
          const r = mergeLoadResults(slices[path].map((x) => x.result));
          note({
            id: `2a-same-${path}-${c}`,
            scenario: `recordUsage, 1 hot account, same minutes`,
            server: serverLabel(path),
            accounts: '1',
            concurrency: c,
            unit: 'events/s',
            rate: r.unitsPerSecond,
            latencyMs: r.latencyMs,
            ops: r.ops,
            units: r.units,
            errors: r.errors,
            errorCount: r.errorCount,
            seconds: r.seconds,
            rssMiB: rssMiB(servers[path].pids.server),
            cpu: mergeCpuUsage(slices[path].map((x) => x.cpu)),
            note: `${pairs} slices of ${sliceSeconds} s alternating with the ${path === 'group' ? 'naive' : 'group'} server (ABBA); rates per slice ${slices[path].map((x) => fmt(x.result.unitsPerSecond)).join(' / ')}; latency percentiles are the slices' weighted by their requests`,
          });
        }
      }
    } finally {
      await group.stop();
      besides.delete(group);
    }
  };

  const checks: { check: string; ok: boolean; detail: string }[] = [];
  let history: { generation: HistoryGeneration; summary: HistoryRead; history: HistoryRead } | null = null;
  let failedEarly: string | null = null;
  const serverLabel = (path: 'group' | 'naive') => (chargePathDeclared ? path : `${path}?`);

  try {
    // ---- server G: CHARGE_PATH=group ----------------------------------------------------------
    server = await start('group', 'group');
    const admin = createPerfClient(server.graphqlUrl, adminKey, 16);
    const pb = await admin.gql(Q.publishPriceBook, { input: demoPriceBook(`creditpool perf bench ${runId}`) });
    if (pb.errorCode) throw new Error(`publishPriceBook failed: ${pb.errorCode} ${pb.errors[0]?.message}`);
    await sleep(1_500); // the price book cache lives 1 s

    const tCreate = performance.now();
    let createErrors = 0;
    await boundedEach(o.accounts, 16, async (i) => {
      // The welcome bonus (100 FREE credits, 30 days) covers thousands of these events per account.
      const r = await admin.gql<{ createAccount: { id: string } }>(Q.createAccount, {
        input: { externalId: `${runId}-acct-${i}`, name: `perf account ${i}`, kind: 'ORGANIZATION', welcomeBonus: true },
      });
      if (r.data?.createAccount) spread[i] = r.data.createAccount.id;
      else createErrors++;
    });
    for (const key of ['group', 'naive', 'history'] as const) {
      const r = await admin.gql<{ createAccount: { id: string } }>(Q.createAccount, {
        input: { externalId: `${runId}-${key}`, name: `perf ${key} account`, kind: 'ORGANIZATION', welcomeBonus: false },
      });
      const id = r.data?.createAccount.id;
      if (!id) throw new Error(`createAccount ${key} failed: ${r.errorCode} ${r.errors[0]?.message}`);
      if (key === 'history') historyAccount = id;
      else {
        hot[key] = id;
        const g = await admin.gql(Q.grantCredits, { input: { accountId: id, amount: '100000000', type: 'PAID', source: 'PURCHASE', idempotencyKey: `${runId}-grant-${key}` } });
        if (g.errorCode) throw new Error(`grantCredits failed: ${g.errorCode} ${g.errors[0]?.message}`);
      }
    }
    admin.close();
    if (createErrors > 0 || spread.length !== o.accounts) throw new Error(`${createErrors} createAccount calls failed`);
    const { rows: low } = await db.query('SELECT count(*)::int AS n FROM balances WHERE total_micro_credits < 10000000');
    if ((low[0]?.n ?? 0) > 1) throw new Error(`${low[0]?.n} accounts have less than 10 credits: is the welcome bonus 0 in settings?`);
    log(`created ${fmt(o.accounts)} accounts (100 FREE welcome credits each) + 2 hot accounts (100,000,000 PAID credits) + 1 history account in ${((performance.now() - tCreate) / 1000).toFixed(1)} s`);

    await warmUp(o.quick ? 1 : 3);

    // 1b: { __typename } with autocannon.
    for (const c of LIMIT_LEVELS) {
      const before = await readCounters(db, PERF_DATABASE);
      const run = await runAutocannon(ROOT, server.graphqlUrl, adminKey, c, o.seconds, server.pids.server);
      const rss = rssMiB(server.pids.server);
      await sleep(1_500);
      const dbWork = workPerUnit(before, await readCounters(db, PERF_DATABASE), run.units);
      note({
        id: `1b-${c}`,
        scenario: '{ __typename } (autocannon)',
        server: 'group',
        accounts: '-',
        concurrency: c,
        rate: run.unitsPerSecond,
        unit: 'req/s',
        latencyMs: run.latencyMs,
        ops: run.ops,
        units: run.units,
        errors: run.errors,
        errorCount: run.errorCount,
        seconds: run.seconds,
        rssMiB: rss,
        cpu: run.cpu,
        db: dbWork,
        note: 'autocannon latency: p95 column is p97.5',
      });
    }

    // 1c/1d: the same server with the ledger stubbed (bench/perf/ledger-stub/): the requests of
    // (2b) and (3), validated and answered without ledger work. Not a limit the issue names: what
    // "the GraphQL request around" a charge costs, for the references printed after the targets.
    if (!o.skipStubRows) {
      const stub = await start('ledger-stub', 'group', { serverEntry: LEDGER_STUB_ENTRY, env: { OUTBOX_RELAY: 'false' } });
      besides.add(stub);
      try {
        await loadOn(stub, 8, o.quick ? 1 : 3, (cl) => recordUsageOp(cl, (i) => spread[i % spread.length]!, 'stub-warmup', false));
        for (const c of LIMIT_LEVELS) {
          await measure(
            { id: `1c-${c}`, scenario: `recordUsage, ledger stubbed, ${fmt(o.accounts)} accounts`, server: 'stub', accounts: fmt(o.accounts), concurrency: c, unit: 'req/s', note: 'the 2b requests; validated and answered without pricing or database work' },
            (cl) => recordUsageOp(cl, (i) => spread[(i * 7919) % spread.length]!, `1c-${c}`, false),
            stub,
          );
        }
        for (const size of [100, 1000]) {
          await measure(
            {
              id: `1d-${size}`,
              scenario: `recordUsageBatch(${fmt(size)}), ledger stubbed`,
              server: 'stub',
              accounts: fmt(o.accounts),
              concurrency: o.batchConcurrency,
              unit: 'events/s',
              note: `the 3-${size}-spread requests (${o.batchConcurrency} in flight); validated and answered without pricing or database work`,
            },
            (cl) => recordUsageBatchOp(cl, size, 'spread', `1d-${size}`, false),
            stub,
          );
        }
      } finally {
        await stub.stop();
        besides.delete(stub);
      }
      const { rows: written } = await db.query(`SELECT count(*)::int AS n FROM usage_events WHERE idempotency_key LIKE $1 OR idempotency_key LIKE $2`, [`${runId}:1c-%`, `${runId}:1d-%`]);
      const answered = rows.filter((r) => r.server === 'stub').reduce((a, r) => a + r.units, 0);
      checks.push({
        check: 'the ledger-stub server wrote nothing',
        ok: written[0]?.n === 0 && answered > 0,
        detail: `${fmt(answered)} events answered by it, ${written[0]?.n} stored`,
      });
    }

    // 2a/2b on the group server.
    const recordUsageScenarios = async (path: 'group' | 'naive') => {
      for (const c of LEVELS) {
        await measure(
          { id: `2a-${path}-${c}`, scenario: 'recordUsage, 1 hot account', server: serverLabel(path), accounts: '1', concurrency: c, unit: 'events/s' },
          (cl) => recordUsageOp(cl, () => hot[path], `2a-${path}-${c}`),
        );
      }
      for (const c of LEVELS) {
        await measure(
          { id: `2b-${path}-${c}`, scenario: `recordUsage, ${fmt(o.accounts)} accounts`, server: serverLabel(path), accounts: fmt(o.accounts), concurrency: c, unit: 'events/s' },
          (cl) => recordUsageOp(cl, (i) => spread[(i * 7919) % spread.length]!, `2b-${path}-${c}`),
        );
      }
    };
    await recordUsageScenarios('group');

    // 3: recordUsageBatch.
    for (const size of [100, 1000]) {
      for (const target of ['spread', 'hot'] as const) {
        await measure(
          {
            id: `3-${size}-${target}`,
            scenario: `recordUsageBatch(${fmt(size)}), ${target === 'hot' ? '1 hot account' : `${fmt(o.accounts)} accounts`}`,
            server: serverLabel('group'),
            accounts: target === 'hot' ? '1' : fmt(o.accounts),
            concurrency: o.batchConcurrency,
            unit: 'events/s',
            note: `${o.batchConcurrency} requests of ${size} events in flight; latency per request`,
          },
          (cl) => recordUsageBatchOp(cl, size, target, `3-${size}-${target}`),
        );
      }
    }

    // 4: reserve -> 3 partial captures -> settle.
    for (const c of LEVELS) {
      await measure(
        {
          id: `4-${c}`,
          scenario: `job: reserve, 3 captures, settle; ${fmt(o.accounts)} accts`,
          server: serverLabel('group'),
          accounts: fmt(o.accounts),
          concurrency: c,
          unit: 'jobs/s',
          note: '5 requests per job; latency per job',
        },
        (cl) => async (i) => {
          const accountId = spread[(i * 7919 + 13) % spread.length]!;
          const tag = `4-${c}-${i}`;
          const res = await cl.gql<{ reserveCredits: { id: string } }>(Q.reserveCredits, {
            input: { accountId, amount: '1', ttlSeconds: 300, idempotencyKey: `${runId}:${tag}:hold` },
          });
          const reservationId = res.data?.reserveCredits?.id;
          if (!reservationId) return { units: 0, errors: [`reserve:${res.errorCode}`] };
          const n = seq;
          const base = usageInput(accountId, tag);
          const p = trace[n % trace.length]!;
          const out1 = Math.floor(p.outputTokens / 3);
          const out2 = Math.floor(p.outputTokens / 3);
          const parts = [
            { ...base, idempotencyKey: `${base.idempotencyKey}:part1`, reservationId, quantities: { ...p.quantities, outputTokens: out1 } },
            { ...base, idempotencyKey: `${base.idempotencyKey}:part2`, reservationId, quantities: { outputTokens: out2 } },
            { ...base, idempotencyKey: `${base.idempotencyKey}:part3`, reservationId, quantities: { outputTokens: p.outputTokens - out1 - out2 } },
          ];
          const errors: string[] = [];
          for (const input of parts) {
            const r = await cl.gql(Q.recordUsage, { input });
            if (r.errorCode) {
              uncertain([r.errorCode]);
              errors.push(`capture:${r.errorCode}`);
            } else acknowledgedEvents++;
          }
          const s = await cl.gql<{ settleReservation: { status: string } }>(Q.settleReservation, { input: { reservationId, usage: [] } });
          if (s.errorCode) errors.push(`settle:${s.errorCode}`);
          else if (s.data?.settleReservation.status !== 'SETTLED') errors.push(`settle:status ${s.data?.settleReservation.status}`);
          return { units: errors.length === 0 ? 1 : 0, errors };
        },
      );
    }
    await server.stop();
    server = undefined;

    // ---- server N: CHARGE_PATH=naive ----------------------------------------------------------
    server = await start('naive', 'naive');
    await warmUp(o.quick ? 1 : 3);
    await recordUsageScenarios('naive');
    if (!o.skipSameMinutes) await sameMinutes(server);
    await server.stop();
    server = undefined;

    // ---- 5: history ---------------------------------------------------------------------------
    if (!o.skipHistory) {
      await migrate();
      log(`5: generating ${fmt(o.historyEvents)} usage events on one account with SQL (no server running) ...`);
      const now = new Date();
      const dbId = tryDecodeId(historyAccount)?.id;
      if (!dbId) throw new Error(`cannot decode the account id ${historyAccount}`);
      const generation = await generateHistory(
        db,
        dbId,
        o.historyEvents,
        trace.map((t) => ({ model: t.model, inputTokens: t.inputTokens, outputTokens: t.outputTokens })),
        historyAnchor(now),
        now,
        log,
      );
      log(
        `  generation: ${generation.seconds} s (inserts ${generation.insertSeconds} s = ${fmt(generation.rowsPerSecond)} rows/s, VACUUM ANALYZE ${generation.vacuumAnalyzeSeconds} s); ` +
          `usage_events ${fmt(generation.tableSizeMiB)} MiB + indexes ${fmt(generation.indexesSizeMiB)} MiB`,
      );
      server = await start('history', 'group');
      const summary = await readRepeatedly(db, server, adminKey, Q.usageSummary, historyAccount, o, (d) => {
        const list = (d as { account: { usageSummary: { events: number }[] } }).account.usageSummary;
        return { rows: list.length, events: list.reduce((a, r) => a + r.events, 0) };
      });
      const hist = await readRepeatedly(db, server, adminKey, Q.usageHistory, historyAccount, o, (d) => {
        const months = (d as { account: { usageHistory: { byCategory: { events: number }[] }[] } }).account.usageHistory;
        return { rows: months.length, events: months.reduce((a, m) => a + m.byCategory.reduce((x, r) => x + r.events, 0), 0) };
      });
      history = { generation, summary, history: hist };
      for (const [id, label, r] of [
        ['5-summary', 'usageSummary [CATEGORY,TIER,MODEL]', summary],
        ['5-history', 'usageHistory(months: 12)', hist],
      ] as const) {
        note({
          id,
          scenario: label,
          server: serverLabel('group'),
          accounts: `1 (${fmtShort(o.historyEvents)} ev)`,
          concurrency: 1,
          rate: r.seconds > 0 ? round(r.latencyMs.p50 > 0 ? (r.calls - Object.values(r.errors).reduce((a, b) => a + b, 0)) / r.seconds : 0, 2) : 0,
          unit: 'calls/s',
          latencyMs: r.latencyMs,
          ops: r.calls,
          units: r.calls - Object.values(r.errors).reduce((a, b) => a + b, 0),
          errors: r.errors,
          errorCount: Object.values(r.errors).reduce((a, b) => a + b, 0),
          seconds: r.seconds,
          rssMiB: r.rssMiB,
          cpu: r.cpu,
          db: r.db,
          note: `${r.calls} sequential calls (first call ${r.firstCallMs} ms and ${r.warmUpCalls} warm-up calls not counted); ${r.resultRows} rows, ${fmt(r.resultEvents)} events in the answer`,
        });
      }
      await server.stop();
      server = undefined;
    }
  } catch (e) {
    failedEarly = (e as Error).message;
    log(`FAILED: ${failedEarly}`);
  } finally {
    await server?.stop();
    server = undefined;
  }

  // ---- checks ------------------------------------------------------------------------------
  const inv = await db.query(`
    WITH b AS (SELECT account_id, total_micro_credits AS total, debt_micro_credits AS debt FROM balances),
         bat AS (SELECT account_id, SUM(remaining_micro_credits) AS s FROM credit_batches WHERE status = 'ACTIVE' GROUP BY 1),
         led AS (SELECT account_id, SUM(amount_micro_credits) AS s FROM ledger_entries WHERE type NOT IN ('RESERVE', 'RELEASE') GROUP BY 1)
    SELECT count(*)::int AS accounts,
           count(*) FILTER (WHERE b.total <> COALESCE(bat.s, 0) - b.debt OR b.total <> COALESCE(led.s, 0))::int AS bad,
           (array_agg(b.account_id::text) FILTER (WHERE b.total <> COALESCE(bat.s, 0) - b.debt OR b.total <> COALESCE(led.s, 0)))[1:3] AS examples
      FROM b LEFT JOIN bat USING (account_id) LEFT JOIN led USING (account_id)`);
  const invRow = inv.rows[0] as { accounts: number; bad: number; examples: string[] | null };
  checks.push({
    check: 'ledger invariant (every account of the run)',
    ok: invRow.bad === 0 && invRow.accounts > 0,
    detail: `${fmt(invRow.accounts)} accounts, ${invRow.bad} inconsistent${invRow.examples?.length ? ` (e.g. ${invRow.examples.join(', ')})` : ''}: total = SUM(ACTIVE batches) - debt = SUM(ledger entries except RESERVE/RELEASE)`,
  });
  const stored = Number((await db.query('SELECT count(*) AS n FROM usage_events WHERE idempotency_key LIKE $1', [`${runId}:%`])).rows[0]?.n ?? 0);
  checks.push({
    check: 'events acknowledged = events stored',
    ok: stored >= acknowledgedEvents && stored <= acknowledgedEvents + uncertainEvents,
    detail: `${fmt(acknowledgedEvents)} acknowledged by the API, ${fmt(stored)} stored${uncertainEvents ? `, ${fmt(uncertainEvents)} in requests that timed out or lost their connection` : ''}`,
  });
  const activeHolds = Number((await db.query(`SELECT count(*) AS n FROM reservations WHERE status = 'ACTIVE'`)).rows[0]?.n ?? 0);
  checks.push({ check: 'no reservation left ACTIVE', ok: activeHolds === 0, detail: `${activeHolds} ACTIVE` });
  const withErrors = rows.filter((r) => r.errorCount > 0);
  checks.push({
    check: 'no errors in any scenario',
    ok: withErrors.length === 0,
    detail: withErrors.length ? withErrors.map((r) => `${r.id}: ${Object.entries(r.errors).map(([c, n]) => `${c} x${n}`).join(', ')}`).join('; ') : `${rows.length} scenarios`,
  });
  const codeAtEnd = codeVersion();
  const codeChanged = codeAtEnd.codeKey !== machine.codeKey || migrationsMidRun.length > 0;
  checks.push({
    check: 'same code for the whole run',
    ok: !codeChanged,
    detail: codeChanged
      ? `code ${String(machine.codeKey)} (HEAD ${String(machine.gitHead)}) at start, ${codeAtEnd.codeKey} (HEAD ${codeAtEnd.head}) at the end${migrationsMidRun.length ? `; migrations applied mid-run: ${migrationsMidRun.join(', ')}` : ''} (servers run the code present when each started)`
      : `HEAD ${codeAtEnd.head}, code ${codeAtEnd.codeKey}${codeAtEnd.uncommitted.length ? ` + ${codeAtEnd.uncommitted.length} uncommitted file(s) under src/workers/prisma` : ''}`,
  });
  if (failedEarly) checks.push({ check: 'all scenarios ran', ok: false, detail: failedEarly });
  await db.end();
  if (!o.keepDb) {
    // ~9 GB after a full run: dropped on this shared machine unless --keep-db.
    await dropDatabase(serverUrl, PERF_DATABASE);
    log(`dropped ${PERF_DATABASE} (--keep-db keeps it for inspection)`);
  }

  // ---- table, targets, JSON ------------------------------------------------------------------
  const targets = computeTargets(rows, chargePathDeclared);
  printTable(rows, o);
  console.log('');
  console.log('Targets of issue #6 (ratio = measured / goal; >= 1.00 meets it):');
  for (const t of targets) console.log(`  ${t.met ? 'MET ' : 'MISS'}  ${t.ratio.toFixed(2).padStart(6)}  ${t.target}: ${t.detail}`);
  const references = computeReferences(rows);
  if (references.length) {
    console.log('');
    console.log('References, not targets (rows 1c/1d: the same requests answered with the ledger stubbed; ratio = measured / reference):');
    for (const t of references) console.log(`  ${t.ratio.toFixed(2).padStart(6)}  ${t.target}: ${t.detail}`);
  }
  console.log('');
  console.log('Checks:');
  for (const c of checks) console.log(`  ${c.ok ? 'OK    ' : 'FAILED'}  ${c.check}: ${c.detail}`);
  if (history) {
    const g = history.generation;
    console.log('');
    console.log(
      `History generation: ${fmt(g.events)} events in ${g.seconds} s (inserts ${g.insertSeconds} s = ${fmt(g.rowsPerSecond)} rows/s in ${g.chunks} chunks, VACUUM ANALYZE ${g.vacuumAnalyzeSeconds} s), ` +
        `occurred_at ${g.from.slice(0, 10)} .. ${g.to.slice(0, 10)}; usage_events ${fmt(g.tableSizeMiB)} MiB + indexes ${fmt(g.indexesSizeMiB)} MiB`,
    );
  }
  const ok = checks.every((c) => c.ok);
  const totalSeconds = round((performance.now() - t0) / 1000, 1);
  mkdirSync(join(ROOT, 'bench/results'), { recursive: true });
  const stamp = new Date().toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-');
  const file = join(ROOT, 'bench/results', `perf-${stamp}${o.quick ? '-quick' : ''}.json`);
  writeFileSync(
    file,
    `${JSON.stringify(
      {
        measuredAt: new Date().toISOString(),
        runId,
        command: `bash scripts/with-services.sh npx tsx bench/perf.ts ${argv.join(' ')}`.trim(),
        options: o,
        totalSeconds,
        machine: { ...machine, loadAvgAtEnd: loadavg().map((x) => round(x, 2)), gitHeadAtEnd: codeAtEnd.head, codeKeyAtEnd: codeAtEnd.codeKey },
        serverNodeEnv: process.env.SERVER_NODE_ENV ?? 'production',
        chargePath: { declaredInEnv: chargePathDeclared, servers: { group: 'CHARGE_PATH=group', naive: 'CHARGE_PATH=naive', history: 'CHARGE_PATH=group', stub: `CHARGE_PATH=group, entry ${LEDGER_STUB_ENTRY}, OUTBOX_RELAY=false` } },
        pgbenchScript: pgbenchRuns.length ? PGBENCH_SCRIPT : null,
        pgbenchCommands: pgbenchRuns.map((r) => r.run.command),
        cpuNote: 'cpu: percent of ONE core during the scenario (200 = both cores); load = this bench process + autocannon/pgbench; other = rest of the machine',
        scenarios: rows,
        history: history ? { generation: history.generation, usageSummary: history.summary, usageHistory: history.history } : null,
        targets,
        references,
        checks,
        ok,
      },
      null,
      2,
    )}\n`,
  );
  log(`wrote ${file} (${totalSeconds} s in all); ${ok ? 'all checks passed' : 'CHECKS FAILED'}`);
  return ok ? 0 : 1;
}

function fmtShort(n: number): string {
  if (n >= 1_000_000) return `${round(n / 1_000_000, 1)}M`;
  if (n >= 1_000) return `${round(n / 1_000, 1)}k`;
  return String(n);
}

// ---------------------------------------------------------------------------------------------
// History reads

/** Sequential calls of one history query. */
export interface HistoryRead {
  calls: number;
  seconds: number;
  firstCallMs: number;
  /** Untimed calls after the first one, before the timed ones (the server's JIT warm-up). */
  warmUpCalls: number;
  latencyMs: LoadResult['latencyMs'];
  errors: Record<string, number>;
  resultRows: number;
  resultEvents: number;
  rssMiB: number | null;
  cpu: CpuUsage;
  /** PostgreSQL work per call (the first call and the warm-up calls included). */
  db: DbWork | null;
}

/**
 * Untimed calls of each history query before the timed ones. The history server is freshly
 * started: measured on 2026-12-04 (bench/HISTORY.md, 096b3f0), its first 50 usageSummary calls had a p95 of
 * ~23 ms while V8 compiled the hot code (server CPU 130 %), the next 350 a p95 of 7-11 ms (55 %).
 * Every other scenario is measured after a warm-up too.
 */
const HISTORY_WARM_UP_CALLS = 50;

/**
 * Calls `query` sequentially: a first call (its latency reported, not counted), then
 * HISTORY_WARM_UP_CALLS untimed calls, then up to --history-calls timed calls, stopping early
 * after --history-max-seconds (at least 3 calls). Failed calls count as errors in every phase.
 */
async function readRepeatedly(
  db: pg.Client,
  server: StartedServer,
  adminKey: string,
  query: string,
  accountId: string,
  o: PerfOptions,
  shape: (data: unknown) => { rows: number; events: number },
): Promise<HistoryRead> {
  const c = createPerfClient(server.graphqlUrl, adminKey, 1);
  const errors: Record<string, number> = {};
  const before = await readCounters(db, PERF_DATABASE);
  const latencies: number[] = [];
  let calls = 0;
  let resultRows = 0;
  let resultEvents = 0;
  try {
    const tf = performance.now();
    const first = await c.gql(query, { id: accountId }, 600_000);
    const firstCallMs = round(performance.now() - tf, 1);
    if (first.errorCode) errors[first.errorCode] = (errors[first.errorCode] ?? 0) + 1;
    else ({ rows: resultRows, events: resultEvents } = shape(first.data));
    const tw = performance.now();
    let warmUpCalls = 0;
    while (warmUpCalls < HISTORY_WARM_UP_CALLS && performance.now() - tw < o.historyMaxSeconds * 1000) {
      const r = await c.gql(query, { id: accountId }, 600_000);
      warmUpCalls++;
      if (r.errorCode) errors[r.errorCode] = (errors[r.errorCode] ?? 0) + 1;
    }
    const { result: seconds, cpu } = await withCpu(server.pids.server, async () => {
      const t0 = performance.now();
      while (calls < o.historyCalls && (calls < 3 || performance.now() - t0 < o.historyMaxSeconds * 1000)) {
        const t = performance.now();
        const r = await c.gql(query, { id: accountId }, 600_000);
        calls++;
        if (r.errorCode) errors[r.errorCode] = (errors[r.errorCode] ?? 0) + 1;
        else latencies.push(performance.now() - t); // failed calls are counted as errors, not timed
      }
      return round((performance.now() - t0) / 1000, 2);
    });
    const rss = rssMiB(server.pids.server);
    await sleep(1_500);
    const dbWork = workPerUnit(before, await readCounters(db, PERF_DATABASE), calls + 1 + warmUpCalls);
    return { calls, seconds, firstCallMs, warmUpCalls, latencyMs: latencyStats(latencies), errors, resultRows, resultEvents, rssMiB: rss, cpu, db: dbWork };
  } finally {
    c.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Targets and output

/**
 * One measured figure against its goal: ratio = measured / goal (goal / measured for a
 * `ceiling`), met when >= 1 and the `involved` rows had no errors (their count is appended to
 * the detail after `errorLabel`).
 */
function ratioCheck(
  target: string,
  measured: number,
  goal: number,
  detail: string,
  involved: readonly (ScenarioRow | undefined)[],
  opts: { ceiling?: boolean; errorLabel?: string } = {},
): TargetCheck {
  const ratio = opts.ceiling ? (measured > 0 ? goal / measured : 0) : goal > 0 ? measured / goal : 0;
  const errors = involved.reduce((a, r) => a + (r?.errorCount ?? 0), 0);
  const label = opts.errorLabel ?? 'NOT MET: ';
  return { target, measured, goal: round(goal, 1), ratio: round(ratio, 2), met: ratio >= 1 && errors === 0, detail: errors ? `${detail} [${label}${errors} errors]` : detail };
}

/** The fastest pgbench random-rows row (1a-rand-*), the base of (3)'s goal; undefined without pgbench. */
function bestPgbenchRandom(rows: readonly ScenarioRow[]): ScenarioRow | undefined {
  const pgRand = rows.filter((r) => r.id.startsWith('1a-rand-'));
  return pgRand.length ? pgRand.reduce((a, b) => (b.rate > a.rate ? b : a)) : undefined;
}

/**
 * The issue's targets, each as measured / goal:
 *   (2b) >= 50 % of min(1a random, 1b) at the same concurrency;
 *   (2a group) >= 5 x (2a naive) at the same concurrency, and the same on the same minutes
 *     (2a-same-group / 2a-same-naive, slices alternating between the two servers);
 *   (3) >= 1.5 x the best pgbench (1a random) tx/s, for each recordUsageBatch row;
 *   (4) jobs/s x 5 >= 80 % of (2b) events/s at the same concurrency;
 *   (5) p95 <= 20 ms.
 */
export function computeTargets(rows: readonly ScenarioRow[], chargePathDeclared: boolean): TargetCheck[] {
  const by = (id: string) => rows.find((r) => r.id === id);
  const out: TargetCheck[] = [];
  const add = (target: string, measured: number, goal: number, detail: string, ceiling = false, involved: (ScenarioRow | undefined)[] = []) => {
    out.push(ratioCheck(target, measured, goal, detail, involved, { ceiling }));
  };
  for (const c of LIMIT_LEVELS) {
    const b2 = by(`2b-group-${c}`);
    const a1 = by(`1a-rand-${c}`);
    const b1 = by(`1b-${c}`);
    if (!b2 || !a1 || !b1) continue;
    const lim = Math.min(a1.rate, b1.rate);
    add(`(2b) recordUsage ${b2.accounts} accounts @${c} >= 50% of min(1a random, 1b)`, b2.rate, lim / 2, `${fmt(b2.rate)} events/s vs goal ${fmt(lim / 2)} (= 50% of min(pgbench ${fmt(a1.rate)}, __typename ${fmt(b1.rate)}))`, false, [b2, a1, b1]);
  }
  // (2a) twice: the rows measured minutes apart, and the same-minute rows (alternating slices).
  for (const [rowPrefix, label, how] of [
    ['2a', '(2a) group >= 5 x naive', ''],
    ['2a-same', '(2a) same minutes: group >= 5 x naive', ' over alternating slices'],
  ] as const) {
    for (const c of LEVELS) {
      const g = by(`${rowPrefix}-group-${c}`);
      const n = by(`${rowPrefix}-naive-${c}`);
      if (!g || !n) continue;
      add(
        `${label}, hot account @${c}`,
        n.rate > 0 ? round(g.rate / n.rate, 2) : 0,
        5,
        `group ${fmt(g.rate)} / naive ${fmt(n.rate)} events/s = ${(n.rate > 0 ? g.rate / n.rate : 0).toFixed(2)}x${how} (goal 5x)${chargePathDeclared ? '' : ' [CHARGE_PATH not declared by the server: same path twice]'}`,
        false,
        [g, n],
      );
    }
  }
  const best = bestPgbenchRandom(rows);
  if (best) {
    for (const r of rows.filter((x) => x.id.startsWith('3-'))) {
      add(`(3) ${r.scenario} >= 1.5 x pgbench random`, r.rate, best.rate * 1.5, `${fmt(r.rate)} events/s vs goal ${fmt(best.rate * 1.5)} (= 1.5 x best pgbench random ${fmt(best.rate)} tx/s @${best.concurrency})`, false, [r, best]);
    }
  }
  for (const c of LEVELS) {
    const j = by(`4-${c}`);
    const b2 = by(`2b-group-${c}`);
    if (!j || !b2) continue;
    add(`(4) jobs @${c}: jobs/s x 5 >= 80% of (2b)`, j.rate * 5, b2.rate * 0.8, `${fmt(j.rate, 1)} jobs/s x 5 = ${fmt(j.rate * 5)} vs goal ${fmt(b2.rate * 0.8)} (= 80% of 2b ${fmt(b2.rate)} events/s)`, false, [j, b2]);
  }
  for (const id of ['5-summary', '5-history']) {
    const r = by(id);
    if (!r) continue;
    add(`(5) ${r.scenario} p95 <= 20 ms`, r.latencyMs.p95, 20, `p95 ${r.latencyMs.p95} ms (p50 ${r.latencyMs.p50} ms) over ${r.ops - r.errorCount} ok calls, goal <= 20 ms`, true, [r]);
  }
  return out;
}

/**
 * References, not targets of the issue: each figure of (2b) and (3) against what the same server
 * answers for the same requests with the ledger stubbed (rows 1c, 1d). (2b)'s rule is "the
 * ledger work may cost no more than the GraphQL request around it": 2b-group-C >= 50 % of 1c-C
 * says that of the request itself. For (3), 1d-N against 1.5 x pgbench random says whether the
 * server could reach (3)'s goal even if the ledger work cost nothing.
 * @returns one line per pair of rows present; none without the 1c/1d rows.
 */
export function computeReferences(rows: readonly ScenarioRow[]): TargetCheck[] {
  const by = (id: string) => rows.find((r) => r.id === id);
  const out: TargetCheck[] = [];
  const add = (target: string, measured: number, goal: number, detail: string, involved: (ScenarioRow | undefined)[]) => {
    out.push(ratioCheck(target, measured, goal, detail, involved, { errorLabel: '' }));
  };
  for (const c of LIMIT_LEVELS) {
    const b2 = by(`2b-group-${c}`);
    const stub = by(`1c-${c}`);
    if (!b2 || !stub) continue;
    add(`(2b) against its own request @${c}: 2b >= 50% of 1c (ledger stubbed)`, b2.rate, stub.rate / 2, `${fmt(b2.rate)} events/s vs ${fmt(stub.rate / 2)} (= 50% of ${fmt(stub.rate)} recordUsage/s with the ledger stubbed)`, [b2, stub]);
  }
  const best = bestPgbenchRandom(rows);
  for (const size of [100, 1000]) {
    const stub = by(`1d-${size}`);
    const real = by(`3-${size}-spread`);
    if (!stub) continue;
    if (best) {
      add(
        `(3)'s goal against recordUsageBatch(${fmt(size)}) with the ledger stubbed`,
        stub.rate,
        best.rate * 1.5,
        `${fmt(stub.rate)} events/s with no ledger work vs (3)'s goal ${fmt(best.rate * 1.5)} (= 1.5 x pgbench random ${fmt(best.rate)} tx/s @${best.concurrency})`,
        [stub, best],
      );
    }
    if (real) add(`3-${size}-spread against the same requests with the ledger stubbed (share left by the ledger)`, real.rate, stub.rate, `${fmt(real.rate)} vs ${fmt(stub.rate)} events/s`, [real, stub]);
  }
  return out;
}

function printTable(rows: readonly ScenarioRow[], o: PerfOptions): void {
  console.log('');
  console.log(
    `creditpool perf (issue #6), ${o.seconds} s per load scenario, ${cpus().length}-core shared machine; latency = one HTTP round trip (per request for batches, per job for jobs; pgbench: per transaction).`,
  );
  console.log(
    'cpu = % of ONE core during the scenario (200 = both cores): srv = creditpool server, pg = postgres backends of the bench databases + shared postgres processes, load = this bench + autocannon/pgbench, oth = rest of the machine (other databases\' backends included), busy = whole machine.',
  );
  const header = ['#', 'scenario', 'path', 'c', 'rate', 'unit', 'p50 ms', 'p95 ms', 'p99 ms', 'errors', 'RSS MiB', 'cpu srv/pg/load/oth', 'busy'];
  const body = rows.map((r) => [
    r.id,
    r.scenario,
    r.server,
    String(r.concurrency),
    r.rate >= 100 ? fmt(r.rate) : fmt(r.rate, 1),
    r.unit,
    r.latencyMs.p50.toFixed(1),
    r.latencyMs.p95.toFixed(1),
    r.latencyMs.p99.toFixed(1),
    String(r.errorCount),
    r.rssMiB === null ? '-' : r.rssMiB.toFixed(0),
    `${r.cpu.server}/${r.cpu.postgres}/${r.cpu.bench + r.cpu.tool}/${r.cpu.other}`,
    String(r.cpu.machineBusy),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const left = new Set([0, 1, 2, 5]);
  const line = (cells: string[]) => '| ' + cells.map((c, i) => (left.has(i) ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
  console.log(line(header));
  console.log('|' + widths.map((w, i) => (left.has(i) ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|');
  for (const b of body) console.log(line(b));
  console.log('1b: autocannon reports p97.5, shown as p95; its latencies are whole milliseconds. 3: latency per request of 100/1,000 events. 4: latency per job (5 requests).');
  console.log('');
  console.log('PostgreSQL work per unit (event / tx / req / job / call) of the scenario\'s database (pg_stat_database); WAL is cluster-wide (pg_stat_wal):');
  const h2 = ['#', 'commits', 'rows ins', 'rows upd', 'rows del', 'rows fetched', 'rows scanned', 'WAL KiB', 'WAL FPI'];
  const b2 = rows.map((r) =>
    r.db
      ? [r.id, String(r.db.commitsPerUnit), String(r.db.rowsInsertedPerUnit), String(r.db.rowsUpdatedPerUnit), String(r.db.rowsDeletedPerUnit), String(r.db.rowsFetchedPerUnit), String(r.db.rowsScannedPerUnit), String(r.db.walKiBPerUnit), String(r.db.walFullPageImagesPerUnit)]
      : [r.id, '-', '-', '-', '-', '-', '-', '-', '-'],
  );
  const w2 = h2.map((h, i) => Math.max(h.length, ...b2.map((b) => b[i]!.length)));
  const line2 = (cells: string[]) => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(w2[i]!) : c.padStart(w2[i]!))).join(' | ') + ' |';
  console.log(line2(h2));
  console.log('|' + w2.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|');
  for (const b of b2) console.log(line2(b));
  const profiled = rows.filter((r) => r.pgStatements?.length);
  if (profiled.length > 0) {
    console.log('');
    console.log(
      "PostgreSQL's own time per unit by statement (pg_stat_statements, track = all: nested statements of functions, triggers and foreign-key checks are listed too and are included in their top-level statement's time; exec excludes the round trip and every wait outside PostgreSQL's executor):",
    );
    for (const r of profiled) {
      console.log(`  ${r.id}:`);
      for (const t of r.pgStatements!) {
        console.log(`    ${formatPgStatement(t)}`);
      }
    }
  }
  const errs = rows.filter((r) => r.errorCount > 0);
  for (const r of errs) console.log(`  errors in ${r.id}: ${Object.entries(r.errors).map(([c, n]) => `${c} x${n}`).join(', ')}`);
}

// Run only as the entry point (bench/perf/medians.ts imports computeTargets from here).
if (process.argv[1] && /perf\.ts$/.test(process.argv[1])) {
  main().then(
    (code) => process.exit(code),
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
}
