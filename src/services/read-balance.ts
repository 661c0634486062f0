/**
 * Reads an account's Balance as the contract defines it, at the account's "now" (its test
 * clock or the wall clock). Batches past expiresAt and holds past expiresAt are already left
 * out here even before the expiry jobs have recorded them.
 */
import type pg from 'pg';
import { toBigInt } from '../db/pg.js';
import { LedgerError } from '../ledger/errors.js';
import { balanceFromSnapshot, snapshotFromRow, type BalanceSnapshot } from './balance-figures.js';
import { subjectUsageSql } from './spending-budgets.js';
import { accountNowSql } from './account-clock.js';

/** The contract's Balance, amounts in micro-credits. */
export interface BalanceView {
  accountId: string;
  availableMicroCredits: bigint;
  totalMicroCredits: bigint;
  reservedMicroCredits: bigint;
  freeMicroCredits: bigint;
  paidMicroCredits: bigint;
  debtMicroCredits: bigint;
  periodStart: Date;
  periodEnd: Date;
  periodMicroCredits: bigint;
  percentRemaining: number;
  planName: string | null;
  depleted: boolean;
  nextExpiry: { amountMicroCredits: bigint; at: Date } | null;
  version: bigint;
  updatedAt: Date;
  /** The instant the balance was computed for. */
  asOf: Date;
}

/**
 * Computes the balance of one account (one statement; see {@link readBalanceSnapshot}).
 * @throws LedgerError NOT_FOUND when the account does not exist.
 */
export async function readBalance(db: pg.Pool | pg.PoolClient, accountId: string, wallNow: Date): Promise<BalanceView> {
  return balanceFromSnapshot(await readBalanceSnapshot(db, accountId, wallNow));
}

/**
 * The account's current BalanceSnapshot (the JSON shape the balanceChanged subscription sends).
 *
 * ONE statement, so one snapshot of the database: the version, the debt and the batch figures
 * belong to the same committed state. (It was two statements, the head then `balance_figures`,
 * each with its own snapshot and, from a pool, its own connection: a change committing between
 * them, e.g. a grant repaying debt, gave the version and debt from before it and the batches from
 * after it: a balance the account never had, labelled with the older version, which a live
 * subscription then sent as that version.) The billing period is `billing_period`, as in the
 * outbox snapshots balances_changed writes (src/ledger/billing-period.ts monthlyPeriodAt is the
 * same rule). Its now is the account's test clock, else `wallNow` but not before the account's
 * last committed change (as AccountTx's now): on a clock running behind the server that wrote the
 * change, a grant dated after `wallNow` would be in `available` but not in periodCredits, unlike
 * the snapshot of the same version.
 * @throws LedgerError NOT_FOUND when the account does not exist.
 */
export async function readBalanceSnapshot(db: pg.Pool | pg.PoolClient, accountId: string, wallNow: Date): Promise<BalanceSnapshot> {
  return snapshotOfRow(accountId, await queryBalanceRow(db, accountId, wallNow, null));
}

/** An account's now and the billing period that contains it, as {@link readAccountClock} reads them. */
export interface AccountClock {
  now: Date;
  periodStart: Date;
  periodEnd: Date;
}

/**
 * readAccountClock's statement. Named (prepared once per connection, its generic plan kept): it
 * runs once per GraphQL list of batches or holds and once per hold answered (`status`), and planning
 * it, with billing_period's SQL inlined, took ~2.4 ms of PostgreSQL's time per call against
 * ~0.7 ms of execution (pg_stat_statements, bench/perf.ts jobs @64, 2026-12-07: the settle's
 * `status`, once per job, was the job path's costliest statement).
 */
const ACCOUNT_CLOCK_SQL = `SELECT n.now, per.period_start, per.period_end
       FROM accounts a JOIN balances b ON b.account_id = a.id
       CROSS JOIN LATERAL (SELECT ${accountNowSql('a', 'b', '$2')} AS now) n
       CROSS JOIN LATERAL billing_period(a.billing_anchor_at, n.now) per
      WHERE a.id = $1`;

/**
 * The account's now and its current billing period [periodStart, periodEnd), by the rule Balance
 * and the statement read them with (queryBalanceRow, account-statement.ts): its test clock in
 * test mode, else `wallNow` but never before its last committed change (balances.updated_at;
 * account-clock.ts accountNowSql, the one rule of every time-dependent read), and the period of `billing_period` (the SQL twin of ledger/billing-period.ts monthlyPeriodAt).
 * For reports whose default range is "now" (usageSummary, usageHistory): with this server's
 * clock alone, a server running behind the one that charged an account just after a period or
 * month boundary named the period before it, leaving that charge out of the report while
 * Balance.periodStart already named the new period (README "Which instant an event belongs to").
 * One statement, no lock.
 * @throws LedgerError NOT_FOUND when the account does not exist.
 */
export async function readAccountClock(db: pg.Pool | pg.PoolClient, accountId: string, wallNow: Date): Promise<AccountClock> {
  const { rows } = await db.query({ name: 'cp-account-clock', text: ACCOUNT_CLOCK_SQL, values: [accountId, wallNow] });
  const r = rows[0] as Record<string, unknown> | undefined;
  if (!r) throw new LedgerError('NOT_FOUND', 'account not found');
  return { now: r.now as Date, periodStart: r.period_start as Date, periodEnd: r.period_end as Date };
}

/** What a hold (a reservations row) has left to give, as read with a balance. */
export interface HoldRead {
  amountMicroCredits: bigint;
  consumedMicroCredits: bigint;
  status: string;
  expiresAt: Date;
}

/**
 * The account's balance and the hold `holdId` of that account (null when no row of the account
 * has that id: missing, or another account's) read in ONE statement, so both belong to the same
 * committed state (quote-usage.ts: a hold read in a statement of its own, from the pool, could
 * be seen before a settle or release and the balance after it, counting the released credit
 * twice). Takes no lock. The balance is as {@link readBalance}'s; `holdId` must be a uuid.
 * @throws LedgerError NOT_FOUND when the account does not exist.
 */
export async function readBalanceWithHold(db: pg.Pool | pg.PoolClient, accountId: string, holdId: string, wallNow: Date): Promise<{ balance: BalanceView; hold: HoldRead | null }> {
  const r = await queryBalanceRow(db, accountId, wallNow, holdId);
  const balance = balanceFromSnapshot(snapshotOfRow(accountId, r));
  const hold: HoldRead | null =
    r.hold_status === null || r.hold_status === undefined
      ? null
      : {
          amountMicroCredits: toBigInt(r.hold_amount_micro_credits),
          consumedMicroCredits: toBigInt(r.hold_consumed_micro_credits),
          status: r.hold_status as string,
          expiresAt: r.hold_expires_at as Date,
        };
  return { balance, hold };
}

/**
 * The one statement behind {@link readBalanceSnapshot} (see there) and, with `holdId`, also the
 * columns `hold_*` of that hold of the account (NULL when it has none by that id).
 * @throws LedgerError NOT_FOUND when the account does not exist.
 */
async function queryBalanceRow(db: pg.Pool | pg.PoolClient, accountId: string, wallNow: Date, holdId: string | null): Promise<Record<string, unknown>> {
  const withHold = holdId !== null;
  const { rows } = await db.query(
    `SELECT n.now, per.period_start, per.period_end, b.debt_micro_credits, b.version, b.updated_at, p.name AS plan_name, f.*${
      withHold
        ? `,
            h.amount_micro_credits AS hold_amount_micro_credits, h.consumed_micro_credits AS hold_consumed_micro_credits,
            h.status AS hold_status, h.expires_at AS hold_expires_at`
        : ''
    }
       FROM accounts a JOIN balances b ON b.account_id = a.id
       LEFT JOIN plan_subscriptions s ON s.account_id = a.id AND s.active
       LEFT JOIN plans p ON p.id = s.plan_id${withHold ? `
       LEFT JOIN reservations h ON h.id = $3 AND h.account_id = a.id` : ''}
       CROSS JOIN LATERAL (SELECT ${accountNowSql('a', 'b', '$2')} AS now) n
       CROSS JOIN LATERAL billing_period(a.billing_anchor_at, n.now) per
       CROSS JOIN LATERAL balance_figures($1, n.now, per.period_start) f
      WHERE a.id = $1`,
    withHold ? [accountId, wallNow, holdId] : [accountId, wallNow],
  );
  const r = rows[0] as Record<string, unknown> | undefined;
  if (!r) throw new LedgerError('NOT_FOUND', 'account not found');
  return r;
}

/** The BalanceSnapshot of a row of {@link queryBalanceRow}. */
function snapshotOfRow(accountId: string, r: Record<string, unknown>): BalanceSnapshot {
  return snapshotFromRow(
    {
      accountId,
      version: toBigInt(r.version),
      updatedAt: r.updated_at as Date,
      asOf: r.now as Date,
      periodStart: r.period_start as Date,
      periodEnd: r.period_end as Date,
      debt: toBigInt(r.debt_micro_credits),
      planName: (r.plan_name as string | null) ?? null,
    },
    r,
  );
}

/** Ledger reconciliation of one account (the invariant the demo and tests check). */
export interface Reconciliation {
  consistent: boolean;
  totalMicroCredits: bigint;
  batchRemainingMicroCredits: bigint;
  debtMicroCredits: bigint;
  ledgerSumMicroCredits: bigint;
  /**
   * The stored total at the start of the period the balance row keeps it for
   * (`opening_period_start`; null before the account's first change) and the same total summed
   * from the ledger (null likewise): they must be equal (AccountTx.finishMany keeps it).
   */
  openingMicroCredits: bigint | null;
  openingLedgerSumMicroCredits: bigint | null;
  /**
   * Kept budget spending rows (`budget_spend`, migration budget_spend) of the account that differ
   * from the SUM that defines them (the subject's non-refunded usage cost recorded in the row's
   * billing period): must be 0.
   */
  budgetSpendMismatches: number;
  /**
   * Usage events of the account whose kept refund credit (`refund_credits`, what the period's
   * credit counts of a refund: migration period_credits_refund_rows) differs from what their
   * REFUND entries gave back into batches: must be 0.
   */
  refundCreditMismatches: number;
}

/**
 * The SQL of a Reconciliation's budget spending check of the account `account` (an SQL expression
 * of its id: `$1`, or a column of the reconcile pass's set of accounts): the number of kept budget
 * spending rows that differ from the SUM that defines them. Bounded: rows of ended periods are
 * pruned (BUDGET_SPEND_RETENTION_DAYS), so the full and the incremental checks
 * (reconcile-ledger.ts) both run it as is.
 */
export function budgetSpendMismatchesSql(account = '$1'): string {
  return `(SELECT count(*) FROM budget_spend k JOIN accounts a ON a.id = k.account_id
                    CROSS JOIN LATERAL billing_period(a.billing_anchor_at, k.period_start) p
              WHERE k.account_id = ${account}
                AND k.spent_micro_credits <> ${subjectUsageSql('k', 'p.period_start', 'p.period_end')})`;
}

/**
 * The SQL of the refund-credit check of the account `account` (an SQL expression of its id, `$1`
 * by default): the number of usage events whose REFUND entries into batches differ from their
 * kept refund credit (`refund_credits`). With `since` (an SQL expression of an instant), only the
 * REFUND entries and refund_credits rows dated from it on (the reconcile worker's incremental
 * pass, reconcile-ledger.ts); without, every REFUND entry of the account (the whole-history check).
 */
export function refundCreditMismatchesSql(since?: string, account = '$1'): string {
  return `(SELECT count(*) FROM
               (SELECT l.usage_event_id AS id, SUM(l.amount_micro_credits) AS amount FROM ledger_entries l
                 WHERE l.account_id = ${account}${since ? ` AND l.created_at >= ${since}` : ''} AND l.type = 'REFUND' AND l.batch_id IS NOT NULL GROUP BY 1) e
               FULL JOIN (SELECT c.usage_event_id AS id, SUM(c.amount_micro_credits) AS amount FROM refund_credits c
                 WHERE c.account_id = ${account}${since ? ` AND c.refunded_at >= ${since}` : ''} GROUP BY 1) c USING (id)
              WHERE e.amount IS DISTINCT FROM c.amount)`;
}

/**
 * Where in the ledger a full check ran (one snapshot with the sums): the highest ledger seq of
 * the account (0 without entries), the balance row's updated_at and opening_period_start. The
 * reconcile worker's checkpoint (reconcile-ledger.ts) starts from it.
 */
export interface ReconcileSnapshot {
  ledgerSeq: bigint;
  balanceUpdatedAt: Date;
  openingPeriodStart: Date | null;
}

/**
 * Checks the ledger invariant: sum(remaining of ACTIVE batches) - debt = stored total =
 * sum of the total-changing ledger entries (all but RESERVE/RELEASE); and that the balance row's
 * stored period opening equals the sum of those entries dated before its period start plus the
 * EXPIRE entries dated at it (`ledger_total_at`, the definition balance_figures falls back to);
 * that every kept budget spending row equals the SUM of its subject's usage in its period; and
 * that each refunded event's kept refund credit (`refund_credits`) equals its REFUND entries into
 * batches. Reads the account's whole ledger (cost grows with its history); the reconcile worker
 * runs it per account every RECONCILE_FULL_EVERY_HOURS and checks incrementally in between.
 * @throws LedgerError NOT_FOUND.
 */
export async function reconcileAccount(db: pg.Pool | pg.PoolClient, accountId: string): Promise<Reconciliation> {
  return (await reconcileAccountFull(db, accountId)).reconciliation;
}

/**
 * The select list of the full check of the account `account` (an SQL expression of its id) over
 * its balance row `b`: the balance's figures, the highest ledger seq, the ACTIVE batches, the
 * whole ledger's sum, the opening the ledger defines and the two mismatch counts.
 */
function fullCheckColumnsSql(account: string): string {
  return `b.total_micro_credits AS total, b.debt_micro_credits AS debt, b.updated_at, b.opening_period_start,
            (SELECT COALESCE(MAX(seq), 0) FROM ledger_entries WHERE account_id = ${account}) AS ledger_seq,
            (SELECT COALESCE(SUM(remaining_micro_credits), 0) FROM credit_batches WHERE account_id = ${account} AND status = 'ACTIVE') AS batches,
            (SELECT COALESCE(SUM(amount_micro_credits), 0) FROM ledger_entries WHERE account_id = ${account} AND type NOT IN ('RESERVE', 'RELEASE')) AS ledger,
            b.opening_total_micro_credits AS opening,
            CASE WHEN b.opening_period_start IS NOT NULL THEN COALESCE(ledger_total_at(${account}, b.opening_period_start), 0) END AS opening_sum,
            ${budgetSpendMismatchesSql(account)} AS budget_spend_mismatches,
            ${refundCreditMismatchesSql(undefined, account)} AS refund_credit_mismatches`;
}

/**
 * {@link reconcileAccount} and the snapshot it read (for the reconcile worker's checkpoint), in
 * one statement ({@link reconcileAccountsFull} of one account).
 * @throws LedgerError NOT_FOUND.
 */
export async function reconcileAccountFull(
  db: pg.Pool | pg.PoolClient,
  accountId: string,
): Promise<{ reconciliation: Reconciliation; snapshot: ReconcileSnapshot }> {
  return (await reconcileAccountsFull(db, [accountId]))[0]!;
}

/**
 * {@link reconcileAccountFull} of several accounts in one statement (one snapshot for them all,
 * one plan; each account's rows read by correlated subqueries on its id, i.e. through its own index
 * ranges): the reconcile worker's pass (reconcile-ledger.ts), which checked one account per
 * statement and transaction before at ~3-5.5 ms each on short ledgers, mostly planning and commits.
 * @param accountIds distinct account ids.
 * @returns one result per id, in the order given.
 * @throws LedgerError NOT_FOUND when an account has no balance row.
 */
export async function reconcileAccountsFull(
  db: pg.Pool | pg.PoolClient,
  accountIds: readonly string[],
): Promise<{ accountId: string; reconciliation: Reconciliation; snapshot: ReconcileSnapshot }[]> {
  const { rows } = await db.query(
    `SELECT x.account_id, ${fullCheckColumnsSql('x.account_id')}
       FROM unnest($1::uuid[]) WITH ORDINALITY AS x(account_id, ord) JOIN balances b ON b.account_id = x.account_id
      ORDER BY x.ord`,
    [accountIds],
  );
  const byId = new Map(rows.map((r) => [r.account_id as string, r]));
  return accountIds.map((accountId) => {
    const r = byId.get(accountId);
    if (!r) throw new LedgerError('NOT_FOUND', 'account not found');
    return {
      accountId,
      reconciliation: reconciliationOf(r, toBigInt(r.ledger), r.opening_sum === null ? null : toBigInt(r.opening_sum), Number(r.refund_credit_mismatches)),
      snapshot: { ledgerSeq: toBigInt(r.ledger_seq), balanceUpdatedAt: r.updated_at as Date, openingPeriodStart: (r.opening_period_start as Date | null) ?? null },
    };
  });
}

/**
 * The Reconciliation of a row with total, debt, batches, opening and budget_spend_mismatches
 * (micro-credits), given the ledger-side sums (however computed: in full, or from a checkpoint).
 */
export function reconciliationOf(r: Record<string, unknown>, ledger: bigint, openingSum: bigint | null, refundCreditMismatches: number): Reconciliation {
  const total = toBigInt(r.total);
  const debt = toBigInt(r.debt);
  const batches = toBigInt(r.batches);
  const opening = r.opening === null ? null : toBigInt(r.opening);
  const budgetSpendMismatches = Number(r.budget_spend_mismatches);
  return {
    consistent: batches - debt === total && ledger === total && opening === openingSum && budgetSpendMismatches === 0 && refundCreditMismatches === 0,
    budgetSpendMismatches,
    refundCreditMismatches,
    openingMicroCredits: opening,
    openingLedgerSumMicroCredits: openingSum,
    totalMicroCredits: total,
    batchRemainingMicroCredits: batches,
    debtMicroCredits: debt,
    ledgerSumMicroCredits: ledger,
  };
}
