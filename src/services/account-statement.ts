/**
 * Account statements: what an account's credit did in one billing period, reconciled
 * (Account.statement; README "Statements").
 *
 * A statement names the period, the account total at its start (openingTotal) and at its end
 * (closingTotal; for the current period: now, `final` false), and the movements in between by
 * ledger entry type (GRANT split by the grant's source, CONSUME, EXPIRE, REFUND, VOID,
 * DEBT_REPAY, ADJUST), signed as in the ledger, so that
 *
 *     openingTotal + granted + consumed + expired + refunded + voided + debtRepaid + adjusted = closingTotal
 *
 * holds exactly (micro-credits, no rounding anywhere).
 *
 * Which entries belong to a period [start, end) is the rule the period opening already uses
 * (migration period_opening_total, balance_figures): an entry belongs to the period its
 * `created_at` falls in, except that an EXPIRE dated exactly at a period boundary belongs to the
 * period that ENDS there (credit that expires at the period end is part of that period; a RESET
 * plan's credit and a ROLLOVER trim are dated at the boundary). So: EXPIRE entries with
 * start < created_at <= end, every other total-changing entry with start <= created_at < end.
 * RESERVE / RELEASE entries change only the reserved amount and are not movements.
 *
 * Credit past its batch's expiresAt whose EXPIRE entry has not been written yet (the expiry job
 * has not run) is counted as expired at its expiresAt already (the amount the EXPIRE will carry:
 * such a batch's remaining no longer changes), as balance_figures and Balance.total do, so the
 * closing total of the current period is Balance.total and a statement does not change when the
 * expiry job runs late.
 */
import type pg from 'pg';
import { periodOfGridAt } from '../ledger/billing-period.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { usageSummary, type UsageSummaryRow } from './usage-summary.js';
import { accountNowSql } from './account-clock.js';

/** Grant sources (database enum GrantSource), in the order a statement lists them. */
export const GRANT_SOURCES = ['WELCOME_BONUS', 'PROMO_CODE', 'REFERRAL', 'PURCHASE', 'SUBSCRIPTION', 'AUTO_TOP_UP', 'ADJUSTMENT'] as const;

/** One grant source. */
export type GrantSource = (typeof GRANT_SOURCES)[number];

/** An account statement (amounts in micro-credits, signed as the ledger signs them). */
export interface AccountStatement {
  accountId: string;
  /** The period [periodStart, periodEnd). */
  periodStart: Date;
  periodEnd: Date;
  /** True when the period has ended by the account's now. */
  final: boolean;
  /** The instant closingTotal is for: periodEnd when final, else the account's now. */
  asOf: Date;
  openingTotalMicroCredits: bigint;
  closingTotalMicroCredits: bigint;
  /** GRANT entries (>= 0), total and per source (every source, 0 when none). */
  grantedMicroCredits: bigint;
  grantedBySource: { source: GrantSource; amountMicroCredits: bigint }[];
  /** CONSUME entries (<= 0). */
  consumedMicroCredits: bigint;
  /** EXPIRE entries and due expiries not recorded yet (<= 0). */
  expiredMicroCredits: bigint;
  /** REFUND entries (>= 0). */
  refundedMicroCredits: bigint;
  /** VOID entries (<= 0). */
  voidedMicroCredits: bigint;
  /** DEBT_REPAY entries (>= 0): the part of a grant that repaid debt. */
  debtRepaidMicroCredits: bigint;
  /** ADJUST entries (signed). */
  adjustedMicroCredits: bigint;
  /** Total-changing ledger entries assigned to the period (due expiries not recorded yet not counted). */
  entryCount: number;
}

/**
 * SQL of the sums of the account's total-changing ledger entries by (bucket, type, grant source),
 * in ONE pass over one index range of ledger_entries (account_id, created_at, seq); `$1` account,
 * `$2` period start, `$3` period end, `$4` the account's now. bucket: -1 before the period, 0 in
 * it, 1 after it (the module comment's rule). Also, in the same statement (one snapshot): the
 * balance row's total (the ledger sum, by the ledger invariant the database checks at every
 * COMMIT) and the remaining credit of ACTIVE batches past expiresAt by now (due expiries not
 * recorded yet) by where their expiresAt falls (-1: at or before the start, 0: in (start, end],
 * 1: later). Those batches are matched with `COALESCE(expires_at, 'infinity') <= $4` (the same
 * rows: a batch without an expiry never expires), which only the account's (account_id, status)
 * index can serve: `expires_at <= $4` alone also matches the sweep's partial index of every
 * account's expiring batches (credit_batches_active_expiry), which the generic plan took while
 * the statistics counted few of them, and then read every account's batches due by the account's
 * now (453 rows for one statement, after 50,000 other accounts' batches came:
 * test/integration/neighbour-growth-audit.test.ts; expire-due.ts applyExpiries has the same
 * guard).
 *
 * `range` chooses the entries read: 'after' those dated from the period start on (the opening is
 * then the total less what is dated after the start), 'before' those dated up to the period end
 * (the opening is the sum before the start). Both give the same figures; the caller picks the
 * smaller range.
 */
function statementSql(range: 'after' | 'before'): string {
  return `WITH moves AS (
      SELECT CASE WHEN (l.type = 'EXPIRE' AND l.created_at <= $2) OR (l.type <> 'EXPIRE' AND l.created_at < $2) THEN -1
                  WHEN (l.type = 'EXPIRE' AND l.created_at <= $3) OR (l.type <> 'EXPIRE' AND l.created_at < $3) THEN 0
                  ELSE 1 END AS bucket,
             l.type::text AS type, b.source::text AS source,
             SUM(l.amount_micro_credits)::text AS amount, COUNT(*)::int AS entries
        FROM ledger_entries l
        LEFT JOIN credit_batches b ON l.type = 'GRANT' AND b.id = l.batch_id
       WHERE l.account_id = $1 AND l.type NOT IN ('RESERVE', 'RELEASE')
         AND ${range === 'after' ? 'l.created_at >= $2' : 'l.created_at <= $3'}
       GROUP BY 1, 2, 3
    ), due AS (
      SELECT CASE WHEN expires_at <= $2 THEN -1 WHEN expires_at <= $3 THEN 0 ELSE 1 END AS bucket,
             SUM(remaining_micro_credits)::text AS amount
        FROM credit_batches WHERE account_id = $1 AND status = 'ACTIVE' AND COALESCE(expires_at, 'infinity') <= $4
       GROUP BY 1
    )
    SELECT bal.total_micro_credits::text AS total,
           (SELECT COALESCE(json_agg(moves), '[]') FROM moves) AS moves,
           (SELECT COALESCE(json_agg(due), '[]') FROM due) AS due
      FROM balances bal WHERE bal.account_id = $1`;
}

/**
 * The statement of the billing period of account `accountId` that contains `periodStart`
 * (default: the account's current period), at the account's now (its test clock, else `wallNow`
 * but not before its last committed change, as Balance). Periods are those of the account's
 * current billing anchor (calendar months from it; before it, counted backwards from it: periods
 * the account had under an earlier anchor, before a subscribeToPlan moved it, are not kept).
 * Usage is read separately (see {@link statementUsage}).
 *
 * Cost: one index range of the account's ledger entries (account_id, created_at): from the
 * period start to now, or from the account's first entry to the period end, whichever spans less
 * time; plus the account's ACTIVE batches. `opts.range` forces one (tests: both give the same).
 * @throws LedgerError NOT_FOUND (no such account); BAD_USER_INPUT (`periodStart` in a billing
 *   period after the current one, or before the period of the account's first instant: its
 *   creation, or its billing anchor when earlier).
 */
export async function readAccountStatement(
  db: pg.Pool | pg.PoolClient,
  accountId: string,
  wallNow: Date,
  periodStart: Date | null,
  opts: { range?: 'after' | 'before' } = {},
): Promise<AccountStatement> {
  const head = await db.query(
    `SELECT a.billing_anchor_at AS anchor, a.created_at,
            ${accountNowSql('a', 'b', '$2')} AS now
       FROM accounts a JOIN balances b ON b.account_id = a.id WHERE a.id = $1`,
    [accountId, wallNow],
  );
  const h = head.rows[0];
  if (!h) throw new LedgerError('NOT_FOUND', 'account not found');
  const anchor = h.anchor as Date;
  const now = h.now as Date;
  const current = periodOfGridAt(anchor, now);
  // The account's first instant: its creation, or its anchor when earlier (a test clock started in the past).
  const firstAt = Math.min((h.created_at as Date).getTime(), anchor.getTime());
  const first = periodOfGridAt(anchor, new Date(firstAt));
  if (periodStart && periodStart.getTime() < first.start.getTime()) {
    throw badInput('periodStart', `is before the account's first billing period (which starts ${first.start.toISOString()})`);
  }
  const period = periodStart ? periodOfGridAt(anchor, periodStart) : current;
  if (period.start.getTime() > current.start.getTime()) {
    throw badInput('periodStart', `is in a billing period after the current one (which ends ${current.end.toISOString()})`);
  }
  const final = period.end.getTime() <= now.getTime();
  const asOf = final ? period.end : now;
  // The smaller range by time: entries since the period start, or entries since the first instant up to its end.
  const range = opts.range ?? (now.getTime() - period.start.getTime() <= period.end.getTime() - firstAt ? 'after' : 'before');
  const { rows } = await db.query(statementSql(range), [accountId, period.start, period.end, now]);
  const r = rows[0]!;
  const total = BigInt(r.total as string);
  const sum = (list: { bucket: number; amount: string }[], bucket: number) =>
    list.filter((x) => x.bucket === bucket).reduce((acc, x) => acc + BigInt(x.amount), 0n);
  const moves = r.moves as { bucket: number; type: string; source: string | null; amount: string; entries: number }[];
  const due = r.due as { bucket: number; amount: string }[];
  const [before, during, after] = [sum(moves, -1), sum(moves, 0), sum(moves, 1)];
  // Opening and closing from the range read (the ledger sum before the start / up to the end, or
  // the total less what is dated after), less due expiries not recorded yet dated by then.
  const opening = (range === 'after' ? total - during - after : before) - sum(due, -1);
  const closing = (range === 'after' ? total - after : before + during) - sum(due, -1) - (final ? sum(due, 0) : sum(due, 0) + sum(due, 1));

  const byType = new Map<string, bigint>();
  const bySource = new Map<string, bigint>(GRANT_SOURCES.map((s) => [s, 0n]));
  let entryCount = 0;
  for (const m of moves) {
    if (m.bucket !== 0) continue;
    const amount = BigInt(m.amount);
    byType.set(m.type, (byType.get(m.type) ?? 0n) + amount);
    if (m.type === 'GRANT') bySource.set(m.source!, (bySource.get(m.source!) ?? 0n) + amount);
    entryCount += m.entries;
  }
  const of = (type: string) => byType.get(type) ?? 0n;
  return {
    accountId,
    periodStart: period.start,
    periodEnd: period.end,
    final,
    asOf,
    openingTotalMicroCredits: opening,
    closingTotalMicroCredits: closing,
    grantedMicroCredits: of('GRANT'),
    grantedBySource: GRANT_SOURCES.map((source) => ({ source, amountMicroCredits: bySource.get(source) ?? 0n })),
    consumedMicroCredits: of('CONSUME'),
    expiredMicroCredits: of('EXPIRE') - sum(due, 0),
    refundedMicroCredits: of('REFUND'),
    voidedMicroCredits: of('VOID'),
    debtRepaidMicroCredits: of('DEBT_REPAY'),
    adjustedMicroCredits: of('ADJUST'),
    entryCount,
  };
}

/** Sum of a statement's movements (micro-credits): openingTotal plus it is closingTotal. */
export function statementMovementsMicroCredits(s: AccountStatement): bigint {
  return s.grantedMicroCredits + s.consumedMicroCredits + s.expiredMicroCredits + s.refundedMicroCredits + s.voidedMicroCredits + s.debtRepaidMicroCredits + s.adjustedMicroCredits;
}

/**
 * Usage of the statement's period by category: events that occurred (occurredAt) in
 * [periodStart, periodEnd), refunded ones left out (usageSummary over usage_rollups_hourly), the
 * biggest first. Not a movement: it groups by occurredAt (consumed counts the CONSUME entry, dated
 * when the event was recorded) and leaves out an event refunded later, whenever the refund is (its
 * CONSUME stays in `consumed` of its own period and its credit shows as `refunded` in the period
 * of the refund).
 */
export async function statementUsage(db: pg.Pool, s: Pick<AccountStatement, 'accountId' | 'periodStart' | 'periodEnd'>): Promise<UsageSummaryRow[]> {
  return usageSummary(db, s.accountId, { from: s.periodStart, to: s.periodEnd }, ['CATEGORY']);
}
