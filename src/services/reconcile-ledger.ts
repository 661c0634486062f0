/**
 * reconcileLedger: checks the ledger invariant (batches - debt = total = sum of ledger
 * entries, and the sums the ledger keeps on write) of the accounts whose balance changed since
 * `since`. A mismatch is a bug; it is reported, never "fixed" silently.
 *
 * Incremental between full checks. A full check (reconcileAccount: the account's whole ledger)
 * costs time proportional to its history (one account with 2,000,000 entries: ~825 ms per pass,
 * ~3.6 ms incrementally after 100 charges; bench/reconcile-pass.ts), and this pass runs every minute. So each account gets a checkpoint
 * (`reconcile_checkpoints`, written only after a CONSISTENT check, from the same snapshot): the
 * highest ledger seq seen, the SUM of its total-changing entries through it, and
 * ledger_total_at(account, opening_period_start) through it. The next pass sums only the entries
 * with seq > checkpoint (index (account_id, seq)) and checks the same equalities.
 *
 * Why the sums through the checkpoint stay right (the argument the incremental check rests on):
 * - Entries of one account become visible in seq order. Every ledger entry is written by
 *   AccountTx.finishMany (the only INSERT INTO ledger_entries in src/ and workers/: charges,
 *   grants, expiries, period rolls, payments, refunds, voids, holds and their expiry all go through
 *   AccountTx), in a transaction that took the account's balance row FOR UPDATE before
 *   (AccountTx.lock / lockMany / lockOwner / lockCarried: the lock statement goes out first on the
 *   same connection; the constructor is private). seq is drawn at INSERT, under that lock, so an
 *   account's later transaction draws higher seqs and commits after the earlier one: a snapshot
 *   that sees an entry of the account sees every entry of it with a lower seq that will ever commit.
 * - Old entries are never changed or deleted by the product (no UPDATE or DELETE of ledger_entries
 *   in src/, workers/ or the migrations; only ON DELETE CASCADE removes them, with the account,
 *   which removes the checkpoint too). Nothing in the database enforces this, so tampering with
 *   entries at or below a checkpoint is invisible to the incremental check: the FULL check
 *   (every `fullEveryMs`, RECONCILE_FULL_EVERY_HOURS, and whenever the checkpoint is missing)
 *   is the backstop for it.
 * Per pass, for an account with a checkpoint and no full check due:
 * - total = checkpoint sum + SUM(new total-changing entries); batches - debt = total (ACTIVE
 *   batches summed in full: bounded by the live batches, index (account_id, status)).
 * - opening: when the balance row's opening_period_start is the one checked last, the ledger side
 *   is the checkpoint's ledger_total_at plus the new entries that definition counts (dated before
 *   the start, or EXPIREs dated at it: late expiries are dated at their expiresAt, in the past);
 *   for a new period start, ledger_total_at in full (once per account and billing period).
 * - refund credits: the REFUND entries into batches and the refund_credits rows dated from the
 *   checkpoint's balances.updated_at on, compared per event. Exact for what refundUsage writes:
 *   one refund per event (refunded_at), its REFUND entries and refund_credits rows dated at the
 *   same account "now", which is never before the last change's (balances.updated_at; a test
 *   clock only moves forward). A new REFUND entry dated before that instant makes the pass run
 *   the whole-history refund check instead.
 * - budget spending rows: as in the full check (bounded by retention).
 */
import type pg from 'pg';
import { toBigInt } from '../db/pg.js';
import {
  budgetSpendMismatchesSql,
  refundCreditMismatchesSql,
  reconcileAccountsFull,
  reconciliationOf,
  type Reconciliation,
  type ReconcileSnapshot,
} from './read-balance.js';

/** Default interval between two full checks of one account: 24 hours (RECONCILE_FULL_EVERY_HOURS). */
export const DEFAULT_RECONCILE_FULL_EVERY_MS = 24 * 3600 * 1000;

/** Result of one pass: accounts checked, how many of them in full, and the inconsistent ones. */
export interface ReconcileReport {
  checked: number;
  fullyChecked: number;
  inconsistent: Array<{ accountId: string } & Reconciliation>;
}

/** Options of {@link reconcileLedger}. */
export interface ReconcileOptions {
  /** reconcileLedger: accounts checked at most (most recently changed first). Default 1,000. */
  limit?: number;
  /** The pass's instant (decides whether a full check is due; stored as checked_at). Default: the wall clock. */
  now?: Date;
  /** Milliseconds between two full checks of an account (0: every pass is full). Default 24 h. */
  fullEveryMs?: number;
}

/** One account's check in a pass: its Reconciliation, the snapshot it read, and when its ledger was last checked in full. */
interface CheckedAccount {
  accountId: string;
  reconciliation: Reconciliation;
  snapshot: ReconcileSnapshot;
  fullCheckedAt: Date;
}

/** An account's row of reconcile_checkpoints (migration reconcile_checkpoints). */
interface Checkpoint {
  ledgerSeq: bigint;
  ledgerSum: bigint;
  openingPeriodStart: Date | null;
  openingLedgerSum: bigint | null;
  balanceUpdatedAt: Date;
  fullCheckedAt: Date;
}

/**
 * Checks up to `limit` accounts changed at or after `since`, most recent first, with
 * {@link reconcileAccounts}.
 */
export async function reconcileLedger(pool: pg.Pool, since: Date, options: ReconcileOptions = {}): Promise<ReconcileReport> {
  const { rows } = await pool.query('SELECT account_id FROM balances WHERE updated_at >= $1 ORDER BY updated_at DESC LIMIT $2', [since, options.limit ?? 1000]);
  return reconcileAccounts(pool, rows.map((r) => r.account_id as string), options);
}

/**
 * Accounts checked per statement and transaction, in full or incrementally: one statement, planned
 * once, reads them all (each account's rows through its own index ranges), and their checkpoints
 * are saved by one upsert in the same transaction. One account per statement and transaction (the
 * statement planned for its values, a WAL flush per account) cost ~1.8-2.3 ms per account with a
 * short ledger, ~2 s of every minute's pass of 1,000 accounts; in chunks, 0.07-0.2 ms
 * (bench/reconcile-pass.ts, bench/README "reconcile-pass").
 */
export const RECONCILE_CHUNK_ACCOUNTS = 200;

/**
 * Checks the given accounts, in order (an id given twice is checked once): each in full
 * (reconcileAccount's check) when it has no checkpoint or its last full check is `fullEveryMs` old
 * or dated after `now`, else incrementally from its checkpoint (see the module comment); up to
 * RECONCILE_CHUNK_ACCOUNTS accounts per statement and transaction, full checks first. A
 * consistent account's checkpoint moves to the snapshot checked; an inconsistent one's stays, so
 * it is reported again on every pass until fixed.
 * @returns the report; `inconsistent` in the order given.
 * @throws LedgerError NOT_FOUND (full check) or Error (incremental) when an account has no balance row.
 */
export async function reconcileAccounts(pool: pg.Pool, accountIds: readonly string[], options: ReconcileOptions = {}): Promise<ReconcileReport> {
  const { now = new Date(), fullEveryMs = DEFAULT_RECONCILE_FULL_EVERY_MS } = options;
  const { rows } = await pool.query(
    `SELECT a.id AS account_id, c.ledger_seq, c.ledger_sum_micro_credits, c.opening_period_start, c.opening_ledger_sum_micro_credits,
            c.balance_updated_at, c.full_checked_at
       FROM unnest($1::uuid[]) WITH ORDINALITY AS a(id, ord)
       LEFT JOIN reconcile_checkpoints c ON c.account_id = a.id
      ORDER BY a.ord`,
    [[...new Set(accountIds)]],
  );
  const full: string[] = [];
  const incremental: { accountId: string; cp: Checkpoint }[] = [];
  for (const r of rows) {
    const accountId = r.account_id as string;
    const cp: Checkpoint | null =
      r.ledger_seq === null
        ? null
        : {
            ledgerSeq: toBigInt(r.ledger_seq),
            ledgerSum: toBigInt(r.ledger_sum_micro_credits),
            openingPeriodStart: (r.opening_period_start as Date | null) ?? null,
            openingLedgerSum: r.opening_ledger_sum_micro_credits === null ? null : toBigInt(r.opening_ledger_sum_micro_credits),
            balanceUpdatedAt: r.balance_updated_at as Date,
            fullCheckedAt: r.full_checked_at as Date,
          };
    const due = cp === null || cp.fullCheckedAt.getTime() + fullEveryMs <= now.getTime() || cp.fullCheckedAt.getTime() > now.getTime();
    if (due) full.push(accountId);
    else incremental.push({ accountId, cp });
  }
  const results = new Map<string, Reconciliation>();
  /** Checks `items` in chunks, each in one transaction that also saves its consistent accounts' checkpoints. */
  const inChunks = async <T>(items: readonly T[], check: (c: pg.PoolClient, chunk: readonly T[]) => Promise<CheckedAccount[]>) => {
    for (let i = 0; i < items.length; i += RECONCILE_CHUNK_ACCOUNTS) {
      await withCustomPlans(pool, async (c) => {
        const checked = await check(c, items.slice(i, i + RECONCILE_CHUNK_ACCOUNTS));
        await saveCheckpoints(c, checked.filter((x) => x.reconciliation.consistent), now);
        for (const x of checked) results.set(x.accountId, x.reconciliation);
      });
    }
  };
  await inChunks(full, async (c, ids) => (await reconcileAccountsFull(c, ids)).map((x) => ({ ...x, fullCheckedAt: now })));
  await inChunks(incremental, reconcileAccountsSince);
  const inconsistent: ReconcileReport['inconsistent'] = [];
  for (const r of rows) {
    const rec = results.get(r.account_id as string)!;
    if (!rec.consistent) inconsistent.push({ accountId: r.account_id as string, ...rec });
  }
  return { checked: rows.length, fullyChecked: full.length, inconsistent };
}

/**
 * Runs `f` in a transaction whose statements are planned for their parameters and without JIT.
 * Why: the workers' pool plans generically (LEDGER_SESSION_OPTIONS, force_generic_plan), and a
 * generic plan of the incremental check cannot know that `seq > $2` and `created_at >= $3` are the
 * last minute of the account: measured on one account with 2,000,000 entries, it scanned the whole
 * ledger (72 to 340 ms per pass in two runs, with a JIT compile of its never-run whole-history
 * refund branch); planned for the values, it reads the index ranges (~4 ms). SET LOCAL ends with
 * the transaction, so the pooled connection keeps its settings.
 */
async function withCustomPlans<T>(pool: pg.Pool, f: (c: pg.PoolClient) => Promise<T>): Promise<T> {
  const c = await pool.connect();
  try {
    await c.query('BEGIN; SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL jit = off');
    const result = await f(c);
    await c.query('COMMIT');
    return result;
  } catch (error) {
    await c.query('ROLLBACK').catch(() => undefined);
    throw error;
  } finally {
    c.release();
  }
}

/**
 * The incremental check of each account from its checkpoint, in one statement (one snapshot for
 * them all): per account the same Reconciliation as reconcileAccount, its ledger-side sums being
 * the checkpoint's plus the entries with seq > the checkpoint's (see the module comment for why
 * that is exact). Each account's rows are read by correlated subqueries and a LATERAL join on its
 * id, i.e. through its own index ranges whatever the number of accounts.
 * @returns one result per account given, in that order.
 * @throws Error when an account has no balance row.
 */
async function reconcileAccountsSince(
  db: pg.PoolClient,
  accounts: readonly { accountId: string; cp: Checkpoint }[],
): Promise<CheckedAccount[]> {
  const { rows } = await db.query(
    `SELECT x.account_id, b.total_micro_credits AS total, b.debt_micro_credits AS debt, b.updated_at, b.opening_period_start,
            b.opening_total_micro_credits AS opening,
            (SELECT COALESCE(SUM(remaining_micro_credits), 0) FROM credit_batches WHERE account_id = x.account_id AND status = 'ACTIVE') AS batches,
            n.max_seq, n.ledger_delta, n.opening_delta,
            CASE WHEN b.opening_period_start IS NOT NULL AND b.opening_period_start IS DISTINCT FROM x.cp_start
                 THEN COALESCE(ledger_total_at(x.account_id, b.opening_period_start), 0) END AS opening_sum_full,
            ${budgetSpendMismatchesSql('x.account_id')} AS budget_spend_mismatches,
            CASE WHEN n.refunds_dated_before > 0 THEN ${refundCreditMismatchesSql(undefined, 'x.account_id')}
            ELSE ${refundCreditMismatchesSql('x.since', 'x.account_id')} END AS refund_credit_mismatches
       FROM unnest($1::uuid[], $2::bigint[], $3::timestamptz[], $4::timestamptz[]) WITH ORDINALITY AS x(account_id, seq, since, cp_start, ord)
       JOIN balances b ON b.account_id = x.account_id
      CROSS JOIN LATERAL (
            SELECT MAX(l.seq) AS max_seq,
                   COALESCE(SUM(l.amount_micro_credits) FILTER (WHERE l.type NOT IN ('RESERVE', 'RELEASE')), 0) AS ledger_delta,
                   COALESCE(SUM(l.amount_micro_credits) FILTER (WHERE l.type NOT IN ('RESERVE', 'RELEASE')
                     AND (l.created_at < b.opening_period_start OR (l.created_at = b.opening_period_start AND l.type = 'EXPIRE'))), 0) AS opening_delta,
                   count(*) FILTER (WHERE l.type = 'REFUND' AND l.batch_id IS NOT NULL AND l.created_at < x.since) AS refunds_dated_before
              FROM ledger_entries l WHERE l.account_id = x.account_id AND l.seq > x.seq) n
      ORDER BY x.ord`,
    [
      accounts.map((a) => a.accountId),
      accounts.map((a) => a.cp.ledgerSeq.toString()),
      accounts.map((a) => a.cp.balanceUpdatedAt),
      // Without a kept opening sum, the checkpoint's period start is not usable: recompute in full.
      accounts.map((a) => (a.cp.openingLedgerSum === null ? null : a.cp.openingPeriodStart)),
    ],
  );
  const byId = new Map(rows.map((r) => [r.account_id as string, r]));
  return accounts.map(({ accountId, cp }) => {
    const r = byId.get(accountId);
    if (!r) throw new Error(`reconcile: account ${accountId} has no balance row`);
    const ledger = cp.ledgerSum + toBigInt(r.ledger_delta);
    const start = (r.opening_period_start as Date | null) ?? null;
    const openingSum =
      start === null ? null : r.opening_sum_full !== null ? toBigInt(r.opening_sum_full) : cp.openingLedgerSum! + toBigInt(r.opening_delta);
    return {
      accountId,
      fullCheckedAt: cp.fullCheckedAt,
      reconciliation: reconciliationOf(r, ledger, openingSum, Number(r.refund_credit_mismatches)),
      snapshot: {
        ledgerSeq: r.max_seq === null ? cp.ledgerSeq : toBigInt(r.max_seq),
        balanceUpdatedAt: r.updated_at as Date,
        openingPeriodStart: start,
      },
    };
  });
}

/**
 * Moves each account's checkpoint to a snapshot found consistent, in one statement (never
 * backwards: a concurrent pass that checked a later snapshot keeps its row). `fullCheckedAt` is
 * when the account's ledger was last checked in full; `now` the pass's instant (checked_at).
 * Account ids must be distinct (one upsert cannot change a row twice).
 */
async function saveCheckpoints(
  db: pg.Pool | pg.PoolClient,
  checked: readonly CheckedAccount[],
  now: Date,
): Promise<void> {
  if (checked.length === 0) return;
  await db.query(
    `INSERT INTO reconcile_checkpoints AS c (account_id, ledger_seq, ledger_sum_micro_credits, opening_period_start, opening_ledger_sum_micro_credits,
                                              balance_updated_at, full_checked_at, checked_at)
     SELECT x.*, $8::timestamptz FROM unnest($1::uuid[], $2::bigint[], $3::bigint[], $4::timestamptz[], $5::bigint[], $6::timestamptz[], $7::timestamptz[]) AS x
     ON CONFLICT (account_id) DO UPDATE SET ledger_seq = EXCLUDED.ledger_seq, ledger_sum_micro_credits = EXCLUDED.ledger_sum_micro_credits,
            opening_period_start = EXCLUDED.opening_period_start, opening_ledger_sum_micro_credits = EXCLUDED.opening_ledger_sum_micro_credits,
            balance_updated_at = EXCLUDED.balance_updated_at, full_checked_at = EXCLUDED.full_checked_at, checked_at = EXCLUDED.checked_at
      WHERE c.ledger_seq <= EXCLUDED.ledger_seq`,
    [
      checked.map((x) => x.accountId),
      checked.map((x) => x.snapshot.ledgerSeq.toString()),
      checked.map((x) => x.reconciliation.ledgerSumMicroCredits.toString()),
      checked.map((x) => x.snapshot.openingPeriodStart),
      checked.map((x) => (x.reconciliation.openingLedgerSumMicroCredits === null ? null : x.reconciliation.openingLedgerSumMicroCredits.toString())),
      checked.map((x) => x.snapshot.balanceUpdatedAt),
      checked.map((x) => x.fullCheckedAt),
      now,
    ],
  );
}
