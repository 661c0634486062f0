/**
 * AccountTx: one account's money-moving work inside one database transaction.
 *
 * Protocol (every writer follows it, which is what makes the ledger safe under concurrency):
 * 1. `AccountTx.lock` takes the account's balance row FOR UPDATE: all writes of one account
 *    are serialized, so reads of its batches and reservations inside the transaction are
 *    stable and an idempotency lookup followed by an insert cannot race.
 * 2. Operations change batches/reservations with plain SQL and record ledger entries in
 *    memory (`addEntry`), tracking the running total and debt.
 * 3. `finish` writes the ledger entries (with balanceAfter), the new balance (total, debt,
 *    version + 1) and the outbox rows (the balance snapshot at the new version, plus any queued
 *    with `publish`) in ONE statement. A deferred constraint trigger re-checks at COMMIT that
 *    total = sum(remaining of ACTIVE batches) - debt. The relay (src/outbox/relay.ts) publishes
 *    the outbox rows after commit.
 */
import type { Tx } from '../db/pg.js';
import { awaitInOrder, deferStatement, toBigInt } from '../db/pg.js';
import { LedgerError, assert } from '../ledger/errors.js';
import type { DrawableBatch, CreditType } from '../ledger/drawdown.js';
import { monthlyPeriodAt, type Period } from '../ledger/billing-period.js';
import { markOutboxWritten } from '../outbox/signal.js';
import type { BudgetSubjectKind } from './spending-budgets.js';

/** Ledger entry types (contract enum LedgerEntryType). */
export type LedgerEntryType = 'GRANT' | 'CONSUME' | 'EXPIRE' | 'RESERVE' | 'RELEASE' | 'REFUND' | 'VOID' | 'ADJUST' | 'DEBT_REPAY';

/** Entry types that change the account total; RESERVE/RELEASE change only `reserved`. */
const HOLD_TYPES: ReadonlySet<LedgerEntryType> = new Set(['RESERVE', 'RELEASE']);

interface PendingEntry {
  type: LedgerEntryType;
  /** When the entry took effect, if not the account's "now" (an expiry at its expiresAt). */
  at: Date | null;
  amountMicroCredits: bigint;
  balanceAfterMicroCredits: bigint;
  batchId: string | null;
  usageEventId: string | null;
  reservationId: string | null;
  note: string | null;
}

/** What AccountTx.state reads in one query. */
export interface AccountState {
  /**
   * Spendable batches (unordered; drawdown orders them): the first SPENDABLE_BATCHES_READ in
   * drawdown order, all of them when `batchesComplete`.
   */
  batches: LoadedBatch[];
  /** What ALL spendable batches hold (micro-credits), loaded or not. */
  spendableMicroCredits: bigint;
  /** `batches` are all the spendable batches; else AccountTx.allSpendableBatches reads the rest. */
  batchesComplete: boolean;
  /** Held by other ACTIVE, unexpired reservations. */
  reservedMicroCredits: bigint;
  /** The agent or user has a spending budget in this account. */
  hasBudget: boolean;
  /** The usage event already recorded under the idempotency key, if any. */
  priorUsage: { id: string; requestHash: string } | null;
  /** The reservation asked for, when it belongs to this account. */
  reservation: HoldState | null;
}

/** The locked balance row and its account (AccountTx.lock / lockMany add the filter and FOR UPDATE). */
const LOCK_SELECT = `SELECT a.id, a.kind, a.test_mode, a.test_clock_at, a.created_at, a.billing_anchor_at, a.budget_version,
              b.total_micro_credits, b.debt_micro_credits, b.version, b.updated_at
         FROM balances b JOIN accounts a ON a.id = b.account_id`;

/**
 * How many spendable batches a charge's state read loads, the first ones in drawdown order
 * (src/ledger/drawdown.ts): a charge or a group that needs more credit than they hold reads the
 * rest (AccountTx.allSpendableBatches). An account may hold thousands of live batches (a grant per
 * task or per day, many small packs), and loading, parsing and sorting all of them made every
 * charge cost time in proportion (bench/many-batches.ts).
 */
export const SPENDABLE_BATCHES_READ = 100;

/** The limit the state reads use now: SPENDABLE_BATCHES_READ, unless a test set another (setSpendableBatchesReadForTests). */
let spendableBatchesRead = SPENDABLE_BATCHES_READ;

/**
 * FOR TESTS ONLY: makes the state reads load `limit` spendable batches instead of
 * SPENDABLE_BATCHES_READ (null: back to it), so that tests with a few batches per account take
 * the limited path (incomplete batches, the fallback read, carried partial state) all the time
 * (test/integration/ledger-model.test.ts, ledger-property.test.ts). Process-wide (every vitest
 * file runs in a worker of its own); production code never calls it. The limit is a literal of
 * the statement text, so a statement other than the default one gets a name of its own
 * (statementName): a named statement's text never varies.
 * @throws Error when `limit` is not a positive integer.
 */
export function setSpendableBatchesReadForTests(limit: number | null): void {
  assert(limit === null || (Number.isInteger(limit) && limit > 0), 'the spendable batches limit must be a positive integer');
  spendableBatchesRead = limit ?? SPENDABLE_BATCHES_READ;
}

/** The prepared statement name of a state read at the current limit: `base`, suffixed with the limit when a test changed it. */
function statementName(base: string): string {
  return spendableBatchesRead === SPENDABLE_BATCHES_READ ? base : `${base}-limit-${spendableBatchesRead}`;
}

/**
 * SQL of an account's spendable batches at `now` (ACTIVE, not past expiresAt), as loadedBatchFromRow
 * reads them. With `limited`, only the first SPENDABLE_BATCHES_READ (a test may set fewer:
 * setSpendableBatchesReadForTests) in drawdown order (FREE first,
 * soonest expiresAt with never last, oldest addedAt, id: compareDrawdownOrder's order; the enum
 * CreditType is declared FREE, PAID, and uuids compare as their lowercase hex text does), each
 * with what ALL of them add up to, computed in the same pass (window aggregates are evaluated
 * before the LIMIT): `spendable` (their remaining credit, micro-credits), `batch_count` and
 * `earliest_expiry` (the soonest expiresAt, null when none expires).
 */
function spendableBatches(accountExpr: string, nowExpr: string, limited = false): string {
  return `SELECT id, type, source, remaining_micro_credits, expires_at, added_at${
    limited ? ', SUM(remaining_micro_credits) OVER () AS spendable, COUNT(*) OVER () AS batch_count, MIN(expires_at) OVER () AS earliest_expiry' : ''
  }
                 FROM credit_batches
                WHERE account_id = ${accountExpr} AND status = 'ACTIVE' AND (expires_at IS NULL OR expires_at > ${nowExpr})${
                  limited ? `\n                ORDER BY type, expires_at ASC NULLS LAST, added_at, id LIMIT ${spendableBatchesRead}` : ''
                }`;
}

/** A row of spendableBatches as a LoadedBatch (amounts in micro-credits). */
function loadedBatchFromRow(r: Record<string, unknown>): LoadedBatch {
  return {
    id: r.id as string,
    type: r.type as CreditType,
    source: r.source as string,
    remainingMicroCredits: toBigInt(r.remaining_micro_credits),
    expiresAt: r.expires_at as Date | null,
    addedAt: r.added_at as Date,
  };
}

/**
 * SQL of the rows of `table` already written under (account, idempotency key) pairs, given as
 * two parallel array parameters, as one JSON list per account ({key, id, hash}). One probe of the
 * table's (account_id, idempotency_key) unique index per pair, whatever plan is cached: the
 * LATERAL subquery's `LIMIT 1` (the key is unique, so it changes no result) keeps PostgreSQL from
 * flattening it into a join, which a generic plan cached while the table was small ran as a hash
 * join over a sequential scan of the whole table (seen with pg_stat_statements and auto_explain in
 * the perf bench); filtering the account's rows by key would cost as much as its history.
 */
function priorKeysByAccount(table: 'usage_events' | 'reservations', accountsParam: string, keysParam: string): string {
  return `SELECT k.account, json_agg(json_build_object('key', p.idempotency_key, 'id', p.id, 'hash', p.request_hash)) AS list
           FROM unnest(${accountsParam}::uuid[], ${keysParam}::text[]) AS k(account, key)
           CROSS JOIN LATERAL (SELECT id, idempotency_key, request_hash FROM ${table}
                                WHERE account_id = k.account AND idempotency_key = k.key LIMIT 1) p
          GROUP BY k.account`;
}

/** A priorKeysByAccount list (or null) as a map from idempotency key to the row's id and request hash. */
function priorKeysFromList(list: unknown): Map<string, { id: string; requestHash: string }> {
  return new Map(((list ?? []) as { key: string; id: string; hash: string }[]).map((p) => [p.key, { id: p.id, requestHash: p.hash }]));
}

/** The rows of AccountTx.chargeStates's statement (one per spendable batch, at least one per account) as states by account id. */
function chargeStatesFromRows(rows: readonly Record<string, unknown>[]): Map<string, ChargeState> {
  const states = new Map<string, ChargeState>();
  for (const r of rows) {
    let st = states.get(r.account as string);
    if (!st) {
      st = {
        now: r.state_now as Date,
        batches: [],
        spendableMicroCredits: toBigInt(r.spendable ?? 0),
        batchesComplete: Number(r.batch_count) <= spendableBatchesRead,
        earliestExpiryAt: (r.earliest_expiry as Date | null) ?? null,
        reservedMicroCredits: toBigInt(r.held ?? 0),
        hasAnyBudget: r.has_budget === true,
        priorUsage: priorKeysFromList(r.priors),
        priorUsageRead: true,
        reservations: new Map(),
        priorHolds: priorKeysFromList(r.hold_keys),
        budgets: new Map(),
        budgetSubjectsRead: new Set(),
      };
      for (const h of (r.holds ?? []) as { id: string; amount: string; consumed: string; status: string; expiresAt: string; agentId: string | null; userId: string | null }[]) {
        st.reservations.set(h.id, {
          amountMicroCredits: BigInt(h.amount),
          consumedMicroCredits: BigInt(h.consumed),
          status: h.status,
          expiresAt: new Date(h.expiresAt),
          agentId: h.agentId,
          userId: h.userId,
        });
      }
      for (const b of (r.budgets ?? []) as { kind: BudgetSubjectKind; subject: string; limit: string; periodStart: string | null; kept: string | null; held: string }[]) {
        st.budgets.set(budgetSubjectKey(b.kind, b.subject), {
          subjectKind: b.kind,
          subjectId: b.subject,
          limitMicroCredits: BigInt(b.limit),
          keptPeriodStart: b.periodStart === null ? null : new Date(b.periodStart),
          keptMicroCredits: BigInt(b.kept ?? 0),
          heldMicroCredits: BigInt(b.held),
        });
      }
      states.set(r.account as string, st);
    }
    if (r.id !== null) st.batches.push(loadedBatchFromRow(r));
  }
  return states;
}

/** What a group of charges of one account decides on, captures included (AccountTx.chargeStates). */
export interface ChargeState {
  /** The account's "now" the state was read at (its test clock for a test-mode account): the instant expiries were judged at. */
  now: Date;
  /**
   * Spendable batches (unordered; drawdown orders them): the first SPENDABLE_BATCHES_READ in
   * drawdown order, all of them when `batchesComplete`.
   */
  batches: LoadedBatch[];
  /** What ALL spendable batches hold (micro-credits), loaded or not. */
  spendableMicroCredits: bigint;
  /** `batches` are all the spendable batches; else AccountTx.allSpendableBatches reads the rest. */
  batchesComplete: boolean;
  /**
   * The soonest expiresAt among ALL spendable batches as read (null: none expires): until then
   * none of them has expired, so `spendableMicroCredits` still holds for a later instant
   * (GroupCommitter's carried state).
   */
  earliestExpiryAt: Date | null;
  /** Held by ACTIVE, unexpired reservations. */
  reservedMicroCredits: bigint;
  /** The account has at least one spending budget. */
  hasAnyBudget: boolean;
  /** Usage events already recorded, by idempotency key (of the keys asked for). */
  priorUsage: Map<string, { id: string; requestHash: string }>;
  /**
   * False when `priorUsage` was not read but left empty (GroupCommitter's carried state): a key
   * recorded before then shows up only as the unique key's violation of the insert, so a charge
   * that would be refused (which inserts nothing) must look its key up before it is answered
   * (chargeAccounts, AccountTx.priorUsageKeys).
   */
  priorUsageRead: boolean;
  /** The reservations asked for that belong to this account, by id. */
  reservations: Map<string, HoldState>;
  /** Reservations already made, by idempotency key (of the hold keys asked for). */
  priorHolds: Map<string, { id: string; requestHash: string }>;
  /**
   * The spending budgets of the subjects asked for (only when the account has any budget), by
   * {@link budgetSubjectKey}: what an in-memory budget check decides on (spending-budgets.ts).
   */
  budgets: Map<string, SubjectBudgetState>;
  /** The subjects whose budgets were read (budgetSubjectKey; those asked for and those of `reservations`), with a budget or not: what `budgets` says something about. */
  budgetSubjectsRead: ReadonlySet<string>;
}

/**
 * One budgeted subject's figures as chargeStates read them (amounts in micro-credits): its limit,
 * its latest kept spending row (`budget_spend`: the period it belongs to, which the caller
 * compares with the account's current period, and its usage cost), and the credit held by its
 * ACTIVE holds unexpired at the state's now.
 */
export interface SubjectBudgetState {
  subjectKind: BudgetSubjectKind;
  subjectId: string;
  limitMicroCredits: bigint;
  /** Start of the billing period of the subject's latest kept row; null when it has none. */
  keptPeriodStart: Date | null;
  /** That row's usage cost (0 when there is no row). */
  keptMicroCredits: bigint;
  heldMicroCredits: bigint;
}

/** The key of a budget subject in ChargeState.budgets: kind and id. */
export function budgetSubjectKey(kind: BudgetSubjectKind, subjectId: string): string {
  return `${kind}:${subjectId}`;
}

/** A reservation as a capture decides on it. */
export interface HoldState {
  amountMicroCredits: bigint;
  consumedMicroCredits: bigint;
  status: string;
  expiresAt: Date;
  /** Whose hold it is: its credit counts against these subjects' budgets while it holds (absent: not read). */
  agentId?: string | null;
  userId?: string | null;
}

/**
 * Outbox topics besides the balance snapshot that finish() always writes (src/outbox/topics.ts).
 * Usage events have no row of their own: every one adds a ledger entry, so its transaction
 * writes a `balance` row, and that wakes usageRecorded.
 */
export type OutboxTopic = 'alert' | 'job';

/** Tables whose rows belong to one account. */
export type OwnedTable = 'credit_grants' | 'usage_events' | 'reservations';

/** A spendable batch as loaded for drawdown. */
export interface LoadedBatch extends DrawableBatch {
  source: string;
}

/** What AccountTx.checkpoint() saves: running totals and how many entries/outbox rows were pending. */
export interface AccountTxMark {
  readonly total: bigint;
  readonly debt: bigint;
  readonly billingAnchorAt: Date;
  readonly planGrantedPeriodStart: Date | null;
  readonly entries: number;
  readonly outbox: number;
  readonly changed: boolean;
}

/** The locked account and its running totals. */
export class AccountTx {
  readonly tx: Tx;
  readonly accountId: string;
  /**
   * "Now" for every rule of this account: its test clock, or the wall clock, but never before the
   * instant of the account's last committed change (balances.updated_at). The wall clock is read
   * before the lock is waited for, so a change that took the lock first may be dated later (or
   * another server's clock may run ahead); the period's figures count grants and voids dated up
   * to now (balance_figures), so a change dated before one already committed would compute them
   * without it (a void's credit still in periodCredits: false credit alerts, and a live snapshot
   * that is not the balance at its version). Per account, instants follow the version order.
   */
  readonly now: Date;
  readonly createdAt: Date;
  /** Start of the first billing period (creation, or the start of the plan; subscribeToPlan moves it). */
  billingAnchorAt: Date;
  readonly kind: 'ORGANIZATION' | 'USER';
  /** Running total: remaining of ACTIVE batches minus debt (micro-credits). */
  total: bigint;
  /** Running debt (>= 0). */
  debt: bigint;
  readonly versionBefore: bigint;
  /** The account's budget version as locked (accounts.budget_version: moves when a budget is set, changed or removed). */
  readonly budgetVersion: bigint;
  /** A test-mode account (its own clock; README "Test clocks"): growth credit keeps it apart from live accounts. */
  readonly testMode: boolean;
  /**
   * The start of the last billing period its active plan was granted (plan_subscriptions
   * .granted_period_start), read after the lock; null without an active plan. plans.ts keeps it
   * current when it rolls, subscribes or cancels in this transaction. See {@link periodRollDue}.
   */
  planGrantedPeriodStart: Date | null;
  private readonly entries: PendingEntry[] = [];
  private readonly outbox: { topic: OutboxTopic; payload: unknown }[] = [];
  private changed = false;

  private constructor(tx: Tx, row: Record<string, unknown>, wallNow: Date) {
    this.tx = tx;
    this.accountId = row.id as string;
    this.createdAt = row.created_at as Date;
    this.billingAnchorAt = row.billing_anchor_at as Date;
    this.kind = row.kind as 'ORGANIZATION' | 'USER';
    const clockAt = row.test_clock_at as Date | null;
    this.testMode = row.test_mode === true;
    const lastChangeAt = row.updated_at as Date;
    this.now = row.test_mode && clockAt ? clockAt : lastChangeAt > wallNow ? lastChangeAt : wallNow;
    this.total = toBigInt(row.total_micro_credits);
    this.debt = toBigInt(row.debt_micro_credits);
    this.versionBefore = toBigInt(row.version);
    this.budgetVersion = toBigInt(row.budget_version);
    this.planGrantedPeriodStart = (row.plan_granted_period_start as Date | null | undefined) ?? null;
  }

  /**
   * True when the account's active plan has not been rolled into the billing period holding
   * `now` yet: the period began (its RESET allowance no longer pays, alerts and budgets count the
   * new period) and its `roll-period` job has not run (BullMQ's delay, workers busy or down).
   * In memory, no statement: a charge rolls the plan first then (plans.ts rollDuePeriodsFirst).
   */
  periodRollDue(): boolean {
    return this.planGrantedPeriodStart !== null && this.planGrantedPeriodStart.getTime() < this.period().start.getTime();
  }

  /**
   * Starts a transaction from the state an earlier transaction of this process left (GroupCommitter's
   * carried state, see {@link AccountTx.carriedRow}) instead of reading it: returns at once, and
   * issues the lock, and a guard behind it, without waiting for them. The guard fails (SQLSTATE
   * 22P02, so the transaction rolls back and its COMMIT becomes a ROLLBACK) unless the account is
   * as it was left: the same balance version (every change of batches, holds, debt or total moves it), the
   * same billing anchor, not in test mode, and the same budget version (budgets do not move the
   * balance version; setting, changing or removing one moves accounts.budget_version, and their
   * kept spending moves only with the balance version or the anchor). The caller must check the
   * returned promise (push it onto the transaction's pending statements) and, when it fails, run
   * the work again from a fresh read.
   * @param carried a row as {@link AccountTx.carriedRow} returned it
   * @returns the account and the pending lock and guard (a `.catch` attached)
   */
  static lockCarried(tx: Tx, carried: Record<string, unknown>, wallNow: Date): { atx: AccountTx; locked: Promise<unknown> } {
    const lock = AccountTx.lockRow(tx, carried.id as string);
    // A statement of its own, so that its snapshot is taken once the lock is granted: inside the
    // lock statement, the accounts row would be seen as of before the lock wait (only the locked
    // balance row itself is re-read then), and a budget committed meanwhile missed.
    const guard = tx.query({
      name: 'cp-account-carried-guard',
      text: `SELECT CASE WHEN b.version = $2::bigint AND a.billing_anchor_at = $3::timestamptz AND NOT a.test_mode
                          AND a.budget_version = $4::bigint
                         THEN 1 ELSE ('account changed since its state was carried over (version ' || b.version || ')')::int END AS carried
               FROM balances b JOIN accounts a ON a.id = b.account_id WHERE b.account_id = $1`,
      values: [carried.id, String(carried.version), carried.billing_anchor_at, String(carried.budget_version)],
    });
    const locked = awaitInOrder([lock, guard]);
    locked.catch(() => undefined);
    return { atx: new AccountTx(tx, carried, wallNow), locked };
  }

  /**
   * The row {@link AccountTx.lock} would read once this transaction committed at `version`
   * (its running total and debt), for {@link AccountTx.lockCarried}; null for a test-mode
   * account (its clock is not the wall clock).
   */
  carriedRow(version: bigint): Record<string, unknown> | null {
    if (this.testMode) return null;
    return {
      id: this.accountId,
      kind: this.kind,
      test_mode: false,
      test_clock_at: null,
      created_at: this.createdAt,
      billing_anchor_at: this.billingAnchorAt,
      budget_version: this.budgetVersion.toString(),
      plan_granted_period_start: this.planGrantedPeriodStart,
      total_micro_credits: this.total.toString(),
      debt_micro_credits: this.debt.toString(),
      version: version.toString(),
      updated_at: this.now, // at least what the balance row holds once this transaction committed
    };
  }

  /** The single-account lock statement (one named statement for `lock` and `lockCarried`): the row LOCK_SELECT reads, or none. */
  private static lockRow(tx: Tx, accountId: string) {
    return tx.query({ name: 'cp-account-lock', text: `${LOCK_SELECT} WHERE b.account_id = $1 FOR UPDATE OF b`, values: [accountId] });
  }

  /**
   * The usage events of `accountId` already recorded under any of `keys` (idempotency keys), by
   * key, with their ids and request hashes: one probe of the (account_id, idempotency_key) unique
   * index per key (priorKeysByAccount). For a group decided from carried state, whose refusals
   * must replay a recorded key as applyCharge does (README: the same key and input return the
   * first result).
   */
  static async priorUsageKeys(tx: Tx, accountId: string, keys: readonly string[]): Promise<Map<string, { id: string; requestHash: string }>> {
    const { rows } = await tx.query(priorKeysByAccount('usage_events', '$1', '$2'), [keys.map(() => accountId), keys]);
    return priorKeysFromList(rows[0]?.list);
  }

  /**
   * Locks the account's balance row and returns its state.
   * @throws LedgerError NOT_FOUND when the account does not exist.
   */
  static async lock(tx: Tx, accountId: string, wallNow: Date): Promise<AccountTx> {
    // Pipelined: the account's columns are read right behind the lock, in the same round trip.
    const [{ rows }, fresh] = await awaitInOrder([AccountTx.lockRow(tx, accountId), AccountTx.accountsAfterLock(tx, [accountId])]);
    if (!rows[0]) throw new LedgerError('NOT_FOUND', 'account not found');
    return new AccountTx(tx, { ...rows[0], ...fresh.get(accountId) }, wallNow);
  }

  /**
   * The columns of accounts `accountIds` that change after creation (billing anchor, test
   * clock, budget version, and the active plan's last granted period), by account id, in a statement of its own issued right behind their
   * lock statement (pipelined: no round trip of its own), so that its snapshot is taken once the
   * locks are granted. The lock statement itself reads the accounts row as of before its lock
   * wait (READ COMMITTED re-reads only the locked balance row after the wait): a charge that
   * waited for a subscribeToPlan, a setSpendingBudget or a test clock step that committed
   * meanwhile decided with the old anchor (the budget of the period the subscription ended, the
   * period figures of the old period), the old budget version or the old clock
   * (test/integration/config-races.test.ts).
   */
  private static async accountsAfterLock(tx: Tx, accountIds: readonly string[]): Promise<Map<string, Record<string, unknown>>> {
    const { rows } = await tx.query({
      name: 'cp-account-after-lock',
      // Joined from unnest, as lockMany (a cached generic plan of `= ANY($1)` scans the table).
      // With the active plan's last granted period (one probe of its primary key), for periodRollDue.
      text: `SELECT a.id, a.test_clock_at, a.billing_anchor_at, a.budget_version,
                    (SELECT s.granted_period_start FROM plan_subscriptions s WHERE s.account_id = a.id AND s.active) AS plan_granted_period_start
               FROM unnest($1::uuid[]) AS x(id) JOIN accounts a ON a.id = x.id`,
      values: [accountIds],
    });
    return new Map(rows.map((r) => [r.id as string, r]));
  }

  /**
   * Locks the balance rows of several accounts in ONE statement, in account id order (every
   * writer that holds several locks takes them in that order, so two such transactions cannot
   * deadlock), and returns the state of each. Ids that name no account are absent from the map.
   */
  static async lockMany(tx: Tx, accountIds: readonly string[], wallNow: Date): Promise<Map<string, AccountTx>> {
    // Joined from unnest: a cached generic plan of `account_id = ANY($1)` scans whole tables.
    const ids = [...new Set(accountIds)];
    const [{ rows }, fresh] = await awaitInOrder([
      tx.query({
        name: 'cp-account-lock-many',
        text: `${LOCK_SELECT} JOIN unnest($1::uuid[]) AS x(id) ON x.id = b.account_id ORDER BY b.account_id FOR UPDATE OF b`,
        values: [ids],
      }),
      AccountTx.accountsAfterLock(tx, ids),
    ]);
    return new Map(rows.map((row) => [row.id as string, new AccountTx(tx, { ...row, ...fresh.get(row.id as string) }, wallNow)]));
  }

  /**
   * Locks the account that owns row `id` of `table` (a grant, usage event or reservation).
   * @throws LedgerError NOT_FOUND (`what` not found) when there is no such row.
   */
  static async lockOwner(tx: Tx, table: OwnedTable, id: string, what: string, wallNow: Date): Promise<AccountTx> {
    return AccountTx.lock(tx, await AccountTx.ownerOf(tx, table, id, what), wallNow);
  }

  /**
   * The account that owns row `id` of `table`. A row's account never changes, so this may be
   * read before the account is locked (settleReservation does, to join a group-commit
   * transaction of that account).
   * @throws LedgerError NOT_FOUND (`what` not found) when there is no such row.
   */
  static async ownerOf(db: Pick<Tx, 'query'>, table: OwnedTable, id: string, what: string): Promise<string> {
    const found = await db.query(`SELECT account_id FROM ${table} WHERE id = $1`, [id]);
    const accountId = found.rows[0]?.account_id as string | undefined;
    if (!accountId) throw new LedgerError('NOT_FOUND', `${what} not found`);
    return accountId;
  }

  /**
   * Everything a charge or hold decides on, in ONE query (the lock is already held, so it is
   * stable): the ACTIVE batches that can pay now (not past expiresAt; the first
   * SPENDABLE_BATCHES_READ in drawdown order) and what all of them hold; the credit
   * held by ACTIVE, unexpired reservations (amount - consumed, floored at 0) other than
   * `reservationId`; whether the agent/user has a budget (each of them, where not given, the
   * reservation's: a capture is recorded under its hold's subjects, record-usage.ts
   * chargeSubjects); the usage event already recorded under `usageIdempotencyKey`, if any; and
   * the row of `reservationId` (with its agent and user), if given.
   */
  async state(opts: {
    reservationId?: string | null;
    agentId?: string | null;
    userId?: string | null;
    usageIdempotencyKey?: string | null;
  }): Promise<AccountState> {
    const { rows } = await this.tx.query({
      name: statementName('cp-account-state'),
      text: `SELECT b.id, b.type, b.source, b.remaining_micro_credits, b.expires_at, b.added_at, r.held, hb.has_budget,
              b.spendable, b.batch_count,
              pe.id AS prior_id, pe.request_hash AS prior_hash,
              res.amount_micro_credits AS res_amount, res.consumed_micro_credits AS res_consumed,
              res.status AS res_status, res.expires_at AS res_expires_at, res.agent_id AS res_agent_id, res.user_id AS res_user_id
         FROM (SELECT COALESCE(SUM(GREATEST(amount_micro_credits - consumed_micro_credits, 0)), 0) AS held
                 FROM reservations
                WHERE account_id = $1 AND status = 'ACTIVE' AND expires_at > $2
                  AND ($3::uuid IS NULL OR id <> $3::uuid)) r
         LEFT JOIN usage_events pe ON pe.account_id = $1 AND pe.idempotency_key = $6
         LEFT JOIN reservations res ON res.id = $3::uuid AND res.account_id = $1
         CROSS JOIN LATERAL (SELECT EXISTS (SELECT 1 FROM spending_budgets sb WHERE sb.account_id = $1
                   AND ((sb.subject_kind = 'AGENT' AND sb.subject_id = COALESCE($4::text, res.agent_id))
                     OR (sb.subject_kind = 'USER' AND sb.subject_id = COALESCE($5::text, res.user_id)))) AS has_budget) hb
         LEFT JOIN LATERAL (${spendableBatches('$1', '$2', true)}) b ON TRUE`,
      values: [this.accountId, this.now, opts.reservationId ?? null, opts.agentId ?? null, opts.userId ?? null, opts.usageIdempotencyKey ?? null],
    });
    const first = rows[0];
    const batches: LoadedBatch[] = rows
      .filter((r) => r.id !== null)
      .map(loadedBatchFromRow);
    return {
      batches,
      spendableMicroCredits: toBigInt(first?.spendable ?? 0),
      batchesComplete: Number(first?.batch_count ?? 0) <= spendableBatchesRead,
      reservedMicroCredits: toBigInt(first?.held ?? 0),
      hasBudget: first?.has_budget === true,
      priorUsage: first?.prior_id ? { id: first.prior_id as string, requestHash: first.prior_hash as string } : null,
      reservation:
        first?.res_status != null
          ? {
              amountMicroCredits: toBigInt(first.res_amount),
              consumedMicroCredits: toBigInt(first.res_consumed),
              status: first.res_status as string,
              expiresAt: first.res_expires_at as Date,
              agentId: (first.res_agent_id as string | null) ?? null,
              userId: (first.res_user_id as string | null) ?? null,
            }
          : null,
    };
  }

  /**
   * ALL the account's spendable batches at its now (unordered), for a charge or group that needs
   * more credit than the first SPENDABLE_BATCHES_READ of its state hold. The lock is held, so they
   * are what the state read saw, less what this transaction wrote since.
   */
  async allSpendableBatches(): Promise<LoadedBatch[]> {
    const { rows } = await this.tx.query({ name: 'cp-account-all-batches', text: spendableBatches('$1', '$2'), values: [this.accountId, this.now] });
    return rows.map(loadedBatchFromRow);
  }

  /**
   * What groups of charges decide on, for several locked accounts of one transaction in ONE
   * query: per account, the spendable batches (the first SPENDABLE_BATCHES_READ in drawdown order)
   * and what all of them hold, the credit held by ACTIVE unexpired reservations,
   * whether the account has any spending budget, the usage events already recorded under the
   * given idempotency keys, the given reservations that belong to it (with their agent and user),
   * the reservations already made under the given hold idempotency keys, and, where the account
   * has a budget, the budgets of the given subjects and of the given reservations' agents and
   * users (a capture is recorded under its hold's: record-usage.ts chargeSubjects) with their
   * latest kept spending and held credit.
   *
   * It may be issued before the lock statement's answer has come (the ledger pool pipelines:
   * PostgreSQL runs it after the lock was granted, with a snapshot taken then, so it reads what
   * it would read one round trip later). Then the accounts' "now" is not known yet: with
   * `accountClock`, `now` is the wall clock and the statement applies each account's test clock
   * (or its last change's instant, when later) itself, as AccountTx does; the state's `now` says which instant was used.
   * @param wanted each account with the idempotency keys and reservation ids of its charges (and
   *   of its settles), the idempotency keys of its holds, and its now (or the wall clock, with
   *   `accountClock`).
   * @returns the state of each existing account, by account id.
   */
  static chargeStates(
    tx: Tx,
    wanted: readonly {
      accountId: string;
      now: Date;
      accountClock: boolean;
      idempotencyKeys: readonly string[];
      reservationIds: readonly string[];
      holdKeys: readonly string[];
      /** The agents and users its charges and holds name (their budgets are read where the account has any). */
      budgetSubjects: readonly { subjectKind: BudgetSubjectKind; subjectId: string }[];
    }[],
  ): Promise<Map<string, ChargeState>> {
    const keyPairs = wanted.flatMap((w) => w.idempotencyKeys.map((k) => [w.accountId, k] as const));
    const holdPairs = wanted.flatMap((w) => w.reservationIds.map((id) => [w.accountId, id] as const));
    const holdKeyPairs = wanted.flatMap((w) => w.holdKeys.map((k) => [w.accountId, k] as const));
    return tx.query({
      name: statementName('cp-account-charge-states'),
      text: `WITH priors AS (${priorKeysByAccount('usage_events', '$3', '$4')}), holds AS (
         SELECT h.account, json_agg(json_build_object('id', res.id, 'amount', res.amount_micro_credits::text,
                  'consumed', res.consumed_micro_credits::text, 'status', res.status, 'expiresAt', res.expires_at,
                  'agentId', res.agent_id, 'userId', res.user_id)) AS list
           FROM unnest($5::uuid[], $6::uuid[]) AS h(account, id)
           CROSS JOIN LATERAL (SELECT * FROM reservations WHERE id = h.id AND account_id = h.account LIMIT 1) res -- a primary-key probe (see priorKeysByAccount)
          GROUP BY h.account
       ), hkeys AS (${priorKeysByAccount('reservations', '$7', '$8')})
       SELECT a.account, a.now AS state_now, b.id, b.type, b.source, b.remaining_micro_credits, b.expires_at, b.added_at, r.held, r.has_budget,
              b.spendable, b.batch_count, b.earliest_expiry,
              p.list AS priors, hl.list AS holds, hk.list AS hold_keys, r.budgets
         FROM unnest($1::uuid[], $2::timestamptz[], $9::boolean[], $10::jsonb[]) AS w(account, now, account_clock, subjects)
         JOIN accounts acc ON acc.id = w.account
         JOIN balances bal ON bal.account_id = w.account
         -- The account's now as AccountTx computes it: its test clock, else the wall clock but not
         -- before its last committed change.
         CROSS JOIN LATERAL (SELECT w.account,
                CASE WHEN w.account_clock AND acc.test_mode AND acc.test_clock_at IS NOT NULL THEN acc.test_clock_at
                     WHEN w.account_clock THEN GREATEST(w.now, bal.updated_at) ELSE w.now END AS now) a
         LEFT JOIN holds hl ON hl.account = a.account
         CROSS JOIN LATERAL (
               -- Where the account has a budget: the budgets of the subjects asked for and of the
               -- holds asked for (a capture is its hold's subjects': record-usage.ts chargeSubjects),
               -- with their latest kept spending row and what their holds hold (migration
               -- budget_states; a function called under CASE, so an account without one costs
               -- nothing more).
               SELECT r0.held, r0.has_budget,
                      CASE WHEN r0.has_budget THEN budget_states(a.account, a.now, (
                        SELECT COALESCE(jsonb_agg(x.subject), '[]'::jsonb)
                          FROM (SELECT jsonb_array_elements(w.subjects) AS subject
                                UNION
                                SELECT jsonb_build_object('kind', v.kind, 'subject', v.subject)
                                  FROM json_array_elements(hl.list) h
                                  CROSS JOIN LATERAL (VALUES ('AGENT', h->>'agentId'), ('USER', h->>'userId')) v(kind, subject)
                                 WHERE v.subject IS NOT NULL) x)) END AS budgets
                 FROM (SELECT COALESCE(SUM(GREATEST(amount_micro_credits - consumed_micro_credits, 0)), 0) AS held,
                              EXISTS (SELECT 1 FROM spending_budgets sb WHERE sb.account_id = a.account) AS has_budget
                         FROM reservations
                        WHERE account_id = a.account AND status = 'ACTIVE' AND expires_at > a.now) r0) r
         LEFT JOIN priors p ON p.account = a.account
         LEFT JOIN hkeys hk ON hk.account = a.account
         LEFT JOIN LATERAL (${spendableBatches('a.account', 'a.now', true)}) b ON TRUE`,
      values: [
        wanted.map((w) => w.accountId),
        wanted.map((w) => w.now),
        keyPairs.map((p) => p[0]),
        keyPairs.map((p) => p[1]),
        holdPairs.map((p) => p[0]),
        holdPairs.map((p) => p[1]),
        holdKeyPairs.map((p) => p[0]),
        holdKeyPairs.map((p) => p[1]),
        wanted.map((w) => w.accountClock),
        wanted.map((w) => JSON.stringify(w.budgetSubjects.map((b) => ({ kind: b.subjectKind, subject: b.subjectId })))),
      ],
    }).then(({ rows }) => {
      const states = chargeStatesFromRows(rows);
      for (const w of wanted) {
        const st = states.get(w.accountId);
        if (!st) continue;
        const read = new Set(w.budgetSubjects.map((b) => budgetSubjectKey(b.subjectKind, b.subjectId)));
        // The statement read the budgets of the holds' subjects too.
        for (const h of st.reservations.values()) {
          if (h.agentId) read.add(budgetSubjectKey('AGENT', h.agentId));
          if (h.userId) read.add(budgetSubjectKey('USER', h.userId));
        }
        st.budgetSubjectsRead = read;
      }
      return states;
    });
  }

  /**
   * The EXPIRE entries this transaction recorded and has not written yet (finish writes them),
   * dated after `after`, as (batch id, micro-credits expired > 0): what a query of
   * ledger_entries in this transaction cannot see (refund-usage.ts rolloverRoom, after a due
   * roll's expiries in the same transaction).
   */
  pendingExpiriesAfter(after: Date): { batchId: string; amountMicroCredits: bigint }[] {
    return this.entries
      .filter((e) => e.type === 'EXPIRE' && e.batchId !== null && (e.at ?? this.now).getTime() > after.getTime())
      .map((e) => ({ batchId: e.batchId!, amountMicroCredits: -e.amountMicroCredits }));
  }

  /**
   * The DEBT_REPAY entries this transaction recorded and has not written yet (finish writes them),
   * in the order recorded, as (batch id, micro-credits repaid > 0, when: the entry's date): what
   * a query of ledger_entries in this transaction cannot see (refund-usage.ts refundUsage's debt
   * history, after a due roll's grant repaid debt in the same transaction).
   */
  pendingDebtRepays(): { batchId: string; amountMicroCredits: bigint; at: Date }[] {
    return this.entries
      .filter((e) => e.type === 'DEBT_REPAY' && e.batchId !== null)
      .map((e) => ({ batchId: e.batchId!, amountMicroCredits: e.amountMicroCredits, at: e.at ?? this.now }));
  }

  /**
   * Records a ledger entry. For total-changing types the running total moves by `amount`;
   * hold entries (RESERVE/RELEASE) leave it unchanged.
   */
  addEntry(entry: {
    type: LedgerEntryType;
    amountMicroCredits: bigint;
    batchId?: string | null;
    usageEventId?: string | null;
    reservationId?: string | null;
    note?: string | null;
    /** Dates the entry at this instant instead of the account's now (expiries: their expiresAt). */
    at?: Date | null;
  }): void {
    if (!HOLD_TYPES.has(entry.type)) this.total += entry.amountMicroCredits;
    this.changed = true;
    this.entries.push({
      type: entry.type,
      at: entry.at ?? null,
      amountMicroCredits: entry.amountMicroCredits,
      balanceAfterMicroCredits: this.total,
      batchId: entry.batchId ?? null,
      usageEventId: entry.usageEventId ?? null,
      reservationId: entry.reservationId ?? null,
      note: entry.note ?? null,
    });
  }

  /** The billing period containing this account's "now". */
  period(): Period {
    return monthlyPeriodAt(this.billingAnchorAt, this.now);
  }

  /**
   * Queues an outbox row (JSON payload, amounts as strings) to be written by `finish` in the
   * same statement as the balance, i.e. committed together with the change it reports.
   */
  publish(topic: OutboxTopic, payload: unknown): void {
    this.outbox.push({ topic, payload });
  }

  /**
   * The in-memory state a SAVEPOINT must restore with the rows (GroupCommitter runs operations
   * of several callers in one transaction, each under a savepoint): running totals, billing
   * anchor, the plan's last granted period, pending ledger entries and outbox rows.
   */
  checkpoint(): AccountTxMark {
    return {
      total: this.total,
      debt: this.debt,
      billingAnchorAt: this.billingAnchorAt,
      planGrantedPeriodStart: this.planGrantedPeriodStart,
      entries: this.entries.length,
      outbox: this.outbox.length,
      changed: this.changed,
    };
  }

  /** Restores the state of `checkpoint()` (after ROLLBACK TO SAVEPOINT). */
  rollbackTo(mark: AccountTxMark): void {
    this.total = mark.total;
    this.debt = mark.debt;
    this.billingAnchorAt = mark.billingAnchorAt;
    this.planGrantedPeriodStart = mark.planGrantedPeriodStart;
    this.entries.length = mark.entries;
    this.outbox.length = mark.outbox;
    this.changed = mark.changed;
  }

  /** Marks the balance as changed without a ledger entry (e.g. a hold's expiry time moved). */
  touch(): void {
    this.changed = true;
  }

  /**
   * Writes pending ledger entries, the new balance (version + 1) and the outbox rows (a `balance`
   * snapshot at the new version computed by `balance_figures`, then the rows queued with
   * `publish`) in one statement, when anything changed.
   * @returns the balance version after this transaction.
   */
  async finish(): Promise<bigint> {
    return (await AccountTx.finishMany(this.tx, [this])).get(this.accountId)!;
  }

  /**
   * `finish` for several accounts locked by the same transaction, in ONE statement: every
   * account's ledger entries (in order), the balance rows of the accounts that changed, their
   * queued outbox rows, and one call of `balances_changed` for all the changed accounts (their
   * outbox snapshots, alerts, auto top-ups; migration balances_changed), after every balance row
   * is updated. It sees this transaction's earlier statements (batches, holds, grants); this
   * statement's own ledger entries are dated at or after the period start, so they do not change
   * its figures, and the new versions and debts are passed to it.
   *
   * The balance row also keeps the account total at the start of the current billing period
   * (`opening_period_start`, `opening_total_micro_credits`; migration period_opening_total),
   * so that `balance_figures` does not sum the account's ledger history on every change: the
   * stored opening when it is for this period, else the total before this statement minus the
   * entries dated after the period start (a new period: only its first entries); plus this
   * statement's entries dated before the start (expiries, dated at their expiresAt) or EXPIREs
   * dated at it. Every ledger entry is written here, so the stored opening stays the SUM
   * balance_figures defines; reconcileAccount checks it.
   *
   * With `pending`, the statement is issued and not awaited: its promise (with a `.catch`
   * attached) is pushed onto `pending`, to go out with the caller's COMMIT in one round trip
   * (db/pg.ts PipelinedCommit), and the returned versions are only complete once it resolved.
   * @returns each account's balance version after this transaction, by account id.
   */
  static async finishMany(tx: Tx, atxs: readonly AccountTx[], pending?: Promise<unknown>[]): Promise<Map<string, bigint>> {
    const versions = new Map(atxs.map((a) => [a.accountId, a.versionBefore]));
    const changed = atxs.filter((a) => a.changed);
    const withOutbox = atxs.filter((a) => a.outbox.length > 0);
    if (changed.length === 0 && withOutbox.length === 0) return versions;
    for (const a of changed) assert(a.debt >= 0n, 'debt must never be negative');
    const e = changed.flatMap((a) => a.entries.map((x) => ({ a, x })));
    const periodStarts = changed.map((a) => a.period().start);
    const beforeStart = changed.map((a, i) => {
      const start = periodStarts[i]!.getTime();
      let sum = 0n;
      for (const x of a.entries) {
        if (HOLD_TYPES.has(x.type)) continue;
        const dated = (x.at ?? a.now).getTime();
        if (dated < start || (dated === start && x.type === 'EXPIRE')) sum += x.amountMicroCredits;
      }
      return sum;
    });
    const o = withOutbox.flatMap((a) => a.outbox.map((x) => ({ a, x })));
    const written = tx.query({
      name: 'cp-account-finish',
      text: `WITH entries AS (
         INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits,
                                     batch_id, usage_event_id, reservation_id, note, created_at)
         SELECT gen_random_uuid(), t.account, t.type::"LedgerEntryType", t.amount, t.after, t.batch, t.event, t.res, t.note, COALESCE(t.at, t.now)
           FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::bigint[], $5::uuid[], $6::uuid[], $7::uuid[], $8::text[], $9::timestamptz[], $10::timestamptz[])
                WITH ORDINALITY AS t(account, type, amount, after, batch, event, res, note, at, now, ord)
          ORDER BY t.ord
       ), upd AS (
         UPDATE balances b SET total_micro_credits = u.total, debt_micro_credits = u.debt, version = b.version + 1, updated_at = u.now,
                opening_period_start = u.period_start,
                opening_total_micro_credits = u.before_start + CASE WHEN b.opening_period_start = u.period_start THEN b.opening_total_micro_credits
                  ELSE ledger_opening_from_total(u.account, u.period_start, b.total_micro_credits) END
           FROM unnest($11::uuid[], $12::bigint[], $13::bigint[], $14::timestamptz[], $18::timestamptz[], $19::bigint[])
                AS u(account, total, debt, now, period_start, before_start)
          WHERE b.account_id = u.account
          RETURNING b.account_id, b.version, b.updated_at, u.now, u.debt
       ), ob AS (
         INSERT INTO outbox_events (account_id, topic, payload)
         SELECT q.account, q.topic, q.payload FROM unnest($15::uuid[], $16::text[], $17::jsonb[]) WITH ORDINALITY AS q(account, topic, payload, ord)
          ORDER BY q.ord
       )
       SELECT array_agg(upd.account_id)::text[] AS accounts, array_agg(upd.version)::text[] AS versions,
              balances_changed(array_agg(upd.account_id), array_agg(upd.now), array_agg(upd.version), array_agg(upd.updated_at), array_agg(upd.debt))
         FROM upd`,
      values: [
        e.map(({ a }) => a.accountId),
        e.map(({ x }) => x.type),
        e.map(({ x }) => x.amountMicroCredits.toString()),
        e.map(({ x }) => x.balanceAfterMicroCredits.toString()),
        e.map(({ x }) => x.batchId),
        e.map(({ x }) => x.usageEventId),
        e.map(({ x }) => x.reservationId),
        e.map(({ x }) => x.note),
        e.map(({ x }) => x.at),
        e.map(({ a }) => a.now),
        changed.map((a) => a.accountId),
        changed.map((a) => a.total.toString()),
        changed.map((a) => a.debt.toString()),
        changed.map((a) => a.now),
        o.map(({ a }) => a.accountId),
        o.map(({ x }) => x.topic),
        o.map(({ x }) => JSON.stringify(x.payload)),
        periodStarts,
        beforeStart.map((v) => v.toString()),
      ],
    });
    for (const a of atxs) {
      a.entries.length = 0;
      a.outbox.length = 0;
      a.changed = false;
    }
    markOutboxWritten(tx); // withTransaction clears it if the transaction fails
    const done = written.then(({ rows }) => {
      const { accounts, versions: after } = rows[0] as { accounts: string[] | null; versions: string[] | null };
      accounts?.forEach((id, i) => versions.set(id, toBigInt(after![i]!)));
    });
    if (pending) deferStatement(pending, done);
    else await done;
    return versions;
  }

}
