/**
 * A hot pool whose agents have spending budgets, through group commit, in process (no HTTP or
 * GraphQL): what carrying a budgeted account's state over to its next transaction gains
 * (GroupCommitter `carryState`, AccountTx.lockCarried), measured on the same minutes.
 *
 * On a fresh database `creditpool_bench_budget_pool` (on DATABASE_URL's server; dropped at the
 * end): per slice, a new account with 100,000,000 PAID credits and, where the slice says so, a
 * budget (far above what it spends) for each of 5 agents, and a GroupCommitter with
 * `--transactions` slots; `--clients` closed-loop callers `recordUsage` a `tool_call` of agent
 * i mod 5 for `--seconds`. Slices alternate ABBA over (budgets, carried) × (budgets, not carried)
 * × (no budgets, carried), `--rounds` times, after one unmeasured warm-up slice of each. Prints
 * each slice (events/s, transactions, the share committed from carried state) and per variant
 * the median events/s; ends by checking each slice's account's ledger invariant and kept budget
 * spending (reconcileAccount). Exit status 1 when a check fails.
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/budget-hot-pool.ts [--rounds 3] [--seconds 5] [--clients 8] [--transactions 4]
 */
import { parseArgs } from 'node:util';
import { applyMigrations } from '../src/db/migrate.js';
import { createPgPool } from '../src/db/pg.js';
import { createPricingState } from '../src/services/pricing-state.js';
import { publishPriceBook } from '../src/services/publish-price-book.js';
import { createAccount } from '../src/services/create-account.js';
import { grantCredits } from '../src/services/grant-credits.js';
import { setSpendingBudget } from '../src/services/spending-budgets.js';
import { applyCharge, chargeAccounts, recordUsage } from '../src/services/record-usage.js';
import { GroupCommitter } from '../src/services/group-commit.js';
import { reconcileAccount } from '../src/services/read-balance.js';
import { credits } from '../src/ledger/credits.js';
import { demoPriceBook } from '../demo/price-book.js';
import { dropDatabase, recreateDatabase } from './perf/scratch-db.js';
import type { ServiceContext } from '../src/services/context.js';

const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    seconds: { type: 'string', default: '5' },
    clients: { type: 'string', default: '8' },
    transactions: { type: 'string', default: '4' },
  },
});
const [rounds, seconds, clients, transactions] = [values.rounds, values.seconds, values.clients, values.transactions].map(Number) as [number, number, number, number];
if (![rounds, seconds, clients, transactions].every((n) => Number.isSafeInteger(n) && n >= 1)) {
  console.error('usage: tsx bench/budget-hot-pool.ts [--rounds 3] [--seconds 5] [--clients 8] [--transactions 4]');
  process.exit(2);
}
const serverUrl = process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/creditpool';
const DATABASE = 'creditpool_bench_budget_pool';
const AGENTS = 5;

/** A variant of the slice: whether the agents have budgets, and whether the committer carries state over. */
interface Variant {
  name: string;
  budgets: boolean;
  carryState: boolean;
}
const VARIANTS: Variant[] = [
  { name: 'budgets, carried', budgets: true, carryState: true },
  { name: 'budgets, not carried', budgets: true, carryState: false },
  { name: 'no budgets, carried', budgets: false, carryState: true },
];

const url = await recreateDatabase(serverUrl, DATABASE);
await applyMigrations(url);
const pool = createPgPool(url, transactions + 2);
let failed = false;
try {
  const ctx: ServiceContext = { pool, clock: () => new Date(), pricing: createPricingState(pool) };
  await publishPriceBook(ctx, demoPriceBook('budget-pool'));
  const accounts: string[] = [];
  let slice = 0;

  /** One slice of `variant`: events/s, transactions, share carried. */
  const run = async (variant: Variant) => {
    const { accountId } = await createAccount(ctx, { externalId: `pool-${slice}`, name: 'budget pool bench', kind: 'ORGANIZATION', welcomeBonus: false, testMode: false, testClockStart: null });
    slice++;
    accounts.push(accountId);
    await grantCredits(ctx, { accountId, amountMicroCredits: credits(100_000_000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'paid' });
    if (variant.budgets) {
      for (let a = 0; a < AGENTS; a++) {
        await setSpendingBudget(ctx, { accountId, subjectKind: 'AGENT', subjectId: `agent-${a}`, limitMicroCredits: credits(1_000_000_000) });
      }
    }
    const groupCommit = new GroupCommitter(pool, ctx.clock, chargeAccounts, applyCharge, { maxTransactions: transactions, carryState: variant.carryState });
    const local = { ...ctx, groupCommit };
    let next = 0;
    const t0 = performance.now();
    await Promise.all(
      Array.from({ length: clients }, async () => {
        while (performance.now() - t0 < seconds * 1000) {
          const i = next++;
          await recordUsage(local, { accountId, idempotencyKey: `e-${i}`, category: 'tool_call', agentId: `agent-${i % AGENTS}` });
        }
      }),
    );
    const elapsedSeconds = (performance.now() - t0) / 1000;
    const stats = groupCommit.stats();
    return { eventsPerSecond: next / elapsedSeconds, transactions: stats.transactions, carriedShare: stats.transactions ? stats.carriedState / stats.transactions : 0 };
  };

  for (const v of VARIANTS) await run(v); // warm-up, unmeasured
  const measured = new Map<string, number[]>(VARIANTS.map((v) => [v.name, []]));
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? VARIANTS : [...VARIANTS].reverse();
    for (const v of order) {
      const m = await run(v);
      measured.get(v.name)!.push(m.eventsPerSecond);
      console.log(`round ${r + 1}  ${v.name.padEnd(21)} ${Math.round(m.eventsPerSecond).toLocaleString('en-US').padStart(6)} events/s  ${m.transactions} transactions, ${(m.carriedShare * 100).toFixed(0)}% from carried state`);
    }
  }
  const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
  console.log(`\n${clients} clients, ${transactions} transaction slots, ${seconds} s slices, medians of ${rounds}:`);
  for (const v of VARIANTS) console.log(`  ${v.name.padEnd(21)} ${Math.round(median(measured.get(v.name)!)).toLocaleString('en-US').padStart(6)} events/s`);
  for (const accountId of accounts) {
    const r = await reconcileAccount(pool, accountId);
    if (!r.consistent) {
      failed = true;
      console.error(`account ${accountId} does not reconcile: ${JSON.stringify(r, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}`);
    }
  }
  console.log(failed ? 'ledger invariant: FAILED' : `ledger invariant and kept budget spending hold on all ${accounts.length} accounts`);
} finally {
  await pool.end();
  await dropDatabase(serverUrl, DATABASE);
}
process.exit(failed ? 1 : 0);
