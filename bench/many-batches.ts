/**
 * Does a charge get slower when its account holds many live credit batches?
 *
 * For each batch count of `--counts` (default 1,100,1000,10000) one account is given that many
 * ACTIVE batches with SQL (a grant, a batch and its GRANT ledger entry each, all dated now, the
 * balance row moved to match: the ledger invariant holds; a quarter FREE, half of them expiring over the coming
 * year, the rest never; 1,000 credits each), then, in process (no HTTP, no GraphQL), with ONE pg
 * connection:
 * - `direct`: `--charges` sequential `recordUsage` calls without group commit (AccountTx.state +
 *   applyCharge, one transaction each);
 * - `group`: the same through a GroupCommitter (chargeStates + chargeAccounts), sequential, so one
 *   charge per transaction;
 * - `group x8`: `--charges` charges with 8 in flight through the GroupCommitter (groups of several
 *   charges of the one account, decided in memory, the next transaction carrying the state);
 * - `balance`: `readBalance` (Account.balance's service);
 * - `batches`: the statement Account.batches runs (drawdown order, first 1,000 rows);
 * - `expiry`: `expireDue` on the account with nothing due (what an expire-due job costs it).
 * Each row: wall ms per call, the PostgreSQL backend's CPU per call (/proc/<pid>/stat of the one
 * connection), this process's JavaScript-thread CPU per call, and the credit_batches and
 * credit_grants rows read per call (pg_stat_user_tables: index fetches plus sequential-scan rows,
 * flushed before each reading). The machine is shared: compare PG and JS CPU, which other
 * processes do not inflate, more than wall times across runs.
 * Each charge costs about 0.0001-0.01 credits, so it draws from the first batch in drawdown order.
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/many-batches.ts [--counts 1,100,1000,10000] [--charges 200] [--db creditpool_bench_many_batches] [--extra-sql 'CREATE INDEX …']
 * (the database is dropped and re-created at the start, and dropped at the end).
 */
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { applyMigrations } from '../src/db/migrate.js';
import { createPgPool } from '../src/db/pg.js';
import { createPricingState } from '../src/services/pricing-state.js';
import { publishPriceBook } from '../src/services/publish-price-book.js';
import { createAccount } from '../src/services/create-account.js';
import { applyCharge, chargeAccounts, recordUsage } from '../src/services/record-usage.js';
import { GroupCommitter } from '../src/services/group-commit.js';
import { readBalance } from '../src/services/read-balance.js';
import { expireDue } from '../src/services/expire-due.js';
import { credits } from '../src/ledger/credits.js';
import { planReplay, llmQuantities } from '../demo/plan.js';
import { demoPriceBook } from '../demo/price-book.js';
import type { ServiceContext } from '../src/services/context.js';
import { CLK_TCK } from './perf/procstat.js';

const { values } = parseArgs({
  options: {
    counts: { type: 'string', default: '1,100,1000,10000' },
    charges: { type: 'string', default: '200' },
    db: { type: 'string', default: 'creditpool_bench_many_batches' },
    'extra-sql': { type: 'string', default: '' },
  },
});
const COUNTS = values.counts.split(',').map(Number);
const CHARGES = Number(values.charges);
const base = process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/creditpool';
const url = new URL(base);
url.pathname = `/${values.db}`;
const DB = url.toString();

/** utime + stime of the process or thread whose `/proc/…/stat` file is `statPath`, in clock ticks. */
function cpuTicks(statPath: string): number {
  const f = readFileSync(statPath, 'utf8').split(') ')[1]!.split(' ');
  return Number(f[11]) + Number(f[12]);
}

async function adminQuery(sql: string): Promise<void> {
  const admin = new URL(DB);
  admin.pathname = '/postgres';
  const c = new pg.Client({ connectionString: admin.toString() });
  await c.connect();
  await c.query(sql);
  await c.end();
}

/** Gives `accountId` `n` ACTIVE batches of 1,000 credits (grant, batch, GRANT entry each) and moves its balance to match. */
async function seedBatches(pool: pg.Pool, accountId: string, n: number): Promise<void> {
  const each = credits(1000);
  await pool.query('BEGIN');
  await pool.query(
    `WITH g AS (
       INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
       SELECT gen_random_uuid(), $1, CASE WHEN i % 4 = 0 THEN 'PROMO_CODE' ELSE 'PURCHASE' END::"GrantSource",
              CASE WHEN i % 4 = 0 THEN 'FREE' ELSE 'PAID' END::"CreditType", $3, 'many-' || i, 'h', now()
         FROM generate_series(1, $2::int) i
       RETURNING id, type, source, created_at, amount_micro_credits
     ), b AS (
       INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, expires_at, status)
       SELECT gen_random_uuid(), $1, g.id, g.type, g.source, g.amount_micro_credits, g.amount_micro_credits, g.created_at,
              CASE WHEN hashtext(g.id::text) % 2 = 0 THEN now() + interval '1 day' + (abs(hashtext(g.id::text)) % 365) * interval '1 day' END, 'ACTIVE'
         FROM g
       RETURNING id, account_id, allocated_micro_credits, added_at
     )
     INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id, note, created_at)
     SELECT gen_random_uuid(), $1, 'GRANT', b.allocated_micro_credits,
            (SELECT total_micro_credits FROM balances WHERE account_id = $1) + SUM(b.allocated_micro_credits) OVER (ORDER BY b.id),
            b.id, 'seed', b.added_at
       FROM b`,
    [accountId, n, each.toString()],
  );
  await pool.query(
    `UPDATE balances SET total_micro_credits = total_micro_credits + $2::bigint, version = version + 1 WHERE account_id = $1`,
    [accountId, (each * BigInt(n)).toString()],
  );
  await pool.query('COMMIT');
}

interface Row {
  batches: number;
  what: string;
  calls: number;
  wallMs: number;
  pgMs: number;
  jsMs: number;
  rowsRead: number;
  grantRowsRead: number;
}

async function main() {
  await adminQuery(`DROP DATABASE IF EXISTS ${values.db} WITH (FORCE)`);
  await applyMigrations(DB);
  const pool = createPgPool(DB, 1);
  if (values['extra-sql']) await pool.query(values['extra-sql']); // an experiment (an index, a setting) before anything is measured
  const ctx: ServiceContext = { pool, clock: () => new Date(), pricing: createPricingState(pool) };
  await publishPriceBook(ctx, demoPriceBook('many-batches'));
  const trace = planReplay('azure').slice(0, 1000);
  const pid = (await pool.query('SELECT pg_backend_pid() AS pid')).rows[0].pid as number;
  /** Rows of credit_batches and credit_grants read so far (sequential scans plus index fetches). */
  const rowsReadSoFar = async (): Promise<[number, number]> => {
    await pool.query('SELECT pg_stat_force_next_flush()');
    await pool.query('SELECT pg_stat_clear_snapshot()');
    const { rows } = await pool.query(
      `SELECT relname, (COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0))::bigint AS n
         FROM pg_stat_user_tables WHERE relname IN ('credit_batches', 'credit_grants')`,
    );
    const of = (t: string) => Number(rows.find((r) => r.relname === t)?.n ?? 0);
    return [of('credit_batches'), of('credit_grants')];
  };
  const results: Row[] = [];
  let seq = 0;
  const usage = (accountId: string) => {
    const r = trace[seq % trace.length]!;
    seq++;
    return { accountId, idempotencyKey: `mb-${seq}`, category: 'llm', model: r.model, quantities: llmQuantities(r, r.outputTokens) as never };
  };
  const measure = async (batches: number, what: string, calls: number, run: () => Promise<void>) => {
    const rows0 = await rowsReadSoFar();
    const pg0 = cpuTicks(`/proc/${pid}/stat`);
    const js0 = cpuTicks(`/proc/self/task/${process.pid}/stat`);
    const t0 = performance.now();
    await run();
    const wallMs = performance.now() - t0;
    const pgMs = ((cpuTicks(`/proc/${pid}/stat`) - pg0) * 1000) / CLK_TCK;
    const jsMs = ((cpuTicks(`/proc/self/task/${process.pid}/stat`) - js0) * 1000) / CLK_TCK;
    const rows1 = await rowsReadSoFar();
    results.push({ batches, what, calls, wallMs: wallMs / calls, pgMs: pgMs / calls, jsMs: jsMs / calls, rowsRead: (rows1[0] - rows0[0]) / calls, grantRowsRead: (rows1[1] - rows0[1]) / calls });
  };
  for (const n of COUNTS) {
    const { accountId } = await createAccount(ctx, { externalId: `many-${n}`, name: 'many batches', kind: 'ORGANIZATION', welcomeBonus: false, testMode: false, testClockStart: null });
    await seedBatches(pool, accountId, n);
    await pool.query('VACUUM ANALYZE credit_batches');
    await pool.query('VACUUM ANALYZE credit_grants');
    await pool.query('VACUUM ANALYZE ledger_entries');
    const grouped: ServiceContext = { ...ctx, groupCommit: new GroupCommitter(pool, ctx.clock, chargeAccounts, applyCharge) };
    for (let i = 0; i < 20; i++) await recordUsage(ctx, usage(accountId)); // warm-up (plans, JIT)
    for (let i = 0; i < 20; i++) await recordUsage(grouped, usage(accountId));
    await measure(n, 'recordUsage direct', CHARGES, async () => {
      for (let i = 0; i < CHARGES; i++) await recordUsage(ctx, usage(accountId));
    });
    await measure(n, 'recordUsage group', CHARGES, async () => {
      for (let i = 0; i < CHARGES; i++) await recordUsage(grouped, usage(accountId));
    });
    await measure(n, 'recordUsage group x8', CHARGES, async () => {
      let next = 0;
      await Promise.all(
        Array.from({ length: 8 }, async () => {
          while (next < CHARGES) {
            next++;
            await recordUsage(grouped, usage(accountId));
          }
        }),
      );
    });
    await measure(n, 'balance (readBalance)', CHARGES, async () => {
      for (let i = 0; i < CHARGES; i++) await readBalance(pool, accountId, new Date());
    });
    const batchesCalls = Math.max(10, Math.floor(CHARGES / 10));
    await measure(n, 'Account.batches (its SQL)', batchesCalls, async () => {
      for (let i = 0; i < batchesCalls; i++) {
        await pool.query(
          `SELECT id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, expires_at, status FROM credit_batches
            WHERE account_id = $1 AND status = 'ACTIVE' AND (expires_at IS NULL OR expires_at > $2)
            ORDER BY type, expires_at ASC NULLS LAST, added_at, id LIMIT 1000`,
          [accountId, new Date()],
        );
      }
    });
    const expiryCalls = Math.max(10, Math.floor(CHARGES / 10));
    await measure(n, 'expireDue (nothing due)', expiryCalls, async () => {
      for (let i = 0; i < expiryCalls; i++) await expireDue(ctx, accountId);
    });
    const check = await pool.query(
      `SELECT b.total_micro_credits = (SELECT COALESCE(SUM(remaining_micro_credits), 0) FROM credit_batches WHERE account_id = $1 AND status = 'ACTIVE') - b.debt_micro_credits AS ok
         FROM balances b WHERE b.account_id = $1`,
      [accountId],
    );
    if (check.rows[0].ok !== true) throw new Error(`ledger invariant broken on the account with ${n} batches`);
  }
  await pool.end();
  await adminQuery(`DROP DATABASE IF EXISTS ${values.db} WITH (FORCE)`);
  console.log(`one account per batch count, ${CHARGES} charges per row (in process, 1 connection); per call:`);
  console.log('batches  what                          wall ms   PG CPU ms   JS CPU ms   batch rows read   grant rows read');
  for (const r of results) {
    console.log(
      `${String(r.batches).padStart(7)}  ${r.what.padEnd(28)} ${r.wallMs.toFixed(3).padStart(8)} ${r.pgMs.toFixed(3).padStart(11)} ${r.jsMs.toFixed(3).padStart(11)} ${r.rowsRead.toFixed(0).padStart(17)} ${r.grantRowsRead.toFixed(0).padStart(17)}`,
    );
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
