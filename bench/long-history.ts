/**
 * Charges and balance reads on an account with a long ledger history (issue #6: "a hot shared
 * pool that scales"). An organization's pool that has been spending for a year has millions of
 * ledger entries before its current billing period; every charge recomputes the balance figures
 * (periodCredits, percentRemaining, credit alerts) from the total at the period start.
 *
 * On a fresh database `creditpool_bench_long_history`: one account (100-credit welcome bonus and
 * 1,000,000 PAID credits) whose billing anchor is moved one year back, then `--entries` ADJUST
 * ledger entries generated with SQL over the 12 months before the current period (+1000 and
 * -1000 micro-credits in turn: they sum to zero, so the ledger invariant still holds) and
 * `--grants` used-up grants over the same months (what a pool on auto top-up gathers: one
 * AUTO_TOP_UP grant of 20 credits per top-up, its batch EXHAUSTED, its GRANT entry and the same
 * amount spent again in an ADJUST entry, so the invariant still holds), VACUUM ANALYZE and a
 * CHECKPOINT;
 * then `--charges` sequential `recordUsage` calls (the service in process, one pg connection,
 * token counts of the real Azure 2023 trace priced per token) and as many `readBalance` calls,
 * each timed. The first charge after the history is reported apart (it is the one that meets
 * the new data). Ends by checking the ledger invariant of the account (reconcileAccount) and
 * dropping the database (`--keep-db` keeps it).
 *
 * Prints one line per measured kind: p50 / p95 / max ms. No results file (`bench/README.md`
 * keeps the numbers).
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/long-history.ts [--entries 2000000] [--grants 0] [--charges 200] [--keep-db]
 */
import { parseArgs } from 'node:util';
import pg from 'pg';
import { applyMigrations } from '../src/db/migrate.js';
import { createPgPool } from '../src/db/pg.js';
import { createPricingState } from '../src/services/pricing-state.js';
import { publishPriceBook } from '../src/services/publish-price-book.js';
import { createAccount } from '../src/services/create-account.js';
import { grantCredits } from '../src/services/grant-credits.js';
import { recordUsage } from '../src/services/record-usage.js';
import { readBalance, reconcileAccount } from '../src/services/read-balance.js';
import { credits } from '../src/ledger/credits.js';
import { planReplay, llmQuantities } from '../demo/plan.js';
import { demoPriceBook } from '../demo/price-book.js';
import type { ServiceContext } from '../src/services/context.js';
import { insertLedgerHistory } from './perf/ledger-history.js';

const { values } = parseArgs({
  options: {
    entries: { type: 'string', default: '2000000' },
    grants: { type: 'string', default: '0' },
    charges: { type: 'string', default: '200' },
    'keep-db': { type: 'boolean', default: false },
  },
});
const ENTRIES = Number(values.entries);
const GRANTS = Number(values.grants);
const CHARGES = Number(values.charges);
if (!Number.isInteger(ENTRIES) || ENTRIES < 0 || ENTRIES % 2 !== 0 || !Number.isInteger(GRANTS) || GRANTS < 0 || !Number.isInteger(CHARGES) || CHARGES < 2) {
  console.error('--entries must be an even integer >= 0, --grants an integer >= 0, --charges an integer >= 2');
  process.exit(2);
}
const DATABASE = 'creditpool_bench_long_history';
const base = new URL(process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/creditpool');
const withDb = (name: string) => {
  const u = new URL(base);
  u.pathname = `/${name}`;
  return u.toString();
};

function quantiles(ms: number[]): string {
  const s = [...ms].sort((a, b) => a - b);
  const q = (p: number) => s[Math.min(s.length - 1, Math.floor(p * s.length))]!;
  return `p50 ${q(0.5).toFixed(2)} ms  p95 ${q(0.95).toFixed(2)} ms  max ${s[s.length - 1]!.toFixed(2)} ms  (${s.length} calls)`;
}

async function main(): Promise<void> {
  const admin = new pg.Client({ connectionString: withDb('postgres') });
  await admin.connect();
  await admin.query(`DROP DATABASE IF EXISTS ${DATABASE} WITH (FORCE)`);
  await admin.end();
  await applyMigrations(withDb(DATABASE));
  const pool = createPgPool(withDb(DATABASE), 1);
  const ctx: ServiceContext = { pool, clock: () => new Date(), pricing: createPricingState(pool) };
  await publishPriceBook(ctx, demoPriceBook('long-history'));
  const { accountId } = await createAccount(ctx, { externalId: 'long-history', name: 'a year of spending', kind: 'ORGANIZATION', welcomeBonus: true, testMode: false, testClockStart: null });
  await grantCredits(ctx, { accountId, amountMicroCredits: credits(1_000_000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'paid' });

  // A year back: the current period is the 13th from the anchor; the history fills the 12 before it.
  const anchor = new Date();
  anchor.setUTCFullYear(anchor.getUTCFullYear() - 1);
  anchor.setUTCHours(0, 0, 0, 0);
  await pool.query('UPDATE accounts SET billing_anchor_at = $2, created_at = $2 WHERE id = $1', [accountId, anchor]);
  const t0 = performance.now();
  await insertLedgerHistory(pool, accountId, anchor, ENTRIES, 365);
  if (GRANTS > 0) {
    await pool.query(
      `WITH g AS (
         INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, reference, idempotency_key, request_hash, created_at)
         SELECT gen_random_uuid(), $1, 'AUTO_TOP_UP', 'PAID', 20000000, NULL, 'bench-top-up-' || i, 'bench',
                $2::timestamptz + (i * interval '1 second' * (365 * 86400.0 / ($3::bigint + 1)))
           FROM generate_series(1, $3::bigint) AS i
         RETURNING id, amount_micro_credits, created_at
       ), b AS (
         INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, expires_at, status, updated_at)
         SELECT gen_random_uuid(), $1, g.id, 'PAID', 'AUTO_TOP_UP', g.amount_micro_credits, 0, g.created_at, NULL, 'EXHAUSTED', g.created_at FROM g
         RETURNING id, allocated_micro_credits AS amount, added_at
       )
       INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id, note, created_at)
       SELECT gen_random_uuid(), $1, t.type::"LedgerEntryType", t.sign * b.amount, bal.total_micro_credits, CASE WHEN t.sign > 0 THEN b.id END, 'bench top-up', b.added_at
         FROM b, balances bal, (VALUES ('GRANT', 1), ('ADJUST', -1)) AS t(type, sign) WHERE bal.account_id = $1`,
      [accountId, anchor, GRANTS],
    );
  }
  // Settle what the generation left behind before measuring: autovacuum of the new rows and the
  // checkpoint of their WAL would otherwise compete with the measured calls.
  await pool.query('VACUUM (ANALYZE)');
  await pool.query('CHECKPOINT');
  const generatedS = (performance.now() - t0) / 1000;
  const { rows } = await pool.query(
    `SELECT count(*)::int AS n, min(created_at) AS first, max(created_at) AS last FROM ledger_entries WHERE account_id = $1 AND note = 'bench history'`,
    [accountId],
  );
  console.log(`account ${accountId}: ${rows[0].n.toLocaleString('en-US')} history entries and ${GRANTS.toLocaleString('en-US')} used-up top-up grants (${rows[0].first?.toISOString() ?? '-'} .. ${rows[0].last?.toISOString() ?? '-'}), generated in ${generatedS.toFixed(1)} s; billing anchor ${anchor.toISOString()}`);

  const trace = planReplay('azure');
  const charge = (i: number) => {
    const r = trace[i % trace.length]!;
    return recordUsage(ctx, { accountId, idempotencyKey: `lh-${i}`, category: 'llm', model: r.model, quantities: llmQuantities(r, r.outputTokens) as never });
  };
  const timed = async (f: () => Promise<unknown>): Promise<number> => {
    const s = performance.now();
    await f();
    return performance.now() - s;
  };
  const first = await timed(() => charge(0));
  const charges: number[] = [];
  for (let i = 1; i < CHARGES; i++) charges.push(await timed(() => charge(i)));
  const reads: number[] = [];
  for (let i = 0; i < CHARGES; i++) reads.push(await timed(() => readBalance(pool, accountId, new Date())));
  console.log(`first charge after the history  ${first.toFixed(2)} ms`);
  console.log(`recordUsage                     ${quantiles(charges)}`);
  console.log(`readBalance                     ${quantiles(reads)}`);
  const rec = await reconcileAccount(pool, accountId);
  console.log(`ledger invariant: ${rec.consistent ? 'OK' : 'BROKEN'} (total ${rec.totalMicroCredits} micro-credits, ledger sum ${rec.ledgerSumMicroCredits})`);
  await pool.end();
  if (!values['keep-db']) {
    const a = new pg.Client({ connectionString: withDb('postgres') });
    await a.connect();
    await a.query(`DROP DATABASE IF EXISTS ${DATABASE} WITH (FORCE)`);
    await a.end();
  }
  if (!rec.consistent) process.exit(1);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
