/**
 * Expiry sweep at scale (issue #4): 1,000,000 credit batches all due at once — how long the
 * production expiry path takes to drain them (batches/s, accounts/s), what it writes (ledger
 * entries, outbox rows, credit alerts), and how fast the outbox relay then moves rows to Redis
 * and `job` rows into BullMQ (rows/s, jobs/s).
 *
 * What it does:
 *   1. Drops and re-creates the database `creditpool_bench_expiry` on the server of DATABASE_URL
 *      and applies the migrations (src/db/migrate.ts applyMigrations).
 *   2. Generates the data with SQL (generate_series, one transaction per chunk of accounts, not
 *      through the API): --accounts accounts with their balances row, and --batches ACTIVE credit
 *      batches spread evenly over them (batch j belongs to account j mod accounts, so one
 *      account's batches are scattered over the heap as they would be after months of grants),
 *      each with its credit_grants row and GRANT ledger entry. Accounts were created 3 days
 *      before "now", grants 2 days before, and every batch expired about 1 day before. The rows
 *      are consistent: balances.total = sum(remaining of ACTIVE batches) = sum(ledger entries),
 *      so the deferred balances_invariant trigger passes and nothing is disabled. Then VACUUM
 *      ANALYZE (as autovacuum would have done long before a real sweep). Timed separately.
 *   3. Drain, on the production code path, with the clock fixed at the drain's start:
 *        --mode parallel (default): findAccountsWithDueExpiries(pool, now, 5000) then expireDue per
 *          account with --concurrency C account transactions in flight (what C workers running
 *          per-account `expire-due` jobs do), repeated until nothing is due;
 *        --mode sweep: processSweepDue (workers/processors/sweep-due.ts, one worker, 5,000
 *          accounts per run, serial) repeated until a run expires nothing.
 *      Reports wall time, batches/s, accounts/s, ledger entries and outbox rows (by topic) written,
 *      credit alerts raised, client-side time per SQL statement kind (so where the time goes),
 *      and CPU of this process / PostgreSQL / Redis / the machine (from /proc) plus iowait.
 *      Stops after --max-drain-seconds (default 900) and then reports the partial rate and a
 *      clearly labelled extrapolation.
 *   4. Relay: copies the outbox the drain produced, then for batchSize 500 and 5000 drains it with
 *      drainOutboxOnce (src/outbox/relay.ts) to Redis (a unique channel prefix nobody listens to)
 *      with the BullMQ JobSink (src/queues/job-sink.ts) on a unique prefix: rows/s. Then, for the
 *      same two batch sizes, --relay-jobs synthetic `expire-due` job rows (inserted with SQL) are
 *      drained through the JobSink: jobs/s. The BullMQ keys are removed with
 *      queue.obliterate({ force: true }) after each run (not timed).
 *   5. Verifies: no ACTIVE batch past due remains; every EXPIRED batch has exactly one EXPIRE
 *      entry of -allocated (ACTIVE ones none); for every account balances.total = sum(remaining
 *      of ACTIVE batches) - debt = sum(non-hold ledger entries); after a full drain every total is
 *      0 and every balance version moved exactly once. Exits 1 on any failure (or drain error),
 *      2 on bad arguments.
 *   Prints a table and writes bench/results/expiry-sweep.json (or --out). The database is left in place
 *   for inspection (re-created by the next run unless --skip-generate).
 *
 * Machine: a shared 2-core VM; PostgreSQL (fsync and synchronous_commit on, shared_buffers
 * 128MB) and Redis run on the same cores as this process and other engineers' test runs, so
 * figures are noisy — compare runs on the same machine only.
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/expiry-sweep.ts
 *          [--accounts 100000] [--batches 1000000] [--concurrency 8] [--mode parallel|sweep]
 *          [--max-drain-seconds 900] [--relay-jobs 100000] [--skip-generate] [--skip-relay]
 *          [--stale-stats] [--out FILE]
 * --stale-stats drains with the statistics a VACUUM leaves when no expiring batch is ACTIVE
 * (makeStatisticsStale). --out writes the results elsewhere than bench/results/expiry-sweep.json.
 * --skip-generate drains whatever is due in the existing bench database (e.g. after a partial
 * run); --accounts/--batches are then only used for labels and the extrapolation.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';
import pg from 'pg';
import { pino } from 'pino';
import { applyMigrations } from '../src/db/migrate.js';
import { createPgPool } from '../src/db/pg.js';
import { drainOutboxOnce, type JobSink } from '../src/outbox/relay.js';
import { createQueueJobSink } from '../src/queues/job-sink.js';
import type { OutboxJob } from '../src/queues/names.js';
import { parseEnv } from '../src/config/env.js';
import type { ServiceContext } from '../src/services/context.js';
import { expireDue, findAccountsWithDueExpiries } from '../src/services/expire-due.js';
import { createPricingState } from '../src/services/pricing-state.js';
import { processSweepDue } from '../workers/processors/sweep-due.js';

/** Name of the bench database, created on DATABASE_URL's server. */
export const BENCH_DATABASE = 'creditpool_bench_expiry';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
/** Where the results go unless --out names another file (the README's "Last results" are this file). */
const RESULTS_FILE = join(ROOT, 'bench', 'results', 'expiry-sweep.json');
const DEFAULT_DATABASE_URL = 'postgresql://postgres@127.0.0.1:5432/creditpool';
const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';
/** Accounts per finder call, as processSweepDue's MAX_ACCOUNTS_PER_RUN. */
const FINDER_LIMIT = 5_000;
/** Target batches per generation transaction. */
const GEN_BATCHES_PER_CHUNK = 100_000;
const CLK_TCK = 100;

/** Parsed command line. */
export interface BenchOptions {
  accounts: number;
  batches: number;
  concurrency: number;
  mode: 'parallel' | 'sweep';
  maxDrainSeconds: number;
  relayJobs: number;
  skipGenerate: boolean;
  skipRelay: boolean;
  staleStats: boolean;
  /** The results file (default RESULTS_FILE). */
  out: string;
}

function usage(message: string): never {
  console.error(
    `${message}\nusage: tsx bench/expiry-sweep.ts [--accounts 100000] [--batches 1000000] [--concurrency 8] [--mode parallel|sweep] [--max-drain-seconds 900] [--relay-jobs 100000] [--skip-generate] [--skip-relay] [--stale-stats] [--out FILE]`,
  );
  process.exit(2);
}

function intOption(value: string | undefined, name: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) usage(`--${name} must be an integer in ${min}..${max}`);
  return n;
}

/** Parses argv into {@link BenchOptions}; exits 2 on bad arguments. */
export function parseOptions(argv: string[]): BenchOptions {
  const { values } = parseArgs({
    args: argv,
    options: {
      accounts: { type: 'string', default: '100000' },
      batches: { type: 'string', default: '1000000' },
      concurrency: { type: 'string', default: '8' },
      mode: { type: 'string', default: 'parallel' },
      'max-drain-seconds': { type: 'string', default: '900' },
      'relay-jobs': { type: 'string', default: '100000' },
      'skip-generate': { type: 'boolean', default: false },
      'skip-relay': { type: 'boolean', default: false },
      'stale-stats': { type: 'boolean', default: false },
      out: { type: 'string' },
    },
  });
  if (values.mode !== 'parallel' && values.mode !== 'sweep') usage('--mode must be parallel or sweep');
  return {
    accounts: intOption(values.accounts, 'accounts', 1, 10_000_000),
    batches: intOption(values.batches, 'batches', 0, 100_000_000),
    concurrency: intOption(values.concurrency, 'concurrency', 1, 64),
    mode: values.mode,
    maxDrainSeconds: intOption(values['max-drain-seconds'], 'max-drain-seconds', 1, 86_400),
    relayJobs: intOption(values['relay-jobs'], 'relay-jobs', 0, 10_000_000),
    skipGenerate: values['skip-generate'] === true,
    skipRelay: values['skip-relay'] === true,
    staleStats: values['stale-stats'] === true,
    out: values.out ?? RESULTS_FILE,
  };
}

// ---------------------------------------------------------------------------------------------
// Small helpers

function withDatabase(url: string, database: string): string {
  const u = new URL(url);
  u.pathname = `/${database}`;
  u.searchParams.delete('schema');
  return u.toString();
}

function secondsSince(t0: number): number {
  return (performance.now() - t0) / 1000;
}

function round(n: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

function fmt(n: number): string {
  return n.toLocaleString('en-US', { maximumFractionDigits: 1 });
}

function log(msg: string): void {
  console.log(`[${new Date().toISOString().slice(11, 19)}] ${msg}`);
}

/** Runs `fn` over `items` with at most `concurrency` calls in flight. */
async function forEachConcurrent<T>(items: readonly T[], concurrency: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const item = items[next++] as T;
      await fn(item);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker));
}

// ---------------------------------------------------------------------------------------------
// CPU sampling from /proc

type CpuTicks = Record<'bench' | 'postgres' | 'redis' | 'busy' | 'iowait' | 'total', number>;

function cpuTicksOf(pid: number | string): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]); // utime + stime
  } catch {
    return 0;
  }
}

/**
 * CPU ticks of this process, PostgreSQL (shared processes and the bench database's backends;
 * other databases' backends count as "other"), redis-server, and the machine (busy, iowait).
 */
function sampleCpu(): CpuTicks {
  const t: CpuTicks = { bench: cpuTicksOf(process.pid), postgres: 0, redis: 0, busy: 0, iowait: 0, total: 0 };
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let comm = '';
    try {
      comm = readFileSync(`/proc/${entry}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    if (comm === 'postgres') {
      let cmd = '';
      try {
        cmd = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ');
      } catch {
        continue;
      }
      const db = /^postgres: [^:]+: \S+ (\S+) /.exec(cmd)?.[1];
      if (db === undefined || db === BENCH_DATABASE) t.postgres += cpuTicksOf(entry);
    } else if (comm === 'redis-server') t.redis += cpuTicksOf(entry);
  }
  const cpu = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  t.total = cpu.reduce((a, b) => a + b, 0);
  t.iowait = cpu[4] ?? 0;
  t.busy = t.total - (cpu[3] ?? 0) - t.iowait;
  return t;
}

/** CPU use between two samples: percent of ONE core per process group; machine figures in % of all cores. */
function cpuUse(before: CpuTicks, after: CpuTicks, seconds: number): Record<string, number> {
  const core = (k: keyof CpuTicks) => Math.round(((after[k] - before[k]) / CLK_TCK / seconds) * 100);
  const total = after.total - before.total || 1;
  const bench = core('bench');
  const postgres = core('postgres');
  const redis = core('redis');
  const machineBusyCores = ((after.busy - before.busy) / CLK_TCK / seconds) * 100;
  return {
    benchProcessPctOfCore: bench,
    postgresPctOfCore: postgres,
    redisPctOfCore: redis,
    otherPctOfCore: Math.max(0, Math.round(machineBusyCores) - bench - postgres - redis),
    machineBusyPctOfAllCores: Math.round(((after.busy - before.busy) / total) * 100),
    machineIowaitPctOfAllCores: Math.round(((after.iowait - before.iowait) / total) * 100),
  };
}

// ---------------------------------------------------------------------------------------------
// Client-side statement timing (where the drain's time goes)

/** Time spent per statement kind, measured around client.query (round trip included). */
class StatementProfile {
  readonly byKind = new Map<string, { count: number; ms: number }>();
  enabled = false;

  /** Wraps every new client of `pool` so its queries are timed while {@link enabled}. */
  attach(pool: pg.Pool): void {
    pool.on('connect', (client) => {
      const original = client.query.bind(client) as (...args: unknown[]) => unknown;
      (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
        if (!this.enabled) return original(...args);
        const first = args[0];
        const text = typeof first === 'string' ? first : ((first as { text?: string } | undefined)?.text ?? '');
        const t0 = performance.now();
        const last = args.length - 1;
        const cb = args[last];
        if (typeof cb === 'function') {
          // Callback form (pool.query uses it): time until the callback.
          args[last] = (...cbArgs: unknown[]) => {
            this.record(text, performance.now() - t0);
            return (cb as (...a: unknown[]) => unknown)(...cbArgs);
          };
          return original(...args);
        }
        const result = original(...args);
        if (result instanceof Promise) {
          return result.finally(() => this.record(text, performance.now() - t0));
        }
        return result;
      };
    });
  }

  private record(text: string, ms: number): void {
    const kind = StatementProfile.kindOf(text);
    const cur = this.byKind.get(kind) ?? { count: 0, ms: 0 };
    cur.count++;
    cur.ms += ms;
    this.byKind.set(kind, cur);
  }

  /** A readable name for the statements of the expiry path; others by their first words. */
  static kindOf(text: string): string {
    const t = text.replace(/\s+/g, ' ').trim();
    if (t === 'BEGIN') return 'BEGIN';
    if (t === 'COMMIT') return 'COMMIT (deferred balances_invariant + WAL flush)';
    if (t === 'ROLLBACK') return 'ROLLBACK';
    if (t.startsWith('SELECT a.id, a.kind, a.test_mode')) return 'AccountTx.lock (balance row FOR UPDATE)';
    if (t.startsWith('WITH due AS')) return 'applyExpiries: UPDATE credit_batches';
    if (t.startsWith('SELECT id FROM reservations')) return 'applyExpiries: SELECT due holds';
    if (t.startsWith('WITH entries AS')) return 'finish: ledger INSERT + balance UPDATE + balances_changed()';
    if (t.startsWith('SELECT account_id FROM ( SELECT b.account_id')) return 'findAccountsWithDueExpiries';
    if (t.startsWith('SELECT s.account_id FROM plan_subscriptions')) return 'findAccountsWithDuePeriods (sweep)';
    return t.slice(0, 60);
  }

  /** Rows sorted by total time, with their share of `wallSeconds * lanes`. */
  rows(wallSeconds: number, lanes: number): { statement: string; count: number; totalSeconds: number; avgMs: number; shareOfLanes: number }[] {
    return [...this.byKind.entries()]
      .map(([statement, v]) => ({
        statement,
        count: v.count,
        totalSeconds: round(v.ms / 1000, 2),
        avgMs: round(v.ms / v.count, 3),
        shareOfLanes: round((v.ms / 1000 / (wallSeconds * lanes)) * 100, 1),
      }))
      .sort((a, b) => b.totalSeconds - a.totalSeconds);
  }
}

// ---------------------------------------------------------------------------------------------
// 1. Database

/** Drops and re-creates the bench database, then applies the migrations. */
async function createDatabase(serverUrl: string, benchUrl: string): Promise<void> {
  const admin = new pg.Client({ connectionString: withDatabase(serverUrl, 'postgres') });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS ${BENCH_DATABASE} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${BENCH_DATABASE}`);
  } finally {
    await admin.end();
  }
  await applyMigrations(benchUrl);
}

// ---------------------------------------------------------------------------------------------
// 2. Generation

/** What generation produced. */
interface GenerationResult {
  seconds: number;
  insertSeconds: number;
  vacuumAnalyzeSeconds: number;
  chunks: number;
  accountsPerChunk: number;
  rows: Record<string, number>;
  dataNow: string;
}

/**
 * Generates `o.accounts` accounts and `o.batches` ACTIVE batches already past expiresAt (with
 * their grants and GRANT ledger entries) with SQL, one transaction per chunk of accounts,
 * consistent with every CHECK constraint and the deferred balance invariant (checked at each
 * COMMIT). Then VACUUM ANALYZE of the tables.
 */
async function generate(client: pg.Client, o: BenchOptions, dataNow: Date): Promise<GenerationResult> {
  const t0 = performance.now();
  const perChunk = Math.max(1, Math.floor((GEN_BATCHES_PER_CHUNK * o.accounts) / Math.max(1, o.batches)));
  let chunks = 0;
  for (let a0 = 0; a0 < o.accounts; a0 += perChunk) {
    const a1 = Math.min(o.accounts, a0 + perChunk);
    const tc = performance.now();
    await client.query('BEGIN');
    try {
      await client.query(
        `CREATE TEMP TABLE gen_accounts ON COMMIT DROP AS
         SELECT a, gen_random_uuid() AS id FROM generate_series($1::int, $2::int - 1) a`,
        [a0, a1],
      );
      // Batch j = k * accounts + a: account a gets floor(batches / accounts) batches, one more
      // for the first (batches mod accounts) accounts. Created 2 days before "now" (k ms apart),
      // expired about 1 day before (spread over an hour).
      await client.query(
        `CREATE TEMP TABLE gen_batches ON COMMIT DROP AS
         SELECT x.*,
                CASE WHEN x.j % 2 = 0 THEN 'PROMO_CODE' ELSE 'PURCHASE' END::"GrantSource" AS source,
                CASE WHEN x.j % 2 = 0 THEN 'FREE' ELSE 'PAID' END::"CreditType" AS type,
                (1000000 + (x.j % 1000) * 1000)::bigint AS amount,
                $3::timestamptz - interval '2 days' + x.k * interval '1 millisecond' AS created_at,
                $3::timestamptz - interval '1 day' - (x.j % 3600) * interval '1 second' AS expires_at
           FROM (SELECT ga.a, ga.id AS account_id, k, k::bigint * $1::bigint + ga.a AS j,
                        gen_random_uuid() AS grant_id, gen_random_uuid() AS batch_id
                   FROM gen_accounts ga,
                        LATERAL generate_series(0, ($2::bigint / $1::bigint
                                  + CASE WHEN ga.a < $2::bigint % $1::bigint THEN 1 ELSE 0 END)::int - 1) k) x`,
        [o.accounts, o.batches, dataNow],
      );
      await client.query(
        `INSERT INTO accounts (id, external_id, name, kind, created_at, billing_anchor_at, referral_code)
         SELECT id, 'bench-expiry-' || a, 'Bench account ' || a, 'ORGANIZATION',
                $1::timestamptz - interval '3 days', $1::timestamptz - interval '3 days', 'BX' || a
           FROM gen_accounts ORDER BY a`,
        [dataNow],
      );
      await client.query(
        `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
         SELECT grant_id, account_id, source, type, amount, 'bench-grant-' || j, 'bench', created_at
           FROM gen_batches ORDER BY j`,
      );
      await client.query(
        `INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits,
                                     added_at, expires_at, status, updated_at)
         SELECT batch_id, account_id, grant_id, type, source, amount, amount, created_at, expires_at, 'ACTIVE', created_at
           FROM gen_batches ORDER BY j`,
      );
      await client.query(
        `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id, note, created_at)
         SELECT gen_random_uuid(), account_id, 'GRANT', amount, SUM(amount) OVER (PARTITION BY a ORDER BY k),
                batch_id, source::text, created_at
           FROM gen_batches ORDER BY j`,
      );
      await client.query(
        `INSERT INTO balances (account_id, total_micro_credits, debt_micro_credits, version, updated_at)
         SELECT ga.id, COALESCE(s.total, 0), 0, COALESCE(s.n, 0), COALESCE(s.last_at, $1::timestamptz - interval '3 days')
           FROM gen_accounts ga
           LEFT JOIN (SELECT a, SUM(amount) AS total, COUNT(*) AS n, MAX(created_at) AS last_at FROM gen_batches GROUP BY a) s
             USING (a)`,
        [dataNow],
      );
      await client.query('COMMIT'); // runs the deferred balances_invariant trigger per balance row
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
    chunks++;
    log(`generated accounts ${fmt(a0)}..${fmt(a1 - 1)} in ${round(secondsSince(tc), 2)} s`);
  }
  const insertSeconds = secondsSince(t0);
  const tv = performance.now();
  await client.query('VACUUM (ANALYZE) accounts, balances, credit_grants, credit_batches, ledger_entries');
  const vacuumAnalyzeSeconds = secondsSince(tv);
  const rows: Record<string, number> = {};
  for (const table of ['accounts', 'balances', 'credit_grants', 'credit_batches', 'ledger_entries']) {
    rows[table] = Number((await client.query(`SELECT count(*)::bigint AS n FROM ${table}`)).rows[0].n);
  }
  return {
    seconds: round(secondsSince(t0), 2),
    insertSeconds: round(insertSeconds, 2),
    vacuumAnalyzeSeconds: round(vacuumAnalyzeSeconds, 2),
    chunks,
    accountsPerChunk: perChunk,
    rows,
    dataNow: dataNow.toISOString(),
  };
}

// ---------------------------------------------------------------------------------------------
// 3. Drain

/** Counts that the drain changes, read from the database. */
interface DbCounts {
  dueBatches: number;
  dueAccounts: number;
  expireEntries: number;
  ledgerEntries: number;
  creditAlerts: number;
  outboxByTopic: Record<string, number>;
}

async function readCounts(client: pg.Client, now: Date): Promise<DbCounts> {
  const due = await client.query(
    `SELECT count(*)::bigint AS batches, count(DISTINCT account_id)::bigint AS accounts
       FROM credit_batches WHERE status = 'ACTIVE' AND expires_at <= $1`,
    [now],
  );
  const ledger = await client.query(
    `SELECT count(*)::bigint AS total, count(*) FILTER (WHERE type = 'EXPIRE')::bigint AS expire FROM ledger_entries`,
  );
  const alerts = await client.query(`SELECT count(*)::bigint AS n FROM credit_alerts`);
  const outbox = await client.query(`SELECT topic, count(*)::bigint AS n FROM outbox_events GROUP BY topic ORDER BY topic`);
  return {
    dueBatches: Number(due.rows[0].batches),
    dueAccounts: Number(due.rows[0].accounts),
    expireEntries: Number(ledger.rows[0].expire),
    ledgerEntries: Number(ledger.rows[0].total),
    creditAlerts: Number(alerts.rows[0].n),
    outboxByTopic: Object.fromEntries(outbox.rows.map((r) => [r.topic as string, Number(r.n)])),
  };
}

/** Cluster-wide WAL and checkpoint counters (pg_stat_wal, pg_stat_bgwriter; other databases count too). */
async function readWal(client: pg.Client): Promise<{ bytes: number; fpi: number; records: number; checkpoints: number }> {
  const { rows } = await client.query(
    `SELECT w.wal_bytes::bigint AS bytes, w.wal_fpi AS fpi, w.wal_records AS records,
            (b.checkpoints_timed + b.checkpoints_req) AS checkpoints
       FROM pg_stat_wal w, pg_stat_bgwriter b`,
  );
  const r = rows[0];
  return { bytes: Number(r.bytes), fpi: Number(r.fpi), records: Number(r.records), checkpoints: Number(r.checkpoints) };
}

/** What the drain did and how fast. */
interface DrainResult {
  mode: BenchOptions['mode'];
  concurrency: number;
  complete: boolean;
  now: string;
  dueBefore: { batches: number; accounts: number };
  seconds: number;
  finderCalls: number;
  finderSeconds: number;
  accountsExpired: number;
  batchesExpired: number;
  batchesPerSecond: number;
  accountsPerSecond: number;
  avgAccountTxMs: number | null;
  ledgerEntriesWritten: number;
  outboxRowsProduced: Record<string, number>;
  outboxRowsTotal: number;
  creditAlertsRaised: number;
  sweepRequeuedJobs: number;
  errors: number;
  firstError: string | null;
  extrapolatedFullDrainSeconds: number | null;
  cpu: Record<string, number>;
  /** WAL written during the drain (cluster-wide, so other databases' writes are included). */
  wal: { mib: number; kibPerAccount: number; fullPageImages: number; records: number; checkpoints: number };
  statements: ReturnType<StatementProfile['rows']>;
  progress: { t: number; batches: number }[];
}

/**
 * Drains every due expiry on the production code path (see the module comment for the two
 * modes), with the clock fixed at the drain's start, stopping after `o.maxDrainSeconds`.
 */
async function drain(benchUrl: string, counter: pg.Client, o: BenchOptions): Promise<DrainResult> {
  const now = new Date();
  const before = await readCounts(counter, now);
  log(`drain (${o.mode}${o.mode === 'parallel' ? `, concurrency ${o.concurrency}` : ''}): ${fmt(before.dueBatches)} batches due on ${fmt(before.dueAccounts)} accounts`);
  const pool = createPgPool(benchUrl, o.concurrency + 2);
  const profile = new StatementProfile();
  profile.attach(pool);
  const ctx: ServiceContext = { pool, clock: () => now, pricing: createPricingState(pool, 0) };
  const lanes = o.mode === 'parallel' ? o.concurrency : 1;

  let accounts = 0;
  let batches = 0;
  let errors = 0;
  let firstError: string | null = null;
  let finderCalls = 0;
  let finderMs = 0;
  let accountTxMs = 0;
  let requeued = 0;
  let complete = true;
  const progress: { t: number; batches: number }[] = [];
  const t0 = performance.now();
  const deadline = t0 + o.maxDrainSeconds * 1000;
  let lastLog = t0;
  const tick = () => {
    const t = performance.now();
    if (t - lastLog < 10_000) return;
    lastLog = t;
    const s = secondsSince(t0);
    progress.push({ t: round(s, 1), batches });
    log(`  ${fmt(batches)} batches / ${fmt(accounts)} accounts in ${round(s)} s: ${fmt(batches / s)} batches/s, ${fmt(accounts / s)} accounts/s`);
  };

  const wal0 = await readWal(counter);
  const cpu0 = sampleCpu();
  profile.enabled = true;
  try {
    if (o.mode === 'parallel') {
      for (;;) {
        if (performance.now() > deadline) {
          complete = false;
          break;
        }
        const tf = performance.now();
        const ids = await findAccountsWithDueExpiries(pool, now, FINDER_LIMIT);
        finderMs += performance.now() - tf;
        finderCalls++;
        if (ids.length === 0) break;
        await forEachConcurrent(ids, o.concurrency, async (id) => {
          if (performance.now() > deadline || errors > 100) return;
          const ta = performance.now();
          try {
            const r = await expireDue(ctx, id);
            accounts++;
            batches += r.batches;
          } catch (err) {
            errors++;
            firstError ??= (err as Error).message;
          }
          accountTxMs += performance.now() - ta;
          tick();
        });
        if (errors > 100) {
          complete = false;
          break;
        }
      }
    } else {
      const deps = { services: ctx, log: pino({ level: 'warn' }), env: parseEnv({}) };
      const sink: JobSink = {
        add: async (jobs: OutboxJob[]) => {
          requeued += jobs.length;
        },
      };
      for (;;) {
        if (performance.now() > deadline) {
          complete = false;
          break;
        }
        const r = await processSweepDue(deps, sink);
        finderCalls++;
        accounts += r.expiredAccounts;
        // The sweep does not return batch counts: read them (outside the timed statements).
        profile.enabled = false;
        batches = Number((await counter.query(`SELECT count(*)::bigint AS n FROM ledger_entries WHERE type = 'EXPIRE'`)).rows[0].n) - before.expireEntries;
        profile.enabled = true;
        tick();
        if (r.expiredAccounts === 0) break;
      }
      const f = profile.byKind.get('findAccountsWithDueExpiries');
      finderMs = f?.ms ?? 0;
    }
  } finally {
    profile.enabled = false;
  }
  const seconds = secondsSince(t0);
  const cpu = cpuUse(cpu0, sampleCpu(), seconds);
  const wal1 = await readWal(counter);
  await pool.end();

  const after = await readCounts(counter, now);
  const batchesExpired = after.expireEntries - before.expireEntries;
  if (o.mode === 'parallel' && batchesExpired !== batches) {
    log(`note: expireDue reported ${batches} batches, the ledger shows ${batchesExpired} EXPIRE entries`);
  }
  const outboxProduced: Record<string, number> = {};
  for (const [topic, n] of Object.entries(after.outboxByTopic)) outboxProduced[topic] = n - (before.outboxByTopic[topic] ?? 0);
  const rate = batchesExpired / seconds;
  log(`drain ${complete ? 'complete' : 'STOPPED (time limit or errors)'}: ${fmt(batchesExpired)} batches, ${fmt(accounts)} accounts in ${round(seconds, 1)} s`);
  return {
    mode: o.mode,
    concurrency: lanes,
    complete: complete && after.dueBatches === 0,
    now: now.toISOString(),
    dueBefore: { batches: before.dueBatches, accounts: before.dueAccounts },
    seconds: round(seconds, 2),
    finderCalls,
    finderSeconds: round(finderMs / 1000, 2),
    accountsExpired: accounts,
    batchesExpired,
    batchesPerSecond: round(rate),
    accountsPerSecond: round(accounts / seconds),
    avgAccountTxMs: o.mode === 'parallel' && accounts > 0 ? round(accountTxMs / (accounts + errors), 2) : null,
    ledgerEntriesWritten: after.ledgerEntries - before.ledgerEntries,
    outboxRowsProduced: outboxProduced,
    outboxRowsTotal: Object.values(outboxProduced).reduce((a, b) => a + b, 0),
    creditAlertsRaised: after.creditAlerts - before.creditAlerts,
    sweepRequeuedJobs: requeued,
    errors,
    firstError,
    extrapolatedFullDrainSeconds: after.dueBatches > 0 && rate > 0 ? round(before.dueBatches / rate, 0) : null,
    cpu,
    wal: {
      mib: round((wal1.bytes - wal0.bytes) / 2 ** 20),
      kibPerAccount: accounts > 0 ? round((wal1.bytes - wal0.bytes) / 1024 / accounts) : 0,
      fullPageImages: wal1.fpi - wal0.fpi,
      records: wal1.records - wal0.records,
      checkpoints: wal1.checkpoints - wal0.checkpoints,
    },
    statements: profile.rows(seconds, lanes),
    progress,
  };
}

// ---------------------------------------------------------------------------------------------
// 4. Relay

/** One timed relay run. */
interface RelayRun {
  what: string;
  batchSize: number;
  rows: number;
  jobRows: number;
  drains: number;
  seconds: number;
  rowsPerSecond: number;
  jobsPerSecond: number | null;
  jobsInQueue: number;
  obliterateSeconds: number;
  cpu: Record<string, number>;
}

/**
 * Drains the whole outbox with drainOutboxOnce(batchSize) to Redis and a BullMQ JobSink on a
 * fresh prefix, then counts the jobs that arrived and obliterates the queue.
 */
async function relayRun(pool: pg.Pool, redisUrl: string, what: string, batchSize: number): Promise<RelayRun> {
  await pool.query('VACUUM outbox_events');
  const jobRows = Number((await pool.query(`SELECT count(*)::bigint AS n FROM outbox_events WHERE topic = 'job'`)).rows[0].n);
  const tag = randomBytes(4).toString('hex');
  const channelPrefix = `bench-expiry-${tag}:live:`;
  const queuePrefix = `bench-expiry-${tag}`;
  const publisher = new Redis(redisUrl, { maxRetriesPerRequest: 1, connectionName: 'bench-expiry-relay' });
  const queueConnection = new Redis(redisUrl, { maxRetriesPerRequest: null, connectionName: 'bench-expiry-jobs' });
  const sink = createQueueJobSink(queueConnection, queuePrefix);
  try {
    let rows = 0;
    let drains = 0;
    const cpu0 = sampleCpu();
    const t0 = performance.now();
    for (;;) {
      const n = await drainOutboxOnce(pool, publisher, channelPrefix, batchSize, sink);
      drains++;
      rows += n;
      if (n === 0) break;
    }
    const seconds = secondsSince(t0);
    const cpu = cpuUse(cpu0, sampleCpu(), seconds);
    const counts = await sink.queue.getJobCounts('waiting', 'delayed', 'prioritized', 'active', 'completed', 'failed');
    const jobsInQueue = Object.values(counts).reduce((a, b) => a + b, 0);
    const to = performance.now();
    await sink.queue.obliterate({ force: true });
    const obliterateSeconds = secondsSince(to);
    log(`relay ${what} batchSize ${batchSize}: ${fmt(rows)} rows (${fmt(jobRows)} jobs) in ${round(seconds, 2)} s = ${fmt(rows / seconds)} rows/s; ${fmt(jobsInQueue)} jobs reached BullMQ`);
    return {
      what,
      batchSize,
      rows,
      jobRows,
      drains,
      seconds: round(seconds, 2),
      rowsPerSecond: round(rows / seconds),
      // jobs/s only where every row is a job (mixed runs also publish the other rows).
      jobsPerSecond: jobRows > 0 && jobRows === rows ? round(jobRows / seconds) : null,
      jobsInQueue,
      obliterateSeconds: round(obliterateSeconds, 2),
      cpu,
    };
  } finally {
    await sink.close().catch(() => undefined);
    publisher.disconnect();
    queueConnection.disconnect();
  }
}

/**
 * Relay benchmark: the outbox the drain produced (saved once, restored for the second batch
 * size), then `relayJobs` synthetic expire-due job rows, each with batchSize 500 and 5000.
 */
async function relay(benchUrl: string, redisUrl: string, o: BenchOptions): Promise<RelayRun[]> {
  const pool = createPgPool(benchUrl, 2);
  const runs: RelayRun[] = [];
  try {
    await pool.query('DROP TABLE IF EXISTS bench_outbox_saved');
    await pool.query(
      `CREATE TABLE bench_outbox_saved AS SELECT id AS ord, account_id, topic, payload, created_at FROM outbox_events`,
    );
    const saved = Number((await pool.query('SELECT count(*)::bigint AS n FROM bench_outbox_saved')).rows[0].n);
    for (const [i, batchSize] of [500, 5000].entries()) {
      if (saved === 0) break;
      if (i > 0) {
        await pool.query(
          `INSERT INTO outbox_events (account_id, topic, payload, created_at)
           SELECT account_id, topic, payload, created_at FROM bench_outbox_saved ORDER BY ord`,
        );
      }
      runs.push(await relayRun(pool, redisUrl, 'drain outbox (balance/alert/job rows)', batchSize));
    }
    for (const batchSize of [500, 5000]) {
      if (o.relayJobs === 0) break;
      await pool.query(
        `INSERT INTO outbox_events (account_id, topic, payload)
         SELECT x.ids[1 + n % cardinality(x.ids)], 'job',
                jsonb_build_object('name', 'expire-due', 'jobId', 'bench-' || n,
                                   'data', jsonb_build_object('accountId', x.ids[1 + n % cardinality(x.ids)]::text))
           FROM generate_series(1, $1::int) n, (SELECT array_agg(id) AS ids FROM accounts) x`,
        [o.relayJobs],
      );
      runs.push(await relayRun(pool, redisUrl, `${fmt(o.relayJobs)} expire-due job rows`, batchSize));
    }
  } finally {
    await pool.end();
  }
  return runs;
}

// ---------------------------------------------------------------------------------------------
// 5. Verification

/** One verification check. */
interface Check {
  check: string;
  ok: boolean;
  detail: string;
}

/** Checks the ledger after the drain (see the module comment). */
async function verify(client: pg.Client, now: Date, fullDrain: boolean): Promise<Check[]> {
  const checks: Check[] = [];
  const one = async (sql: string, params: unknown[] = []): Promise<number> => Number((await client.query(sql, params)).rows[0].n);

  const due = await one(`SELECT count(*)::bigint AS n FROM credit_batches WHERE status = 'ACTIVE' AND expires_at <= $1`, [now]);
  checks.push({
    check: 'no ACTIVE batch past due remains',
    ok: !fullDrain || due === 0,
    detail: fullDrain ? `${due} remain` : `${due} remain (partial drain: not required)`,
  });
  const badExpire = await one(
    `SELECT count(*)::bigint AS n
       FROM credit_batches b
       LEFT JOIN (SELECT batch_id, count(*) AS n, SUM(amount_micro_credits) AS amount
                    FROM ledger_entries WHERE type = 'EXPIRE' GROUP BY batch_id) e ON e.batch_id = b.id
      WHERE CASE WHEN b.status = 'EXPIRED' THEN e.n IS DISTINCT FROM 1 OR e.amount <> -b.allocated_micro_credits
                 ELSE e.n IS NOT NULL END`,
  );
  const expired = await one(`SELECT count(*)::bigint AS n FROM credit_batches WHERE status = 'EXPIRED'`);
  checks.push({
    check: 'every EXPIRED batch has exactly one EXPIRE entry of -allocated; ACTIVE ones none',
    ok: badExpire === 0,
    detail: `${badExpire} violations over ${expired} expired batches`,
  });
  const badInvariant = await one(
    `WITH bs AS (SELECT account_id, SUM(remaining_micro_credits) AS s FROM credit_batches WHERE status = 'ACTIVE' GROUP BY account_id),
          ls AS (SELECT account_id, SUM(amount_micro_credits) AS s FROM ledger_entries
                  WHERE type NOT IN ('RESERVE', 'RELEASE') GROUP BY account_id)
     SELECT count(*)::bigint AS n
       FROM balances b LEFT JOIN bs USING (account_id) LEFT JOIN ls USING (account_id)
      WHERE b.total_micro_credits <> COALESCE(bs.s, 0) - b.debt_micro_credits
         OR b.total_micro_credits <> COALESCE(ls.s, 0)`,
  );
  const balances = await one(`SELECT count(*)::bigint AS n FROM balances`);
  checks.push({
    check: 'per account: total = sum(ACTIVE remaining) - debt = sum(non-hold ledger entries)',
    ok: badInvariant === 0,
    detail: `${badInvariant} violations over ${balances} accounts`,
  });
  if (fullDrain) {
    const nonZero = await one(`SELECT count(*)::bigint AS n FROM balances WHERE total_micro_credits <> 0`);
    checks.push({ check: 'every total is 0 after the full drain', ok: nonZero === 0, detail: `${nonZero} non-zero` });
    const badVersion = await one(
      `SELECT count(*)::bigint AS n FROM balances b
         JOIN (SELECT account_id, count(*) AS n FROM credit_grants GROUP BY account_id) g USING (account_id)
        WHERE b.version <> g.n + 1`,
    );
    checks.push({ check: 'each account expired in one transaction (version = grants + 1)', ok: badVersion === 0, detail: `${badVersion} violations` });
  }
  return checks;
}

// ---------------------------------------------------------------------------------------------
// Output

function printTable(title: string, rows: [string, string][]): void {
  const w = Math.max(...rows.map(([k]) => k.length));
  console.log(`\n${title}`);
  for (const [k, v] of rows) console.log(`  ${k.padEnd(w)}  ${v}`);
}

async function machineFacts(client: pg.Client, redisUrl: string): Promise<Record<string, unknown>> {
  const setting = async (name: string) => (await client.query(`SELECT current_setting($1) AS v`, [name])).rows[0].v as string;
  const redis = new Redis(redisUrl, { maxRetriesPerRequest: 1 });
  let redisVersion = 'unknown';
  try {
    redisVersion = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1] ?? 'unknown';
  } finally {
    redis.disconnect();
  }
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? 'unknown',
    memGiB: round(totalmem() / 2 ** 30, 1),
    loadAvgAtStart: loadavg().map((x) => round(x, 2)),
    note: 'shared 2-core VM: PostgreSQL, Redis, this process and other engineers\' test runs share the cores; figures are noisy',
    node: process.version,
    postgres: {
      version: await setting('server_version'),
      shared_buffers: await setting('shared_buffers'),
      fsync: await setting('fsync'),
      synchronous_commit: await setting('synchronous_commit'),
      max_wal_size: await setting('max_wal_size'),
      work_mem: await setting('work_mem'),
    },
    redis: redisVersion,
  };
}

/**
 * `--stale-stats`: leaves the statistics a VACUUM or ANALYZE takes when no batch with an expiry is
 * ACTIVE (e.g. right after last month's promotional credit expired): `reltuples` 0 on the partial
 * indexes of `credit_batches` while their pages stay. The planner then takes such an index for
 * empty until the next ANALYZE; autovacuum is switched off on the table for the drain (reset
 * after it), as on a big table where the new batches stay under autovacuum's analyze threshold
 * (10 % of the rows). Writing `pg_class` takes a superuser (the bench's user, postgres, is one).
 */
async function makeStatisticsStale(client: pg.Client): Promise<void> {
  await client.query('ALTER TABLE credit_batches SET (autovacuum_enabled = off)');
  await client.query(`UPDATE pg_class SET reltuples = 0
                       WHERE oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'credit_batches'::regclass AND indpred IS NOT NULL)`);
}

// ---------------------------------------------------------------------------------------------
// Main

/** Runs the benchmark. @returns the process exit code (0 ok, 1 a check or the drain failed). */
export async function main(argv: string[] = process.argv.slice(2)): Promise<number> {
  const o = parseOptions(argv);
  const serverUrl = process.env.DATABASE_URL || DEFAULT_DATABASE_URL;
  const redisUrl = process.env.REDIS_URL || DEFAULT_REDIS_URL;
  const benchUrl = withDatabase(serverUrl, BENCH_DATABASE);
  const u = new URL(serverUrl);
  log(`PostgreSQL ${u.hostname}:${u.port || 5432}/${BENCH_DATABASE}, Redis ${redisUrl}; options ${JSON.stringify(o)}`);

  let generation: GenerationResult | null = null;
  if (!o.skipGenerate) {
    log('creating the database and applying migrations');
    await createDatabase(serverUrl, benchUrl);
  }
  const client = new pg.Client({ connectionString: benchUrl });
  await client.connect();
  try {
    const machine = await machineFacts(client, redisUrl);
    if (!o.skipGenerate) {
      log(`generating ${fmt(o.accounts)} accounts and ${fmt(o.batches)} batches with SQL`);
      generation = await generate(client, o, new Date());
      log(`generation: ${generation.seconds} s (inserts ${generation.insertSeconds} s, VACUUM ANALYZE ${generation.vacuumAnalyzeSeconds} s)`);
    }

    if (o.staleStats) {
      await makeStatisticsStale(client);
      log('statistics: the partial indexes of ACTIVE expiring batches say "empty" (--stale-stats), autovacuum off on credit_batches');
    }
    let d: DrainResult;
    try {
      d = await drain(benchUrl, client, o);
    } finally {
      if (o.staleStats) await client.query('ALTER TABLE credit_batches RESET (autovacuum_enabled)');
    }
    const relayRuns = o.skipRelay ? [] : await relay(benchUrl, redisUrl, o);
    const checks = await verify(client, new Date(d.now), d.complete);
    const ok = checks.every((c) => c.ok) && d.errors === 0 && relayRuns.every((r) => r.jobsInQueue === r.jobRows);

    const rows: [string, string][] = [];
    if (generation) {
      rows.push(['generation (SQL, incl. VACUUM ANALYZE)', `${generation.seconds} s (${fmt(generation.rows.credit_batches ?? 0)} batches, ${fmt(generation.rows.accounts ?? 0)} accounts)`]);
    }
    rows.push(
      [`drain (${d.mode}, ${d.concurrency} in flight)`, `${d.seconds} s${d.complete ? '' : '  PARTIAL (stopped)'}`],
      ['batches expired', `${fmt(d.batchesExpired)} of ${fmt(d.dueBefore.batches)} due`],
      ['batches/s', fmt(d.batchesPerSecond)],
      ['accounts/s', fmt(d.accountsPerSecond)],
      ['avg account transaction', d.avgAccountTxMs === null ? 'n/a' : `${d.avgAccountTxMs} ms`],
      ['finder (findAccountsWithDueExpiries)', `${d.finderCalls} calls, ${d.finderSeconds} s`],
      ['ledger entries written', fmt(d.ledgerEntriesWritten)],
      ['outbox rows produced', `${fmt(d.outboxRowsTotal)} ${JSON.stringify(d.outboxRowsProduced)}`],
      ['credit alerts raised', fmt(d.creditAlertsRaised)],
      ['drain CPU (% of one core)', `bench ${d.cpu.benchProcessPctOfCore}, postgres ${d.cpu.postgresPctOfCore}, other ${d.cpu.otherPctOfCore}; machine busy ${d.cpu.machineBusyPctOfAllCores}% / iowait ${d.cpu.machineIowaitPctOfAllCores}% of all cores`],
    );
    rows.push(['drain WAL (cluster-wide)', `${fmt(d.wal.mib)} MiB (${d.wal.kibPerAccount} KiB/account), ${fmt(d.wal.fullPageImages)} full-page images, ${d.wal.checkpoints} checkpoints`]);
    if (d.extrapolatedFullDrainSeconds !== null) {
      rows.push(['EXTRAPOLATED full drain (at measured rate)', `${fmt(d.extrapolatedFullDrainSeconds)} s`]);
    }
    for (const r of relayRuns) {
      rows.push([
        `relay ${r.what}, batch ${r.batchSize}`,
        `${fmt(r.rows)} rows in ${r.seconds} s = ${fmt(r.rowsPerSecond)} rows/s${r.jobsPerSecond !== null ? `; ${fmt(r.jobsPerSecond)} jobs/s` : ''} (${fmt(r.jobsInQueue)}/${fmt(r.jobRows)} jobs in BullMQ)`,
      ]);
    }
    printTable(`Expiry sweep: ${fmt(d.dueBefore.batches)} batches due on ${fmt(d.dueBefore.accounts)} accounts, ${machine.cpus}-core shared machine`, rows);
    printTable(
      'Drain time by statement (client-side, round trip included; share = of wall time x lanes)',
      d.statements.map((s) => [s.statement, `${s.count} x ${s.avgMs} ms = ${s.totalSeconds} s (${s.shareOfLanes}%)`]),
    );
    printTable('Verification', checks.map((c) => [c.check, `${c.ok ? 'OK' : 'FAILED'} (${c.detail})`]));
    if (d.errors > 0) console.log(`\nDrain errors: ${d.errors}, first: ${d.firstError}`);

    mkdirSync(dirname(o.out), { recursive: true });
    writeFileSync(
      o.out,
      `${JSON.stringify({ measuredAt: new Date().toISOString(), options: o, machine: { ...machine, loadAvgAtEnd: loadavg().map((x) => round(x, 2)) }, generation, drain: d, relay: relayRuns, verification: { ok, checks } }, null, 2)}\n`,
    );
    log(`wrote ${o.out}; ${ok ? 'all checks passed' : 'CHECKS FAILED'}`);
    return ok ? 0 : 1;
  } finally {
    await client.end();
  }
}

main().then(
  (code) => process.exit(code),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
