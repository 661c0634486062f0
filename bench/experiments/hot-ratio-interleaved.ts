/**
 * Target (2a) of issue #6 measured with both charge paths on the same minutes: the group-commit
 * server and the naive server (CHARGE_PATH=naive: one transaction that locks the account's row
 * per charge) run side by side on one fresh database, each with its own hot account (100,000,000
 * PAID credits), and closed-loop `recordUsage` slices (token counts of the real Azure 2023 trace,
 * priced per token, a fresh idempotency key per event) alternate between them: group, naive,
 * naive, group, group, naive, … (ABBA, so neither path always runs first in a pair), `--rounds`
 * pairs of `--slice-seconds` each after an unmeasured warm-up slice of each. Only one server is
 * loaded at a time; the idle one only polls its outbox.
 *
 * bench/perf.ts's plain 2a rows measure the two paths ~5 minutes apart, and this machine's speed
 * drifts over minutes ((2a) @8 at 5.82x, 4.35x and 3.60x in three runs of c84a95b,
 * bench/HISTORY.md). This experiment came first; perf.ts's `2a-same-*` rows now do the same
 * inside its run. What it adds: a database of its own (no batch or job history), each pair's
 * ratio, what the database's backends wait on, and `--server-env` to compare settings on both
 * paths (e.g. OUTBOX_RELAY:false, bench/README).
 *
 * Before measuring it prepares the database as bench/perf.ts does: `--accounts` accounts with the
 * welcome bonus, 3 s of charges spread over them through each server, 2 closed holds per account,
 * then ANALYZE. With `--accounts 0` the plans are made on near-empty tables and the group path
 * slows down as its tables grow (1,107 → 857 events/s over six pairs in one such run), which
 * a ledger in use does not suffer. `--server-env KEY:VALUE;…` adds to both servers' environment.
 *
 * It prints each slice (events/s, p50/p99 ms, server CPU % of one core, on the group path the
 * group committer's counters over the slice from /readyz (bench/perf/server-counters.ts):
 * transactions, charges per transaction, mean ms per transaction, the share committed from
 * carried state and its misses per transaction; and the three most sampled states of the database's backends from pg_stat_activity every
 * 100 ms: a wait event, or CPU), each pair's ratio, the totals' ratio and the median of the pairs' ratios, then checks the
 * ledger invariant of both hot accounts and that every acknowledged event is stored. Exit status
 * 1 when a check fails or any request failed, 2 on bad arguments. Prints only; its database
 * (`creditpool_bench_ratio` on DATABASE_URL's server) is dropped at the start and at the end.
 *
 *   bash scripts/with-services.sh npx tsx bench/experiments/hot-ratio-interleaved.ts [--concurrency 8] [--slice-seconds 5] [--rounds 6] [--accounts 10000] [--server-env KEY:VALUE;…]
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { DEFAULT_DATABASE_URL, startServer, type StartedServer } from '../../demo/server-process.js';
import { llmQuantities, planReplay } from '../../demo/plan.js';
import { demoPriceBook } from '../../demo/price-book.js';
import { applyMigrations } from '../../src/db/migrate.js';
import { decodeId } from '../../src/graphql/ids.js';
import { reconcileAccount } from '../../src/services/read-balance.js';
import { seedClosedHolds } from '../perf/closed-holds.js';
import { dropDatabase, recreateDatabase } from '../perf/scratch-db.js';
import { readServerCounters, serverWorkPerUnit } from '../perf/server-counters.js';
import { createPerfClient } from '../perf/http.js';
import { closedLoop, round } from '../perf/load.js';
import { CLK_TCK, cpuTicksOf } from '../perf/procstat.js';

const USAGE = 'usage: tsx bench/experiments/hot-ratio-interleaved.ts [--concurrency 8] [--slice-seconds 5] [--rounds 6] [--accounts 10000] [--server-env KEY:VALUE;…]';
const { values } = parseArgs({
  options: {
    concurrency: { type: 'string', default: '8' },
    'slice-seconds': { type: 'string', default: '5' },
    rounds: { type: 'string', default: '6' },
    accounts: { type: 'string', default: '10000' },
    'server-env': { type: 'string', default: '' },
  },
});
const nAccounts = Number(values.accounts);
/** Extra environment of both servers: `KEY:VALUE;KEY2:VALUE2`. */
const extraEnv: Record<string, string> = {};
for (const kv of values['server-env']!.split(';').filter(Boolean)) extraEnv[kv.split(':')[0]!] = kv.split(':').slice(1).join(':');
const concurrency = Number(values.concurrency);
const sliceSeconds = Number(values['slice-seconds']);
const rounds = Number(values.rounds);
if (!(concurrency >= 1 && sliceSeconds > 0 && rounds >= 1 && nAccounts >= 0)) {
  console.error(USAGE);
  process.exit(2);
}

const base = process.env.DATABASE_URL || DEFAULT_DATABASE_URL;
const dbName = 'creditpool_bench_ratio';
const url = await recreateDatabase(base, dbName);
await applyMigrations(url);
const adminKey = `cp_admin_${randomBytes(16).toString('hex')}`;
const runId = randomBytes(4).toString('hex');

type Path = 'group' | 'naive';
const PATHS: readonly Path[] = ['group', 'naive'];
const servers = {} as Record<Path, StartedServer>;
const trace = planReplay('azure');
// Two connections: the backends' sampler runs while the slices' requests use the servers' own pools.
const db = new pg.Pool({ connectionString: url, max: 2 });
let exitCode = 0;
try {
  for (const path of PATHS) {
    // As bench/perf.ts starts its servers (production mode, pool of 32, no workers).
    servers[path] = await startServer({
      name: `ratio-${path}`,
      workers: false,
      env: {
        NODE_ENV: 'production',
        DATABASE_URL: url,
        ADMIN_API_KEY: adminKey,
        LOG_LEVEL: 'warn',
        PG_POOL_SIZE: '32',
        RUN_WORKERS: 'false',
        MIGRATE_ON_BOOT: 'false',
        CHARGE_PATH: path,
        LIVE_CHANNEL_PREFIX: `creditpool:bench-ratio:${runId}:`,
        QUEUE_PREFIX: `creditpool-bench-ratio-${runId}`,
        ...extraEnv,
      },
    });
  }
  const setup = createPerfClient(servers.group.graphqlUrl, adminKey, 16);
  const pb = await setup.gql(`mutation($input: PriceBookInput!) { publishPriceBook(input: $input) { version } }`, { input: demoPriceBook(`ratio ${runId}`) });
  if (pb.errorCode) throw new Error(`publishPriceBook: ${pb.errors[0]?.message}`);
  const hot = {} as Record<Path, string>;
  for (const path of PATHS) {
    const r = await setup.gql<{ createAccount: { id: string } }>(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
      input: { externalId: `ratio-${runId}-${path}`, name: `hot ${path}`, kind: 'ORGANIZATION', welcomeBonus: false },
    });
    if (!r.data) throw new Error(`createAccount: ${r.errors[0]?.message}`);
    hot[path] = r.data.createAccount.id;
    const g = await setup.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, {
      input: { accountId: hot[path], amount: '100000000', type: 'PAID', source: 'PURCHASE', idempotencyKey: `ratio-${runId}-grant-${path}` },
    });
    if (g.errorCode) throw new Error(`grantCredits: ${g.errors[0]?.message}`);
  }
  // --accounts: as bench/perf.ts prepares its database before measuring (accounts with the
  // welcome bonus, 3 s of spread charges through each server, 2 closed holds per account).
  const spread: string[] = [];
  for (let i = 0; i < nAccounts; i += 16) {
    await Promise.all(
      Array.from({ length: Math.min(16, nAccounts - i) }, async (_, k) => {
        const r = await setup.gql<{ createAccount: { id: string } }>(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
          input: { externalId: `ratio-${runId}-acct-${i + k}`, name: `account ${i + k}`, kind: 'ORGANIZATION', welcomeBonus: true },
        });
        if (!r.data) throw new Error(`createAccount: ${r.errors[0]?.message}`);
        spread.push(r.data.createAccount.id);
      }),
    );
  }
  setup.close();
  if (spread.length > 0) {
    for (const path of PATHS) {
      const c = createPerfClient(servers[path].graphqlUrl, adminKey, 8);
      let w = 0;
      const r = await closedLoop(8, 3, async () => {
        const p = trace[w % trace.length]!;
        const n = w++;
        const res = await c.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, {
          input: { accountId: spread[n % spread.length], idempotencyKey: `${runId}:warm-${path}:${n}`, category: 'llm', model: p.model, quantities: llmQuantities(p, p.outputTokens) },
        });
        return res.errorCode ? { units: 0, errors: [res.errorCode] } : { units: 1, errors: [] };
      });
      c.close();
      if (r.errorCount) throw new Error(`warm-up charges failed: ${JSON.stringify(r.errors)}`);
    }
    console.log(`${nAccounts} accounts, ${await seedClosedHolds(db, 2)} closed holds seeded`);
  }
  // ANALYZE, as bench/perf.ts does before measuring: plans made on an empty database's statistics
  // would scan whole tables.
  await db.query('ANALYZE');

  let seq = 0;
  const acknowledged: Record<Path, number> = { group: 0, naive: 0 };
  let failed = 0;
  const slice = async (path: Path) => {
    const client = createPerfClient(servers[path].graphqlUrl, adminKey, concurrency);
    const pid = servers[path].pids.server;
    const counters0 = await readServerCounters(servers[path].graphqlUrl);
    const t0 = cpuTicksOf(pid)!;
    const w0 = performance.now();
    // What the database's backends wait on, sampled every 100 ms (pg_stat_activity).
    const waits = new Map<string, number>();
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const { rows } = await db.query(
          `SELECT state, COALESCE(wait_event_type || ':' || wait_event, 'CPU') AS w, left(query, 40) AS q FROM pg_stat_activity
            WHERE datname = $1 AND pid <> pg_backend_pid() AND state <> 'idle'`,
          [dbName],
        );
        for (const r of rows) waits.set(`${r.w} (${r.q})`, (waits.get(`${r.w} (${r.q})`) ?? 0) + 1);
        await new Promise((res) => setTimeout(res, 100));
      }
    })();
    const r = await closedLoop(concurrency, sliceSeconds, async () => {
      const p = trace[seq % trace.length]!;
      const n = seq++;
      const res = await client.gql(`mutation PerfRecordUsage($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`, {
        input: { accountId: hot[path], idempotencyKey: `${runId}:${path}:${n}`, category: 'llm', model: p.model, agentId: p.agentId, userId: p.userId, taskId: p.taskId, quantities: llmQuantities(p, p.outputTokens) },
      });
      if (res.errorCode) return { units: 0, errors: [res.errorCode] };
      acknowledged[path]++;
      return { units: 1, errors: [] };
    });
    const cpuPercent = (((cpuTicksOf(pid)! - t0) / CLK_TCK) * 100_000) / (performance.now() - w0);
    sampling = false;
    await sampler;
    const topWaits = [...waits].sort((x, y) => y[1] - x[1]).slice(0, 3).map(([k, n]) => `${k} x${n}`).join('; ');
    const work = serverWorkPerUnit(counters0, await readServerCounters(servers[path].graphqlUrl), r.units);
    const gcLine =
      work?.transactionsPerUnit != null
        ? `group commit: ${round(work.transactionsPerUnit * r.units)} tx, ${work.itemsPerTransaction} charges/tx, ${work.meanTransactionMs} ms/tx, carried ${work.carriedShare} of tx, misses ${work.carriedMissesPerTransaction} per tx`
        : '';
    client.close();
    failed += r.errorCount;
    return { ...r, cpuPercent, topWaits: gcLine ? `${gcLine}; ${topWaits}` : topWaits };
  };

  console.log(`(2a) interleaved: recordUsage on one hot account per path, ${concurrency} clients, ${rounds} ABBA pairs of ${sliceSeconds} s slices`);
  for (const path of PATHS) {
    const w = await slice(path);
    console.log(`warm-up  ${path.padEnd(5)} ${String(round(w.unitsPerSecond)).padStart(7)} events/s (not counted)`);
  }
  const totals: Record<Path, { units: number; seconds: number }> = { group: { units: 0, seconds: 0 }, naive: { units: 0, seconds: 0 } };
  const pairRatios: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const order: Path[] = i % 2 === 0 ? ['group', 'naive'] : ['naive', 'group'];
    const rate = {} as Record<Path, number>;
    for (const path of order) {
      const r = await slice(path);
      rate[path] = r.unitsPerSecond;
      totals[path].units += r.units;
      totals[path].seconds += r.seconds;
      console.log(
        `pair ${i + 1} ${path.padEnd(5)} ${String(round(r.unitsPerSecond)).padStart(7)} events/s  p50 ${r.latencyMs.p50} ms  p99 ${r.latencyMs.p99} ms  server CPU ${round(r.cpuPercent)} %; backends ${r.topWaits}${r.errorCount ? `  errors ${JSON.stringify(r.errors)}` : ''}`,
      );
    }
    pairRatios.push(rate.group / rate.naive);
    console.log(`pair ${i + 1} ratio group / naive ${pairRatios.at(-1)!.toFixed(2)}x`);
  }
  const total = (p: Path) => totals[p].units / totals[p].seconds;
  const sorted = [...pairRatios].sort((a, b) => a - b);
  const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2]! : (sorted[sorted.length / 2 - 1]! + sorted[sorted.length / 2]!) / 2;
  console.log(
    `\ntotals: group ${round(total('group'))} events/s, naive ${round(total('naive'))} events/s: ratio ${(total('group') / total('naive')).toFixed(2)}x; pairs ${pairRatios.map((x) => x.toFixed(2)).join(' / ')} (median ${median.toFixed(2)}x, min ${sorted[0]!.toFixed(2)}x, max ${sorted.at(-1)!.toFixed(2)}x); goal 5x`,
  );

  // Checks: the ledger invariant of both accounts (the product's own check), and acknowledged = stored.
  let invariantOk = true;
  for (const p of PATHS) invariantOk &&= (await reconcileAccount(db, decodeId(hot[p], 'Account'))).consistent;
  const stored = await db.query(`SELECT account_id::text AS id, count(*)::int AS n FROM usage_events WHERE idempotency_key LIKE $1 GROUP BY 1`, [`${runId}:%`]);
  const storedOf = (p: Path) => (stored.rows.find((r) => r.id === decodeId(hot[p], 'Account'))?.n as number | undefined) ?? 0;
  const storedOk = PATHS.every((p) => storedOf(p) === acknowledged[p]);
  console.log(`ledger invariant of both accounts (reconcileAccount: total = SUM(ACTIVE batches) - debt = SUM(ledger entries except RESERVE/RELEASE), period opening): ${invariantOk ? 'yes' : 'NO'}`);
  console.log(`events acknowledged = stored: ${storedOk ? 'yes' : 'NO'} (group ${acknowledged.group} / ${storedOf('group')}, naive ${acknowledged.naive} / ${storedOf('naive')}); failed requests: ${failed}`);
  if (!invariantOk || !storedOk || failed > 0) exitCode = 1;
} finally {
  await db.end();
  for (const path of PATHS) await servers[path]?.stop();
  await dropDatabase(base, dbName);
}
process.exit(exitCode);
