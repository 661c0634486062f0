/**
 * The reconcile worker's per-minute pass on one busy pool (an organization account with a long
 * ledger): the full check (reconcileAccount: the whole ledger, what every pass ran before the
 * checkpoints of migration reconcile_checkpoints) against the incremental pass
 * (reconcileAccounts from the account's checkpoint: only the entries since).
 *
 * On a fresh database (`--db`, default creditpool_bench_reconcile; dropped at the end unless
 * `--keep-db`): one account with 1,000,000 PAID credits, `--entries` ADJUST ledger entries
 * generated with SQL over the year before now (+1000 / -1000 micro-credits in turn: the ledger
 * invariant still holds), a refunded charge, VACUUM ANALYZE and a CHECKPOINT. Then, each timed
 * `--rounds` times: reconcileAccount (full); a pass right after a consistent one (nothing new);
 * a pass after `--charges` new charges (what one minute of a busy pool adds). Prints p50 / max ms.
 *
 * Then the pass the worker runs every minute over many accounts with short ledgers (`--accounts`,
 * default 1,000, the pass's limit; each with a grant and 3 charges): the first pass (no
 * checkpoints: every account in full), then `--rounds` times one charge per account and an
 * incremental pass, and a pass with every account in full (fullEveryMs 0). Prints p50 / max ms per
 * pass and ms per account.
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/reconcile-pass.ts [--entries 2000000] [--charges 100] [--rounds 5] [--accounts 1000] [--db NAME] [--keep-db]
 */
import { parseArgs } from 'node:util';
import { applyMigrations } from '../src/db/migrate.js';
import { createPgPool } from '../src/db/pg.js';
import { createPricingState } from '../src/services/pricing-state.js';
import { publishPriceBook } from '../src/services/publish-price-book.js';
import { createAccount } from '../src/services/create-account.js';
import { grantCredits } from '../src/services/grant-credits.js';
import { recordUsage } from '../src/services/record-usage.js';
import { refundUsage } from '../src/services/refund-usage.js';
import { reconcileAccount } from '../src/services/read-balance.js';
import { reconcileAccounts } from '../src/services/reconcile-ledger.js';
import { credits } from '../src/ledger/credits.js';
import { planReplay, llmQuantities } from '../demo/plan.js';
import { demoPriceBook } from '../demo/price-book.js';
import type { ServiceContext } from '../src/services/context.js';
import { insertLedgerHistory } from './perf/ledger-history.js';
import { dropDatabase, recreateDatabase } from './perf/scratch-db.js';

const { values } = parseArgs({
  options: {
    entries: { type: 'string', default: '2000000' },
    charges: { type: 'string', default: '100' },
    rounds: { type: 'string', default: '5' },
    accounts: { type: 'string', default: '1000' },
    db: { type: 'string', default: 'creditpool_bench_reconcile' },
    'keep-db': { type: 'boolean', default: false },
  },
});
const ENTRIES = Number(values.entries);
const CHARGES = Number(values.charges);
const ROUNDS = Number(values.rounds);
const ACCOUNTS = Number(values.accounts);
const DATABASE = values.db!;
if (!Number.isInteger(ENTRIES) || ENTRIES < 0 || ENTRIES % 2 !== 0 || !Number.isInteger(CHARGES) || CHARGES < 1 || !Number.isInteger(ROUNDS) || ROUNDS < 1 || !Number.isInteger(ACCOUNTS) || ACCOUNTS < 1 || !/^[a-z0-9_]+$/.test(DATABASE)) {
  console.error('--entries must be an even integer >= 0, --charges, --rounds and --accounts integers >= 1, --db a lower-case name');
  process.exit(2);
}
const serverUrl = process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/creditpool';

const stats = (ms: number[]) => {
  const s = [...ms].sort((a, b) => a - b);
  return `p50 ${s[Math.floor(s.length / 2)]!.toFixed(1)} ms  max ${s[s.length - 1]!.toFixed(1)} ms  (${s.length} runs)`;
};

async function main(): Promise<void> {
  const url = await recreateDatabase(serverUrl, DATABASE);
  await applyMigrations(url);
  const pool = createPgPool(url, 1);
  const ctx: ServiceContext = { pool, clock: () => new Date(), pricing: createPricingState(pool) };
  await publishPriceBook(ctx, demoPriceBook('reconcile-pass'));
  const { accountId } = await createAccount(ctx, { externalId: 'reconcile-pass', name: 'a busy pool', kind: 'ORGANIZATION', welcomeBonus: false, testMode: false, testClockStart: null });
  await grantCredits(ctx, { accountId, amountMicroCredits: credits(1_000_000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'paid' });
  const yearAgo = new Date(Date.now() - 365 * 86_400_000);
  const t0 = performance.now();
  await insertLedgerHistory(pool, accountId, yearAgo, ENTRIES, 360);
  const trace = planReplay('azure');
  let key = 0;
  const charge = () => {
    const r = trace[key % trace.length]!;
    return recordUsage(ctx, { accountId, idempotencyKey: `rp-${key++}`, category: 'llm', model: r.model, quantities: llmQuantities(r, r.outputTokens) as never });
  };
  await refundUsage(ctx, (await charge()).eventId, 'bench: a refund in the history');
  await pool.query('VACUUM (ANALYZE)');
  await pool.query('CHECKPOINT');
  console.log(`account ${accountId}: ${ENTRIES.toLocaleString('en-US')} history entries, generated in ${((performance.now() - t0) / 1000).toFixed(1)} s`);

  const timed = async (f: () => Promise<unknown>): Promise<number> => {
    const s = performance.now();
    await f();
    return performance.now() - s;
  };
  const full: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    full.push(await timed(async () => {
      if (!(await reconcileAccount(pool, accountId)).consistent) throw new Error('inconsistent');
    }));
  }
  const pass = async () => {
    const report = await reconcileAccounts(pool, [accountId]);
    if (report.inconsistent.length > 0) throw new Error('inconsistent');
    return report;
  };
  const first = await timed(pass); // no checkpoint yet: full, writes it
  const idle: number[] = [];
  const busy: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    idle.push(await timed(pass));
    for (let c = 0; c < CHARGES; c++) await charge();
    let fully = -1;
    busy.push(await timed(async () => {
      fully = (await pass()).fullyChecked;
    }));
    if (fully !== 0) throw new Error('expected an incremental pass');
  }
  console.log(`full check (reconcileAccount, the pass before)   ${stats(full)}`);
  console.log(`first pass (no checkpoint: full)                 ${first.toFixed(1)} ms`);
  console.log(`incremental pass, nothing new                    ${stats(idle)}`);
  console.log(`incremental pass, ${CHARGES} charges since the last  ${stats(busy)}`);

  // Many accounts with short ledgers: the worker's pass over the 1,000 most recently changed.
  const ids: string[] = [];
  for (let i = 0; i < ACCOUNTS; i++) {
    const { accountId: id } = await createAccount(ctx, { externalId: `reconcile-pass-${i}`, name: `pool ${i}`, kind: 'ORGANIZATION', welcomeBonus: false, testMode: false, testClockStart: null });
    await grantCredits(ctx, { accountId: id, amountMicroCredits: credits(1_000), type: 'PAID', source: 'PURCHASE', expiresAt: null, reference: null, idempotencyKey: 'paid' });
    ids.push(id);
  }
  const chargeEach = async () => {
    for (const id of ids) {
      const r = trace[key % trace.length]!;
      await recordUsage(ctx, { accountId: id, idempotencyKey: `rp-${key++}`, category: 'llm', model: r.model, quantities: llmQuantities(r, r.outputTokens) as never });
    }
  };
  for (let c = 0; c < 3; c++) await chargeEach();
  await pool.query('VACUUM (ANALYZE)');
  const passOf = async (options: { fullEveryMs?: number }, fully: number) => {
    const report = await reconcileAccounts(pool, ids, options);
    if (report.inconsistent.length > 0 || report.checked !== ids.length || report.fullyChecked !== fully) throw new Error(`unexpected pass: ${JSON.stringify({ ...report, inconsistent: report.inconsistent.length })}`);
  };
  const manyFirst = await timed(() => passOf({}, ids.length));
  const manyIncremental: number[] = [];
  const manyFull: number[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    await chargeEach();
    manyIncremental.push(await timed(() => passOf({}, 0)));
    manyFull.push(await timed(() => passOf({ fullEveryMs: 0 }, ids.length)));
  }
  const perAccount = (ms: number[]) => `${stats(ms)}  = ${([...ms].sort((a, b) => a - b)[Math.floor(ms.length / 2)]! / ids.length).toFixed(3)} ms per account at p50`;
  console.log(`${ids.length} accounts with short ledgers (a grant, 3 charges, then one charge per account between passes):`);
  console.log(`first pass (no checkpoints: every account in full) ${manyFirst.toFixed(1)} ms = ${(manyFirst / ids.length).toFixed(3)} ms per account`);
  console.log(`incremental pass, one charge per account since     ${perAccount(manyIncremental)}`);
  console.log(`pass in full (fullEveryMs 0)                       ${perAccount(manyFull)}`);
  await pool.end();
  if (!values['keep-db']) await dropDatabase(serverUrl, DATABASE);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
