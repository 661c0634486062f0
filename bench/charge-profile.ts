/**
 * Where one charge's time goes, statement by statement (issue #6, "profile before optimizing").
 *
 * Runs `recordUsage` (the service, in process: no HTTP, no GraphQL) sequentially with ONE pg
 * connection on a fresh database `creditpool_bench_profile`, over `--accounts` funded accounts,
 * for `--events` events priced per token from the real Azure 2023 trace. Every statement sent is
 * timed on the client (send to answer: PostgreSQL's execution plus one loopback round trip) and
 * grouped by its first words; the PostgreSQL backend's own CPU (utime + stime of its process in
 * /proc) is read before and after, so "PG CPU per event" is exact for that one connection. The
 * outbox rows the charges write are drained with the production relay's drain function at the
 * end (timed separately).
 *
 * With `--plans` it instead audits the plans PostgreSQL caches for the charge paths: the one
 * connection runs with `plan_cache_mode = force_generic_plan` (what a named statement gets after
 * its first executions) and auto_explain reporting every plan, nested ones (triggers, functions)
 * included, as notices; it runs single charges, a multi-account recordUsageBatch and a
 * reserve -> capture -> settle job (after a history of --events charges, half of them on one hot
 * account), and prints every sequential scan it saw and every node whose filter removed 100 rows
 * or more. On tables of production size either is a cost that grows with the data (a filter on
 * the idempotency key over a hot account's events was one: see the migration
 * idempotency_lookup_statistics).
 *
 * With `--jobs` every 5 "events" are one job of the perf bench's scenario 4 instead: reserve 1
 * credit, 3 charges against the hold, settle with no further usage (5 operations).
 *
 * Run under `bash bench/pg-stat-statements.sh`, it also prints PostgreSQL's own execution time
 * per statement for the measured charges (pg_stat_statements, reset where the warm-up ends).
 *
 * Every mode ends with the rows each table gave to sequential and index scans per event
 * (pg_stat_user_tables): a number that grows with the data is a plan to look at with --plans.
 *
 * `--batch N --spread` spreads each batch over the accounts instead of one account.
 *
 * With `--triggers` the measured connection also runs auto_explain (log_analyze, log_triggers,
 * timing on) on its top-level statements and prints, per statement, PostgreSQL's execution time
 * and the part of it spent in each trigger: the foreign-key checks (one per inserted row that
 * references another table), the rollup trigger. The deferred balance-invariant check runs at
 * COMMIT, outside any statement, so its queries are listed as statements of their own. The
 * instrumentation itself costs time, so compare shares within one run, not with a run without it.
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/charge-profile.ts [--events 3000] [--accounts 1000] [--batch N [--spread] | --hot | --jobs] [--plans | --triggers]
 */
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { applyMigrations } from '../src/db/migrate.js';
import { createPgPool } from '../src/db/pg.js';
import { createPricingState } from '../src/services/pricing-state.js';
import { publishPriceBook } from '../src/services/publish-price-book.js';
import { createAccount } from '../src/services/create-account.js';
import { grantCredits } from '../src/services/grant-credits.js';
import { applyCharge, chargeAccounts, recordUsage, recordUsageBatch } from '../src/services/record-usage.js';
import { GroupCommitter } from '../src/services/group-commit.js';
import { reserveCredits } from '../src/services/reserve-credits.js';
import { settleReservation } from '../src/services/settle-reservation.js';
import { credits } from '../src/ledger/credits.js';
import { planReplay, llmQuantities } from '../demo/plan.js';
import { demoPriceBook } from '../demo/price-book.js';
import type { ServiceContext } from '../src/services/context.js';
import { seedClosedHolds } from './perf/closed-holds.js';
import { CLK_TCK } from './perf/procstat.js';

const { values } = parseArgs({
  options: {
    events: { type: 'string', default: '3000' },
    accounts: { type: 'string', default: '1000' },
    plans: { type: 'boolean', default: false },
    batch: { type: 'string', default: '0' },
    hot: { type: 'boolean', default: false },
    jobs: { type: 'boolean', default: false },
    spread: { type: 'boolean', default: false },
    triggers: { type: 'boolean', default: false },
  },
});
const EVENTS = Number(values.events);
const ACCOUNTS = Number(values.accounts);
/** > 0: recordUsageBatch of this many events on one account instead of single charges spread over the accounts. */
const BATCH = Number(values.batch);
const base = process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/creditpool';
const url = new URL(base);
url.pathname = '/creditpool_bench_profile';
const DB = url.toString();

/** utime + stime of the process or thread whose `/proc/…/stat` file is `statPath`, in clock ticks (1/100 s). */
function cpuTicks(statPath: string): number {
  const f = readFileSync(statPath, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime (fields 14, 15), clock ticks
}

/** CPU of this process's main (JavaScript) thread so far (/proc/self/task/<pid>/stat utime + stime), in clock ticks (1/100 s). */
function threadTicks(): number {
  return cpuTicks(`/proc/self/task/${process.pid}/stat`);
}

function label(sql: string): string {
  const s = sql.replace(/\s+/g, ' ').trim();
  const m = /^(WITH \w+ AS \(\s*\w+( INTO)? \w+|SELECT [^ ]+|\w+( INTO| FROM)? \w+)/i.exec(s);
  return (m?.[0] ?? s.slice(0, 40)).slice(0, 60);
}

async function main() {
  const admin = new URL(DB);
  admin.pathname = '/postgres';
  const c = new pg.Client({ connectionString: admin.toString() });
  await c.connect();
  await c.query('DROP DATABASE IF EXISTS creditpool_bench_profile WITH (FORCE)');
  await c.end();
  await applyMigrations(DB);
  {
    const a = new pg.Client({ connectionString: DB });
    await a.connect();
    await a.query(`ALTER DATABASE creditpool_bench_profile SET track_functions = 'all'`);
    await a.end();
  }
  const pool = createPgPool(DB, 1);
  const ctx: ServiceContext = { pool, clock: () => new Date(), pricing: createPricingState(pool) };
  await publishPriceBook(ctx, demoPriceBook('profile'));
  const accounts: string[] = [];
  for (let i = 0; i < ACCOUNTS; i++) {
    const { accountId } = await createAccount(ctx, { externalId: `prof-${i}`, name: 'p', kind: 'ORGANIZATION', welcomeBonus: true, testMode: false, testClockStart: null });
    await grantCredits(ctx, { accountId, amountMicroCredits: credits(1_000_000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'paid' });
    accounts.push(accountId);
  }
  await pool.query('DELETE FROM outbox_events');
  await seedClosedHolds(pool, 2); // a ledger in use has closed holds (bench/perf/closed-holds.ts)
  await pool.query('VACUUM ANALYZE');
  const trace = planReplay('azure').slice(0, EVENTS);
  // Under bench/pg-stat-statements.sh (a PostgreSQL that preloads pg_stat_statements): its
  // counts, reset where the warm-up ends, are printed at the end.
  const statements = (await pool.query(`SELECT current_setting('shared_preload_libraries') LIKE '%pg_stat_statements%' AS on`)).rows[0].on as boolean;
  if (statements) await pool.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');

  // Time every statement on the one pooled client.
  if (values.plans) {
    await auditPlans(pool, ctx, accounts, trace);
    await pool.end();
    return;
  }
  const client = await pool.connect();
  const pid = (await client.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  const explained = values.triggers ? await explainTriggers(client) : undefined;
  const stats = new Map<string, { n: number; ms: number }>();
  const orig = client.query.bind(client) as (...a: unknown[]) => Promise<unknown>;
  (client as unknown as { query: unknown }).query = async (...args: unknown[]) => {
    const sql = typeof args[0] === 'string' ? args[0] : ((args[0] as { text: string }).text ?? '');
    const t0 = process.hrtime.bigint();
    try {
      return await orig(...args);
    } finally {
      const k = label(sql);
      const s = stats.get(k) ?? { n: 0, ms: 0 };
      s.n++;
      s.ms += Number(process.hrtime.bigint() - t0) / 1e6;
      stats.set(k, s);
    }
  };
  client.release();

  // Warm up, then ANALYZE: a fresh database's tables were analyzed empty, and plans cached on
  // empty statistics (foreign-key checks included) scan whole tables. Production tables are
  // analyzed with rows in them; so is this one before measuring.
  const warmup = Math.min(500, Math.floor(trace.length / 10));
  for (let i = 0; i < warmup; i++) {
    const r = trace[i]!;
    await recordUsage(ctx, { accountId: accounts[i % accounts.length]!, idempotencyKey: `w-${i}`, category: 'llm', model: r.model, quantities: llmQuantities(r, r.outputTokens) as never });
  }
  await pool.query('ANALYZE');
  stats.clear();
  explained?.reset();
  await pool.query('SELECT pg_stat_reset()');
  if (statements) await pool.query('SELECT pg_stat_statements_reset()');
  const ticks0 = cpuTicks(`/proc/${pid}/stat`);
  const nodeCpu0 = process.cpuUsage();
  const mainThreadTicks0 = threadTicks();
  const t0 = performance.now();
  const input = (i: number) => {
    const r = trace[i]!;
    return { accountId: (BATCH > 0 && !values.spread) || values.hot ? accounts[0]! : accounts[(i * 7919) % accounts.length]!, idempotencyKey: `p-${i}`, category: 'llm', model: r.model, quantities: llmQuantities(r, r.outputTokens) as never };
  };
  if (BATCH > 0) {
    for (let i = 0; i < trace.length; i += BATCH) {
      const items = Array.from({ length: Math.min(BATCH, trace.length - i) }, (_, k) => input(i + k));
      await recordUsageBatch(ctx, items, { maxItems: BATCH });
    }
  } else if (values.jobs) {
    for (let i = 0; i + 5 <= trace.length; i += 5) {
      const accountId = accounts[(i / 5) % accounts.length]!;
      const { reservationId } = await reserveCredits(ctx, { accountId, amountMicroCredits: credits(1), ttlSeconds: 300, idempotencyKey: `j-${i}` });
      for (let k = 1; k <= 3; k++) await recordUsage(ctx, { ...input(i + k), accountId, reservationId });
      await settleReservation(ctx, reservationId, []);
    }
  } else {
    for (let i = 0; i < trace.length; i++) await recordUsage(ctx, input(i));
  }
  const wallMs = performance.now() - t0;
  const pgCpuMs = ((cpuTicks(`/proc/${pid}/stat`) - ticks0) * 1000) / CLK_TCK;
  const nodeCpu = process.cpuUsage(nodeCpu0);
  const nodeCpuMs = (nodeCpu.user + nodeCpu.system) / 1000;
  const mainThreadMs = ((threadTicks() - mainThreadTicks0) * 1000) / CLK_TCK;
  console.log(
    BATCH > 0
      ? `${trace.length} events as recordUsageBatch(${BATCH}) on ${values.spread ? `${ACCOUNTS} accounts` : 'ONE account'}, 1 connection, sequential`
      : values.jobs
        ? `${trace.length / 5} jobs (reserve, 3 captures, settle) = ${trace.length} operations over ${ACCOUNTS} accounts, 1 connection, sequential; "event" = operation`
        : `${trace.length} events over ${values.hot ? 'ONE account' : `${ACCOUNTS} accounts`}, 1 connection, sequential`,
  );
  console.log(`wall ${(wallMs / trace.length).toFixed(3)} ms/event; PostgreSQL backend CPU ${(pgCpuMs / trace.length).toFixed(3)} ms/event; this process's CPU (the charge services, no HTTP or GraphQL) ${(nodeCpuMs / trace.length).toFixed(3)} ms/event (user ${(nodeCpu.user / 1000 / trace.length).toFixed(3)}, system ${(nodeCpu.system / 1000 / trace.length).toFixed(3)}; its JavaScript thread ${(mainThreadMs / trace.length).toFixed(3)})`);
  const rows = [...stats.entries()].sort((a, b) => b[1].ms - a[1].ms);
  console.log('statement (first words)                                        per event   ms each   ms/event');
  for (const [k, s] of rows) {
    console.log(`${k.padEnd(62)} ${(s.n / trace.length).toFixed(2).padStart(8)} ${(s.ms / s.n).toFixed(3).padStart(9)} ${(s.ms / trace.length).toFixed(3).padStart(10)}`);
  }
  if (explained) explained.print(trace.length);
  if (statements) {
    // Executor time per statement as PostgreSQL counts it (track = all: nested statements, e.g.
    // foreign-key queries and those of PL/pgSQL functions, also count inside their caller).
    const q = await pool.query(
      `SELECT query, calls, total_exec_time FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) AND query NOT LIKE '%pg_stat_statements%'
        ORDER BY total_exec_time DESC LIMIT 15`,
    );
    console.log('PostgreSQL execution (pg_stat_statements; nested ones count in their caller too)  calls/event   ms each   ms/event');
    for (const x of q.rows) {
      const ms = Number(x.total_exec_time);
      console.log(`${String(x.query).replace(/\s+/g, ' ').trim().slice(0, 62).padEnd(62)} ${(Number(x.calls) / trace.length).toFixed(2).padStart(11)} ${(ms / Math.max(1, Number(x.calls))).toFixed(4).padStart(9)} ${(ms / trace.length).toFixed(4).padStart(10)}`);
    }
  }
  const ob = await pool.query('SELECT count(*)::int AS n FROM outbox_events');
  console.log(`outbox rows left for the relay: ${ob.rows[0].n} (${(ob.rows[0].n / trace.length).toFixed(2)} per event)`);
  await pool.end();
  // Function times (track_functions = all): plpgsql functions and trigger functions, flushed at backend exit.
  const r = new pg.Client({ connectionString: DB });
  await r.connect();
  for (let i = 0; i < 50; i++) {
    const f = await r.query(`SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions ORDER BY total_time DESC`);
    if (f.rows.length > 0) {
      console.log('function (track_functions)                  calls/event   total ms/event   self ms/event');
      for (const x of f.rows) {
        console.log(`${String(x.funcname).padEnd(44)} ${(x.calls / trace.length).toFixed(2).padStart(11)} ${(x.total_time / trace.length).toFixed(3).padStart(16)} ${(x.self_time / trace.length).toFixed(3).padStart(15)}`);
      }
      break;
    }
    await new Promise((res) => setTimeout(res, 100)); // stats arrive asynchronously after the backend exits
  }
  for (let i = 0; i < 50; i++) {
    const t = await r.query(
      `SELECT relname, seq_scan, seq_tup_read, COALESCE(idx_tup_fetch, 0) AS idx_tup_fetch FROM pg_stat_user_tables
        WHERE seq_tup_read + COALESCE(idx_tup_fetch, 0) > 0 ORDER BY seq_tup_read + COALESCE(idx_tup_fetch, 0) DESC`,
    );
    if (t.rows.length > 0) {
      console.log('table (pg_stat_user_tables)                 seq scans/event   rows read by seq scans/event   rows fetched by index/event');
      for (const x of t.rows) {
        console.log(`${String(x.relname).padEnd(44)} ${(x.seq_scan / trace.length).toFixed(2).padStart(15)} ${(x.seq_tup_read / trace.length).toFixed(2).padStart(30)} ${(x.idx_tup_fetch / trace.length).toFixed(2).padStart(29)}`);
      }
      break;
    }
    await new Promise((res) => setTimeout(res, 100));
  }
  await r.end();
}

/**
 * `--triggers`: turns on auto_explain for `client`'s top-level statements (ANALYZE, triggers,
 * timing; plans reported as notices) and sums, per statement (first words), the execution time
 * auto_explain reports and each trigger's time and calls, as the notices arrive.
 * @returns `reset()`, which forgets the sums so far, and `print(events)`, which prints them per event (ms and calls).
 */
async function explainTriggers(client: pg.PoolClient) {
  const statements = new Map<string, { n: number; ms: number; triggers: Map<string, { calls: number; ms: number }> }>();
  client.on('notice', (n) => {
    const text = String(n.message);
    const d = /duration: ([\d.]+) ms/.exec(text);
    const q = /Query Text: ([\s\S]*?)\n\S/.exec(text);
    if (!d || !q) return;
    const k = label(q[1]!);
    const s = statements.get(k) ?? { n: 0, ms: 0, triggers: new Map() };
    s.n++;
    s.ms += Number(d[1]);
    for (const m of text.matchAll(/Trigger (?:for constraint )?(\S+)(?: on \S+)?: time=([\d.]+) calls=(\d+)/g)) {
      const t = s.triggers.get(m[1]!) ?? { calls: 0, ms: 0 };
      t.calls += Number(m[3]);
      t.ms += Number(m[2]);
      s.triggers.set(m[1]!, t);
    }
    statements.set(k, s);
  });
  await client.query(`LOAD 'auto_explain'`);
  await client.query(`SET auto_explain.log_min_duration = 0; SET auto_explain.log_level = 'notice'; SET auto_explain.log_nested_statements = off;
                      SET auto_explain.log_analyze = on; SET auto_explain.log_triggers = on; SET auto_explain.log_timing = on`);
  return {
    /** Forgets what was summed so far (the warm-up). */
    reset() {
      statements.clear();
    },
    print(events: number) {
      console.log('PostgreSQL execution per statement and its triggers (auto_explain, instrumented)   ms/event   calls/event   share');
      for (const [k, s] of [...statements.entries()].sort((a, b) => b[1].ms - a[1].ms)) {
        if (s.ms / events < 0.001) continue;
        console.log(`${k.padEnd(82)} ${(s.ms / events).toFixed(4).padStart(8)} ${(s.n / events).toFixed(2).padStart(13)}`);
        for (const [t, x] of [...s.triggers.entries()].sort((a, b) => b[1].ms - a[1].ms)) {
          console.log(`  trigger ${t.padEnd(72)} ${(x.ms / events).toFixed(4).padStart(8)} ${(x.calls / events).toFixed(2).padStart(13)} ${((100 * x.ms) / s.ms).toFixed(0).padStart(6)} %`);
        }
      }
    },
  };
}

/** See the module comment (`--plans`). */
async function auditPlans(pool: pg.Pool, ctx: ServiceContext, accounts: string[], trace: ReturnType<typeof planReplay>) {
  // Some history first, so the statistics are those of a ledger in use: half of it on one hot
  // account (accounts[0], which the scenarios below charge too), half spread.
  for (let i = 0; i < trace.length; i++) {
    const r = trace[i]!;
    const accountId = i % 2 === 0 ? accounts[0]! : accounts[i % accounts.length]!;
    await recordUsage(ctx, { accountId, idempotencyKey: `hist-${i}`, category: 'llm', model: r.model, quantities: llmQuantities(r, r.outputTokens) as never });
  }
  await pool.query('ANALYZE');
  const client = await pool.connect();
  const notices: string[] = [];
  client.on('notice', (n) => notices.push(String(n.message)));
  await client.query(`LOAD 'auto_explain'`);
  await client.query(`SET auto_explain.log_min_duration = 0; SET auto_explain.log_level = 'notice'; SET auto_explain.log_nested_statements = on;
                      SET auto_explain.log_analyze = on; SET auto_explain.log_timing = off; SET plan_cache_mode = force_generic_plan`);
  client.release();
  const usage = (i: number, accountId: string, extra: Record<string, unknown> = {}) => {
    const r = trace[i % trace.length]!;
    return { accountId, idempotencyKey: `plan-${i}`, category: 'llm', model: r.model, quantities: llmQuantities(r, r.outputTokens) as never, ...extra };
  };
  const runs: [string, () => Promise<unknown>][] = [
    ['recordUsage x8', async () => { for (let i = 0; i < 8; i++) await recordUsage(ctx, usage(i, accounts[i]!)); }],
    ['recordUsageBatch, 50 accounts x2', async () => { for (let k = 0; k < 2; k++) await recordUsageBatch(ctx, accounts.slice(0, 50).map((a, i) => usage(100 + k * 50 + i, a)), { maxItems: 1000 }); }],
    ['reserve, capture x3, settle x2', async () => {
      for (let k = 0; k < 2; k++) {
        const { reservationId } = await reserveCredits(ctx, { accountId: accounts[k]!, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: `plan-res-${k}`, agentId: null, userId: null });
        for (let i = 0; i < 3; i++) await recordUsage(ctx, usage(300 + k * 10 + i, accounts[k]!, { reservationId }));
        await settleReservation(ctx, reservationId, []);
      }
    }],
    ['the same through group commit (captures decided with the group)', async () => {
      const grouped: ServiceContext = { ...ctx, groupCommit: new GroupCommitter(pool, ctx.clock, chargeAccounts, applyCharge) };
      for (let k = 2; k < 4; k++) {
        const { reservationId } = await reserveCredits(grouped, { accountId: accounts[k]!, amountMicroCredits: credits(5), ttlSeconds: 600, idempotencyKey: `plan-res-${k}`, agentId: null, userId: null });
        await Promise.all([0, 1, 2].map((i) => recordUsage(grouped, usage(300 + k * 10 + i, accounts[k]!, { reservationId }))));
        await settleReservation(grouped, reservationId, []);
      }
    }],
  ];
  for (const [name, run] of runs) {
    notices.length = 0;
    await run();
    const scans = notices.flatMap((n) => n.split('\n').filter((l) => /Seq Scan/.test(l)).map((l) => l.trim().replace(/\s+\(cost.*$/, '')));
    const counts = new Map<string, number>();
    for (const x of scans) counts.set(x, (counts.get(x) ?? 0) + 1);
    console.log(`${name}: ${notices.length} plans, ${scans.length} sequential scans${scans.length ? ':' : ''}`);
    for (const [x, n] of counts) console.log(`  ${n} x ${x}`);
    // Nodes that read far more rows than they return: a filter doing an index's job.
    const wasteful = new Map<string, number>();
    for (const n of notices) {
      const lines = n.split('\n');
      lines.forEach((l, i) => {
        const m = /Rows Removed by Filter: (\d+)/.exec(l);
        if (!m || Number(m[1]) < 100) return;
        let j = i - 1;
        while (j >= 0 && !/(Scan|Join)/.test(lines[j]!)) j--;
        const node = (lines[j] ?? '?').trim().replace(/\s+\(cost.*$/, '');
        wasteful.set(node, Math.max(wasteful.get(node) ?? 0, Number(m[1])));
      });
    }
    for (const [node, removed] of wasteful) console.log(`  filter removed up to ${removed} rows: ${node}`);
    if (process.env.PLAN_GREP) for (const n of notices) if (n.includes(process.env.PLAN_GREP)) { console.log(n); break; }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
