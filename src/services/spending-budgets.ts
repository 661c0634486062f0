/**
 * Spending budgets inside a pool (issue #5): a per-billing-period limit for one agent (or one
 * end user) of an account. What counts against a budget in the current billing period: the
 * cost of the subject's non-refunded usage events recorded in the period, plus the credit held
 * by the subject's ACTIVE, unexpired reservations. A charge (without reservation) or a hold
 * that would take the subject beyond its limit is refused with BUDGET_EXCEEDED and records
 * nothing; usage captured against a hold is not re-checked (the hold was the authorization;
 * overage beyond it is accepted, as for the balance) and is the hold's agent's and user's (it is
 * recorded with them when it names none, refused when it names others; a subject the hold has
 * none of is checked like a charge without a hold: record-usage.ts chargeSubjects), so what a
 * settle frees from the hold counts as the same subject's usage. Budgets re-arm each billing period.
 * The check runs under the account's balance row lock, so concurrent charges cannot overrun it.
 */
import { singleLine } from '../ledger/text-input.js';
import type pg from 'pg';
import { toBigInt, withTransaction, type Tx } from '../db/pg.js';
import { actorOf, recordAuditEvent } from '../audit/audit-log.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { formatCredits } from '../ledger/credits.js';
import { AccountTx } from './account-tx.js';
import { accountNowSql } from './account-clock.js';
import type { ServiceContext } from './context.js';

/** Whose spending a budget limits. */
export type BudgetSubjectKind = 'AGENT' | 'USER';

/** A budget with what its subject spent (and holds) in the current billing period. */
export interface BudgetView {
  subjectKind: BudgetSubjectKind;
  subjectId: string;
  limitMicroCredits: bigint;
  /** Usage cost in the period plus credit held by the subject's active reservations. */
  spentMicroCredits: bigint;
}

/**
 * SQL: the usage cost of budget row `b`'s subject (its agent or user, by `b.subject_kind` and
 * `b.subject_id`, of account `b.account_id`) recorded in [`fromSql`, `toSql`), refunds excluded:
 * the definition of a budget's spending (and of a `budget_spend` row). One subquery per kind, so
 * each is a range of its (account_id, agent_id | user_id, recorded_at) index.
 */
export function subjectUsageSql(b: string, fromSql: string, toSql: string): string {
  // Each SUM reads a subquery ordered by recorded_at (not pulled up: it sorts), so only the
  // (account_id, agent_id | user_id, recorded_at) index gives its rows without a sort. Without
  // it, when the statistics put one row under the subject (a user or agent rare in the sample,
  // i.e. most of them in a big table), the (account_id, user_id, seq) index of the usage pages
  // cost as much, won by a hair, and read the subject's whole history, the period's range only a
  // filter: Account.userBudgets read 400 rows of usage_events instead of 0 after an ANALYZE
  // (test/api/neighbour-growth-pages-audit.test.ts, "pool: Account.userBudgets (listBudgets
  // USER): analyzed statistics").
  return `CASE WHEN ${b}.subject_kind = 'AGENT'
              THEN (SELECT COALESCE(SUM(u.cost_micro_credits), 0) FROM (SELECT e.cost_micro_credits FROM usage_events e
                     WHERE e.account_id = ${b}.account_id AND e.agent_id = ${b}.subject_id AND e.refunded_at IS NULL
                       AND e.recorded_at >= ${fromSql} AND e.recorded_at < ${toSql} ORDER BY e.recorded_at) u)
              ELSE (SELECT COALESCE(SUM(u.cost_micro_credits), 0) FROM (SELECT e.cost_micro_credits FROM usage_events e
                     WHERE e.account_id = ${b}.account_id AND e.user_id = ${b}.subject_id AND e.refunded_at IS NULL
                       AND e.recorded_at >= ${fromSql} AND e.recorded_at < ${toSql} ORDER BY e.recorded_at) u) END`;
}

/**
 * SQL: what the ACTIVE holds of budget row `b`'s subject hold at `nowSql` (default $4), except
 * hold `exceptSql` (default $5; a NULL uuid excepts none).
 */
function subjectHeldSql(b: string, nowSql = '$4', exceptSql = '$5'): string {
  return `(SELECT COALESCE(SUM(GREATEST(r.amount_micro_credits - r.consumed_micro_credits, 0)), 0) FROM reservations r
             WHERE r.account_id = ${b}.account_id AND r.status = 'ACTIVE' AND r.expires_at > ${nowSql}
               AND (${exceptSql}::uuid IS NULL OR r.id <> ${exceptSql}::uuid)
               AND CASE WHEN ${b}.subject_kind = 'AGENT' THEN r.agent_id = ${b}.subject_id ELSE r.user_id = ${b}.subject_id END)`;
}

/**
 * The budgets of account $1 with their spending in its current billing period, at its now (the
 * wall clock $2 by account-clock.ts's rule, as Balance: never before the account's last change):
 * the subject's kept usage cost of the period where a row exists (equal to the SUM in the same
 * snapshot: rows and usage are written by the same transactions), else the SUM itself, plus what
 * the subject's ACTIVE holds hold at that now. `where` narrows the budgets (conditions on `b`
 * with parameters from $3 on), `limit` (a parameter, or '' for all) caps them.
 * ONE statement: the now, the period and the spending belong to one snapshot. One row with a null
 * subject_kind when the account has no such budget; no row when the account does not exist.
 * Reads only: a missing budget_spend row is left for the next budget check to start.
 *
 * The filters are in the text only when given ({@link listBudgets}), never as `($n IS NULL OR
 * …)`: the ledger pool plans generically (db/pg.ts LEDGER_SESSION_OPTIONS), and a generic plan
 * cannot bound an index scan by a condition that may be switched off, so one subject's budget
 * (setSpendingBudget) read every budget of the account (10,000 budgets: 10,000 rows read for 1).
 */
function listBudgetsSql(where: string, limit: string): string {
  return `
  SELECT s.subject_kind, s.subject_id, s.limit_micro_credits, s.spent
    FROM (SELECT per.period_start, per.period_end, n.now
            FROM accounts a JOIN balances bal ON bal.account_id = a.id
            CROSS JOIN LATERAL (SELECT ${accountNowSql('a', 'bal', '$2')} AS now) n
            CROSS JOIN LATERAL billing_period(a.billing_anchor_at, n.now) per
           WHERE a.id = $1) clk
    LEFT JOIN LATERAL (
      SELECT b.subject_kind, b.subject_id, b.limit_micro_credits,
             COALESCE((SELECT k.spent_micro_credits FROM budget_spend k
                        WHERE k.account_id = b.account_id AND k.subject_kind = b.subject_kind AND k.subject_id = b.subject_id AND k.period_start = clk.period_start),
                      ${subjectUsageSql('b', 'clk.period_start', 'clk.period_end')}) + ${subjectHeldSql('b', 'clk.now', 'NULL')} AS spent
        FROM spending_budgets b
       WHERE b.account_id = $1${where}
       ORDER BY b.subject_kind, b.subject_id COLLATE "C"${limit}) s ON TRUE`;
}

/**
 * The budgets of the subjects $6 (agent) / $7 (user) of account $1 with their spending in the
 * period [$2, $3) at $4 (except hold $5), from the kept usage cost of the period (`budget_spend`,
 * migration budget_spend): one primary-key probe per budget. A subject without a row for the
 * period gets one here, from the SUM that defines it (subjectUsageSql), in the same statement; the
 * caller holds the account's lock, so no usage of the account is written meanwhile.
 */
const BUDGET_CHECK_SQL = `
  WITH subj AS (
    SELECT b.account_id, b.subject_kind, b.subject_id, b.limit_micro_credits FROM spending_budgets b
     WHERE b.account_id = $1 AND ((b.subject_kind = 'AGENT' AND b.subject_id = $6) OR (b.subject_kind = 'USER' AND b.subject_id = $7))
  ), kept AS (
    SELECT s.subject_kind, s.subject_id, k.spent_micro_credits FROM subj s
      JOIN budget_spend k ON k.account_id = s.account_id AND k.subject_kind = s.subject_kind AND k.subject_id = s.subject_id AND k.period_start = $2
  ), started AS (
    INSERT INTO budget_spend (account_id, subject_kind, subject_id, period_start, spent_micro_credits)
    SELECT s.account_id, s.subject_kind, s.subject_id, $2, ${subjectUsageSql('s', '$2', '$3')}
      FROM subj s
     WHERE NOT EXISTS (SELECT 1 FROM kept k WHERE k.subject_kind = s.subject_kind AND k.subject_id = s.subject_id)
    RETURNING subject_kind, subject_id, spent_micro_credits
  )
  SELECT s.subject_kind, s.subject_id, s.limit_micro_credits,
         COALESCE(k.spent_micro_credits, st.spent_micro_credits) + ${subjectHeldSql('s')} AS spent
    FROM subj s
    LEFT JOIN kept k ON k.subject_kind = s.subject_kind AND k.subject_id = s.subject_id
    LEFT JOIN started st ON st.subject_kind = s.subject_kind AND st.subject_id = s.subject_id`;

/**
 * Moves the kept usage cost (`budget_spend`) of `subjects` in the billing period starting at
 * `periodStart` by `deltaMicroCredits` (moveBudgetSpendMany with the agent's and the user's move).
 * Inside the account's locked transaction. With moveBudgetSpendMany (the charges record-usage.ts
 * chargeAccounts decides in memory) its callers are every writer of usage that changes a budgeted
 * subject's sum: applyCharge adds each event's cost (a capture's under its hold's subjects, as
 * stored on the event), and refundUsage takes a refunded event's cost off the period it was
 * recorded in.
 */
export async function moveBudgetSpend(
  atx: AccountTx,
  subjects: { agentId: string | null; userId: string | null },
  periodStart: Date,
  deltaMicroCredits: bigint,
): Promise<void> {
  if (deltaMicroCredits === 0n) return;
  const moves = [
    ...(subjects.agentId ? [{ subjectKind: 'AGENT' as const, subjectId: subjects.agentId }] : []),
    ...(subjects.userId ? [{ subjectKind: 'USER' as const, subjectId: subjects.userId }] : []),
  ].map((b) => ({ accountId: atx.accountId, ...b, periodStart, deltaMicroCredits }));
  await moveBudgetSpendMany(atx.tx, moves);
}

function toView(r: Record<string, unknown>): BudgetView {
  return {
    subjectKind: r.subject_kind as BudgetSubjectKind,
    subjectId: r.subject_id as string,
    limitMicroCredits: toBigInt(r.limit_micro_credits),
    spentMicroCredits: toBigInt(r.spent),
  };
}

/**
 * Refuses `amountMicroCredits` more for the agent and/or user when it would exceed a budget.
 * Call inside the account's locked transaction. No query when neither subject is given.
 * @throws LedgerError BUDGET_EXCEEDED with the subject, limit, spent and needed amounts.
 */
export async function assertWithinBudgets(
  atx: AccountTx,
  subjects: { agentId: string | null; userId: string | null },
  amountMicroCredits: bigint,
  exceptReservationId: string | null = null,
): Promise<void> {
  if ((!subjects.agentId && !subjects.userId) || amountMicroCredits <= 0n) return;
  const period = atx.period();
  const { rows } = await atx.tx.query({ name: 'cp-budget-check', text: BUDGET_CHECK_SQL, values: [atx.accountId, period.start, period.end, atx.now, exceptReservationId, subjects.agentId, subjects.userId] });
  for (const b of rows.map(toView)) {
    if (b.spentMicroCredits + amountMicroCredits > b.limitMicroCredits) throw budgetExceeded(b, amountMicroCredits);
  }
}

/**
 * The BUDGET_EXCEEDED refusal of `amountMicroCredits` more for budget `b` (whose spending, usage
 * plus held, is `b.spentMicroCredits`), with the subject, limit, spent and needed amounts as
 * Credits text in its details. Used by assertWithinBudgets and by the in-memory decisions of
 * record-usage.ts chargeAccounts, so both refuse alike.
 */
export function budgetExceeded(b: BudgetView, amountMicroCredits: bigint): LedgerError {
  const left = b.limitMicroCredits - b.spentMicroCredits;
  return new LedgerError(
    'BUDGET_EXCEEDED',
    `${b.subjectKind === 'AGENT' ? 'agent' : 'user'} ${b.subjectId} budget exceeded: needs ${formatCredits(amountMicroCredits)}, ${formatCredits(left > 0n ? left : 0n)} of ${formatCredits(b.limitMicroCredits)} left this period`,
    {
      subjectKind: b.subjectKind,
      subjectId: b.subjectId,
      limitCredits: formatCredits(b.limitMicroCredits),
      spentCredits: formatCredits(b.spentMicroCredits),
      neededCredits: formatCredits(amountMicroCredits),
    },
  );
}

/** One subject's kept usage cost to move: in the billing period starting at `periodStart`, by `deltaMicroCredits`. */
export interface BudgetSpendMove {
  accountId: string;
  subjectKind: BudgetSubjectKind;
  subjectId: string;
  periodStart: Date;
  deltaMicroCredits: bigint;
}

/**
 * Moves the kept usage cost (`budget_spend`) of many subjects, each in the billing period starting
 * at its `periodStart` by its `deltaMicroCredits`, in ONE statement (record-usage.ts chargeAccounts
 * gives the sum of each subject's events in the group). A move whose row does not exist changes
 * nothing: the next budget check starts the row from the SUM, which then includes the change (so
 * a row the prune-budget-spend job deleted, budget-spend-retention.ts, is never made up again
 * from the moves alone).
 * Inside the accounts' locked transaction.
 */
export async function moveBudgetSpendMany(tx: Tx, moves: readonly BudgetSpendMove[]): Promise<void> {
  if (moves.length === 0) return;
  await tx.query({
    name: 'cp-budget-spend-move-many',
    text: `UPDATE budget_spend k SET spent_micro_credits = k.spent_micro_credits + m.delta
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::bigint[]) AS m(account, kind, subject, period_start, delta)
            WHERE k.account_id = m.account AND k.subject_kind = m.kind AND k.subject_id = m.subject AND k.period_start = m.period_start`,
    values: [
      moves.map((m) => m.accountId),
      moves.map((m) => m.subjectKind),
      moves.map((m) => m.subjectId),
      moves.map((m) => m.periodStart),
      moves.map((m) => m.deltaMicroCredits.toString()),
    ],
  });
}

/**
 * Which budgets of a kind {@link listBudgets} reads: with `subjectId`, only that subject's; with
 * `after`, those whose subject id comes after it in byte order (`COLLATE "C"`, the order the list
 * is in), so a caller reads on from the last subject id it got; at most `limit` of them.
 */
export interface BudgetFilter {
  subjectId?: string;
  after?: string | null;
  limit?: number;
}

/**
 * Budgets of an account with their spending in its current billing period (usage cost plus what
 * active holds hold), ordered by subject kind, then subject id in byte order; all of them, or
 * those of `filter` (BudgetFilter: Account.budgets / userBudgets read pages of at most
 * ACCOUNT_BUDGETS_CAP, src/graphql/growth.ts; setSpendingBudget one subject's). The period and the
 * holds are the account's now's, as Balance reads it (account-clock.ts: its test clock, else
 * `wallNow` but never before its last committed change), so a server whose clock runs behind the
 * one that charged the account just after a period boundary reports the new period's spending,
 * as Balance.periodStart names it, not the old one's. One statement. Amounts in micro-credits.
 * @throws LedgerError NOT_FOUND when the account does not exist.
 */
export async function listBudgets(
  db: pg.Pool,
  accountId: string,
  wallNow: Date,
  kind?: BudgetSubjectKind,
  filter: BudgetFilter = {},
): Promise<BudgetView[]> {
  // Each filter given adds its condition and parameter (listBudgetsSql: none as `$n IS NULL OR`).
  const values: unknown[] = [accountId, wallNow];
  const param = (v: unknown) => `$${values.push(v)}`;
  let where = '';
  if (kind != null) where += ` AND b.subject_kind = ${param(kind)}`;
  if (filter.subjectId != null) where += ` AND b.subject_id = ${param(filter.subjectId)}`;
  if (filter.after != null) where += ` AND b.subject_id COLLATE "C" > ${param(filter.after)}`;
  const limit = filter.limit != null ? ` LIMIT ${param(filter.limit)}` : '';
  const { rows } = await db.query(listBudgetsSql(where, limit), values);
  if (!rows[0]) throw new LedgerError('NOT_FOUND', 'account not found');
  return rows.filter((r) => r.subject_kind !== null).map(toView);
}

/**
 * Sets (or, with a null limit, removes) the budget of one agent or user of an account.
 * @returns the budget with its current spending, or null when removed.
 * @throws LedgerError NOT_FOUND (account), BAD_USER_INPUT (empty subject id, negative limit).
 */
export async function setSpendingBudget(
  ctx: ServiceContext,
  cmd: { accountId: string; subjectKind: BudgetSubjectKind; subjectId: string; limitMicroCredits: bigint | null },
): Promise<BudgetView | null> {
  if (!cmd.subjectId || cmd.subjectId.length > 200) throw badInput(cmd.subjectKind === 'AGENT' ? 'agentId' : 'userId', 'must be 1 to 200 characters');
  singleLine(cmd.subjectId, cmd.subjectKind === 'AGENT' ? 'agentId' : 'userId');
  if (cmd.limitMicroCredits !== null && cmd.limitMicroCredits < 0n) throw badInput('limit', 'must not be negative');
  await withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, cmd.accountId, ctx.clock());
    // The subject's kept usage cost is only kept while it has a budget: start it again from the
    // SUM at the next check (migration budget_spend).
    await tx.query('DELETE FROM budget_spend WHERE account_id = $1 AND subject_kind = $2 AND subject_id = $3', [cmd.accountId, cmd.subjectKind, cmd.subjectId]);
    // A group-commit transaction carried over from before this one must not decide on the old
    // budgets (AccountTx.lockCarried's guard).
    await tx.query('UPDATE accounts SET budget_version = budget_version + 1 WHERE id = $1', [cmd.accountId]);
    // Every call changes the account (its budget version, the kept spending restarts): audited.
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'budget.set',
      accountId: cmd.accountId,
      subjectType: cmd.subjectKind === 'AGENT' ? 'agent' : 'user',
      subjectId: cmd.subjectId,
      details: { limit: cmd.limitMicroCredits === null ? null : formatCredits(cmd.limitMicroCredits) },
    });
    if (cmd.limitMicroCredits === null) {
      await tx.query('DELETE FROM spending_budgets WHERE account_id = $1 AND subject_kind = $2 AND subject_id = $3', [cmd.accountId, cmd.subjectKind, cmd.subjectId]);
      return;
    }
    await tx.query(
      `INSERT INTO spending_budgets (id, account_id, subject_kind, subject_id, limit_micro_credits, updated_at)
       VALUES (gen_random_uuid(), $1, $2, $3, $4, $5)
       ON CONFLICT (account_id, subject_kind, subject_id) DO UPDATE SET limit_micro_credits = EXCLUDED.limit_micro_credits, updated_at = EXCLUDED.updated_at`,
      [cmd.accountId, cmd.subjectKind, cmd.subjectId, cmd.limitMicroCredits.toString(), atx.now],
    );
  });
  if (cmd.limitMicroCredits === null) return null;
  // Only this subject's budget: listing all of them (each with its spending, summed from the
  // period's usage where not kept yet) cost an organization with many budgets that much per set.
  const [set] = await listBudgets(ctx.pool, cmd.accountId, ctx.clock(), cmd.subjectKind, { subjectId: cmd.subjectId });
  return set ?? null;
}
