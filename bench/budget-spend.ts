/**
 * A charge of an agent with a spending budget, against that agent's usage so far in the period
 * (issue #6's "limited by the database, not by its own code" on the budget path).
 *
 * On a fresh database `creditpool_bench_budget` (on DATABASE_URL's server; dropped at the end):
 * one funded account with a budget for `agent-1`; then, for each size N of `--events` (default
 * 0,100000,1000000), N usage events of agent-1 recorded in the current billing period are written
 * with SQL (VACUUM ANALYZE after), the kept spending is dropped (events written by SQL bypass it,
 * as a budget set or a period begun after them would), and `recordUsage` with agentId agent-1 is
 * called in process, sequentially: the first call (which starts the kept spending from the SUM of
 * the period) apart, then p50 / max of `--charges` more; then p50 of 10 `listBudgets` (the
 * `Account.budgets` read).
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/budget-spend.ts [--events 0,100000,1000000] [--charges 30]
 */
import { parseArgs } from 'node:util';
import { applyMigrations } from '../src/db/migrate.js';
import { createPgPool } from '../src/db/pg.js';
import { createPricingState } from '../src/services/pricing-state.js';
import { publishPriceBook } from '../src/services/publish-price-book.js';
import { createAccount } from '../src/services/create-account.js';
import { grantCredits } from '../src/services/grant-credits.js';
import { listBudgets, setSpendingBudget } from '../src/services/spending-budgets.js';
import { recordUsage } from '../src/services/record-usage.js';
import { credits } from '../src/ledger/credits.js';
import { demoPriceBook } from '../demo/price-book.js';
import { dropDatabase, recreateDatabase } from './perf/scratch-db.js';
import type { ServiceContext } from '../src/services/context.js';

const { values } = parseArgs({ options: { events: { type: 'string', default: '0,100000,1000000' }, charges: { type: 'string', default: '30' } } });
const sizes = values.events.split(',').map(Number);
const charges = Number(values.charges);
if (sizes.some((n) => !Number.isSafeInteger(n) || n < 0) || !Number.isSafeInteger(charges) || charges < 1) {
  console.error('usage: tsx bench/budget-spend.ts [--events 0,100000,1000000] [--charges 30]');
  process.exit(2);
}
const serverUrl = process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/creditpool';
const DATABASE = 'creditpool_bench_budget';

const url = await recreateDatabase(serverUrl, DATABASE);
await applyMigrations(url);
const pool = createPgPool(url, 2);
try {
  const ctx: ServiceContext = { pool, clock: () => new Date(), pricing: createPricingState(pool) };
  await publishPriceBook(ctx, demoPriceBook('budget'));
  const { accountId } = await createAccount(ctx, { externalId: 'budget', name: 'budget bench', kind: 'ORGANIZATION', welcomeBonus: false, testMode: false, testClockStart: null });
  await grantCredits(ctx, { accountId, amountMicroCredits: credits(100_000_000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'paid' });
  await setSpendingBudget(ctx, { accountId, subjectKind: 'AGENT', subjectId: 'agent-1', limitMicroCredits: credits(1_000_000_000) });
  let written = 0;
  for (const n of sizes) {
    if (n > written) {
      // After the account's creation, so inside its first billing period.
      await pool.query(
        `INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, recorded_at, category, agent_id, cost_micro_credits, lines, price_book_version)
         SELECT gen_random_uuid(), $1, 'sql-' || g, 'sql', clock_timestamp(), clock_timestamp(), 'tool_call', 'agent-1', 1000, '[]'::jsonb, (SELECT max(version) FROM price_books)
           FROM generate_series($2::int, $3::int) g`,
        [accountId, written + 1, n],
      );
      written = n;
      await pool.query('VACUUM ANALYZE usage_events');
    }
    // (Before the migration budget_spend there is no kept spending: every check summed the period.)
    if ((await pool.query(`SELECT to_regclass('budget_spend') IS NOT NULL AS kept`)).rows[0].kept) await pool.query('DELETE FROM budget_spend');
    const charge = async (key: string) => {
      const t0 = performance.now();
      await recordUsage(ctx, { accountId, idempotencyKey: key, category: 'tool_call', agentId: 'agent-1' });
      return performance.now() - t0;
    };
    const first = await charge(`first-${n}`);
    const ms: number[] = [];
    for (let i = 0; i < charges; i++) ms.push(await charge(`c-${n}-${i}`));
    ms.sort((a, b) => a - b);
    const listMs: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t0 = performance.now();
      await listBudgets(pool, accountId, new Date());
      listMs.push(performance.now() - t0);
    }
    listMs.sort((a, b) => a - b);
    console.log(
      `${n.toLocaleString('en-US')} events of agent-1 in the period: first charge ${first.toFixed(2)} ms, then p50 ${ms[Math.floor(ms.length / 2)]!.toFixed(2)} ms, max ${ms[ms.length - 1]!.toFixed(2)} ms (${charges} charges); listBudgets p50 ${listMs[5]!.toFixed(2)} ms`,
    );
  }
} finally {
  await pool.end();
  await dropDatabase(serverUrl, DATABASE);
}
