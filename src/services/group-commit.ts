/**
 * Group commit of concurrent charges (issue #6: "batching concurrent charges for one account into
 * one transaction", extended across accounts). Every charge of an account serializes on its
 * balance row, and every transaction pays a BEGIN, a lock, a state read, its writes and a COMMIT
 * (a WAL flush) in round trips of its own. This process therefore runs at most
 * `maxTransactions` charge transactions at once; charges that arrive meanwhile wait, and the next
 * free slot takes the waiting charges of up to `maxAccountsPerTransaction` accounts (at most
 * `maxChargesPerAccount` each) as ONE transaction: the accounts locked in id order in one
 * statement, one read of their batches, holds and prior keys, the charges decided in memory,
 * one multi-row write of all events and one write of all ledger entries, balances and outbox
 * snapshots, one COMMIT (record-usage.ts `chargeAccounts`, the path recordUsageBatch uses).
 * BEGIN, the lock and the state read go out together, and the writes with the COMMIT (the ledger
 * pool pipelines; db/pg.ts PipelinedCommit), so such a transaction is 2 round trips. A hot
 * account's next transaction (charges of it were waiting as the last one committed) skips the
 * state read and is 1 round trip: see `run`, "carried state" (bench/HISTORY.md: the hot
 * account's round trip took ~0.9 ms for 0.07 ms of PostgreSQL's work).
 *
 * An account is in at most one transaction at a time, so the charges of a hot account form
 * groups instead of queueing on its row lock. Refusals stay per charge, idempotency keys still
 * dedupe inside a group (a repeated key replays the first item's event), every charge still gets
 * its own `usageRecorded` update, and each account's balance version moves once per transaction,
 * which the contract allows ("increases by at least 1 on every change").
 *
 * Holds and settles without usage (`holdOp`: reserveCredits, settleReservation) are decided in
 * memory with the charges, in arrival order, by the same chargeAccounts call. Other operations on
 * one account (`withAccount`: a settle with usage) join the same transactions too. They run in
 * arrival order with the account's charges, each under a SAVEPOINT: a refusal (a LedgerError)
 * rolls back that operation's rows and its pending ledger entries and outbox rows
 * (AccountTx.checkpoint/rollbackTo) and nothing else.
 *
 * Nothing waits for a group to fill: while a slot is free a charge runs at once, alone. If a
 * transaction fails unexpectedly (not a refusal), each of its accounts is retried alone, and an
 * account that fails again has each charge or operation retried alone, so one bad item fails
 * alone. A failure of the database itself (db/pg.ts `isDatabaseUnavailable`) is no item's fault:
 * a lost connection retries the whole transaction once, a statement timeout not at all, and then
 * every item of it gets the error.
 */
import type pg from 'pg';
import { PipelinedCommit, awaitInOrder, isDatabaseUnavailable, isStatementTimeout, withTransaction, type Tx } from '../db/pg.js';
import { LedgerError } from '../ledger/errors.js';
import { AccountTx, type ChargeState } from './account-tx.js';
import type { Clock } from './context.js';
import type { UsageCommand } from './usage-command.js';
import { readChargeStates, remainingOf, subjectKeys, type CarriedDecisions, type ChargeResult, type GroupItem, type HoldOpItem, type ItemOutcome, type Pricer } from './record-usage.js';

/** The charge function of record-usage.ts (`applyCharge`; injected, so tests can put in one that fails). */
export type ApplyCharge = (atx: AccountTx, cmd: UsageCommand, price: Pricer) => Promise<ChargeResult>;

/** The multi-account charge function of record-usage.ts (`chargeAccounts`; injected likewise; `pending`, `statesRead` and `carry` as there). */
export type ChargeAccounts = (
  tx: Tx,
  groups: readonly { atx: AccountTx; items: readonly GroupItem[] }[],
  pending?: Promise<unknown>[],
  statesRead?: Promise<Map<string, ChargeState>>,
  carry?: Map<string, CarriedDecisions>,
) => Promise<ItemOutcome[][]>;

/**
 * Whether a carried state can decide `items`: the account has no budget, or its budgets were read
 * for every agent and user the charges name (one not read for could have a budget).
 */
function carriedCovers(d: CarriedDecisions, items: readonly Pending[]): boolean {
  return !d.hasAnyBudget || items.every((i) => i.kind !== 'charge' || 'op' in i.item || subjectKeys(i.item.cmd).every((k) => d.budgetSubjectsRead.has(k)));
}

/** A waiting charge or hold operation (decided with the account's other items by chargeAccounts). */
interface PendingCharge {
  kind: 'charge';
  item: GroupItem;
  resolve(result: unknown): void;
  reject(error: unknown): void;
}

/** A waiting operation on the locked account (withAccount). */
interface PendingOp {
  kind: 'op';
  fn: (atx: AccountTx) => Promise<unknown>;
  /** Every LedgerError of `fn` comes before its first write and its first change to `atx`: no savepoint needed. */
  refusesBeforeWriting: boolean;
  resolve(value: unknown): void;
  reject(error: unknown): void;
}

type Pending = PendingCharge | PendingOp;

/** How one waiting item ended inside a transaction that committed. */
type Settled = { ok: true; value: unknown } | { ok: false; error: unknown };

/** A charge's outcome as a Settled. */
function toSettled(r: ItemOutcome): Settled {
  return r.ok ? { ok: true, value: r.result } : { ok: false, error: r.error };
}

/** Savepoint name of one operation inside a shared transaction. */
const OP_SAVEPOINT = 'cp_account_op';

/** Counters (for benchmarks and tests). */
export interface GroupCommitStats {
  /** Charge transactions run (a retry alone after a failure is not counted here). */
  transactions: number;
  /** Charges and operations (withAccount) taken into those transactions. */
  charges: number;
  /** Most charges of one account in one transaction. */
  largestGroup: number;
  /** Most accounts in one transaction. */
  largestTransactionAccounts: number;
  /** Charges retried one transaction each after their transaction failed unexpectedly. */
  retriedAlone: number;
  /**
   * Wall time of those charge transactions, summed (milliseconds, from taking the slot to the
   * end of COMMIT, retries included): divided by `transactions`, the mean cycle of one.
   */
  transactionMs: number;
  /** Transactions that committed from the state their account's previous transaction left (no state read). */
  carriedState: number;
  /** Transactions that started from such a state and were rolled back (the account had changed, or a key was recorded before) and run again from a fresh read; not in `carriedState`. */
  carriedStateMisses: number;
  /** Charges and operations waiting for a transaction now. */
  waiting: number;
}

/** Limits of a GroupCommitter. */
export interface GroupCommitOptions {
  /** Charge transactions in flight at once (each holds one pool connection); default 4. */
  maxTransactions?: number;
  /** Most accounts locked by one transaction (bounds lock hold time and statement size); default 100. */
  maxAccountsPerTransaction?: number;
  /** Most charges of one account per transaction (bounds memory); default 200. */
  maxChargesPerAccount?: number;
  /**
   * Lets an account's next transaction start from the state its previous one left, when charges
   * of it are already waiting (a hot account): one round trip instead of two; default true.
   */
  carryState?: boolean;
}

/** See the module comment. */
export class GroupCommitter {
  /** Accounts with waiting charges, in the order their first waiting charge arrived. */
  private readonly waiting = new Map<string, Pending[]>();
  private readonly inFlight = new Set<string>();
  private running = 0;
  private readonly counters: Omit<GroupCommitStats, 'waiting'> = { transactions: 0, charges: 0, largestGroup: 0, largestTransactionAccounts: 0, retriedAlone: 0, transactionMs: 0, carriedState: 0, carriedStateMisses: 0 };
  private readonly maxTransactions: number;
  private readonly maxAccounts: number;
  private readonly maxCharges: number;
  private readonly carryState: boolean;
  /**
   * Carried state: per account, what its last transaction left (the balance row as it committed
   * it, its spendable batches and budgets after its charges), kept only when charges of the account
   * were already waiting as it committed, and taken (removed) by the account's next transaction.
   */
  private readonly carried = new Map<string, { row: Record<string, unknown>; decisions: CarriedDecisions }>();

  /**
   * @param pool the ledger's pg pool
   * @param clock wall clock (the account's own clock applies inside AccountTx)
   * @param chargeGroups chargeAccounts: the charges of several locked accounts in one transaction
   * @param apply applyCharge: one charge alone (the last retry after an unexpected failure)
   * @param opts limits (GroupCommitOptions)
   */
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
    private readonly chargeGroups: ChargeAccounts,
    private readonly apply: ApplyCharge,
    opts: GroupCommitOptions = {},
  ) {
    this.maxTransactions = opts.maxTransactions ?? 4;
    this.maxAccounts = opts.maxAccountsPerTransaction ?? 100;
    this.maxCharges = opts.maxChargesPerAccount ?? 200;
    this.carryState = opts.carryState ?? true;
  }

  /**
   * Charges `cmd`, in one transaction with other waiting charges (its account's and others').
   * @throws what applyCharge throws for this charge (LedgerError refusals, NOT_FOUND for an
   *   unknown account), or the database error of its own retry.
   */
  charge(cmd: UsageCommand, price: Pricer): Promise<ChargeResult> {
    return new Promise<ChargeResult>((resolve, reject) =>
      this.enqueue(cmd.accountId, { kind: 'charge', item: { cmd, price }, resolve: resolve as (value: unknown) => void, reject }),
    );
  }

  /**
   * Performs the hold operation `item` (a hold, or a settle without usage) on account
   * `accountId`, decided in memory with the account's waiting charges (chargeAccounts), in one
   * transaction with other waiting items.
   * @returns what the operation returns, once its transaction committed.
   * @throws its refusals (LedgerError), NOT_FOUND for an unknown account, or the database error
   *   of its own retry.
   */
  holdOp<T>(accountId: string, item: HoldOpItem<T>): Promise<T> {
    return new Promise<T>((resolve, reject) =>
      this.enqueue(accountId, { kind: 'charge', item: item as HoldOpItem, resolve: resolve as (value: unknown) => void, reject }),
    );
  }

  /**
   * Runs `fn` on the locked account `accountId`, in one transaction with other waiting charges
   * and operations. `fn` must not call `finish` (the transaction writes every account's balance
   * once) and must not lock other accounts. A LedgerError thrown by `fn` rolls back what `fn`
   * wrote (savepoint) and is the result; so is NOT_FOUND for an unknown account.
   * @param opts.refusesBeforeWriting `fn` throws LedgerErrors only before its first write and its
   *   first change to `atx` (as applyCharge does), so it runs without a savepoint (two round trips
   *   fewer); a LedgerError after a write would then commit that write: only promise what holds.
   * @returns what `fn` returned, once its transaction committed.
   */
  withAccount<T>(accountId: string, fn: (atx: AccountTx) => Promise<T>, opts: { refusesBeforeWriting?: boolean } = {}): Promise<T> {
    return new Promise<T>((resolve, reject) =>
      this.enqueue(accountId, { kind: 'op', fn, refusesBeforeWriting: opts.refusesBeforeWriting === true, resolve: resolve as (value: unknown) => void, reject }),
    );
  }

  private enqueue(accountId: string, item: Pending): void {
    const queue = this.waiting.get(accountId);
    if (queue) queue.push(item);
    else this.waiting.set(accountId, [item]);
    this.pump();
  }

  /** Current counters. */
  stats(): GroupCommitStats {
    let waiting = 0;
    for (const queue of this.waiting.values()) waiting += queue.length;
    return { ...this.counters, waiting };
  }

  /** Starts transactions while a slot is free and some waiting account is not in flight. */
  private pump(): void {
    while (this.running < this.maxTransactions) {
      const take: [string, Pending[]][] = [];
      for (const [accountId, queue] of this.waiting) {
        if (this.inFlight.has(accountId)) continue;
        take.push([accountId, queue.splice(0, this.maxCharges)]);
        if (queue.length === 0) this.waiting.delete(accountId);
        if (take.length >= this.maxAccounts) break;
      }
      if (take.length === 0) return;
      this.running++;
      for (const [accountId, group] of take) {
        this.inFlight.add(accountId);
        this.counters.charges += group.length;
        this.counters.largestGroup = Math.max(this.counters.largestGroup, group.length);
      }
      this.counters.transactions++;
      this.counters.largestTransactionAccounts = Math.max(this.counters.largestTransactionAccounts, take.length);
      const startedMs = performance.now();
      void this.run(take).finally(() => {
        this.counters.transactionMs += performance.now() - startedMs;
        this.running--;
        for (const [accountId] of take) this.inFlight.delete(accountId);
        this.pump();
      });
    }
  }

  /**
   * Runs `take` as one transaction; settles every item in it (never rejects).
   *
   * Carried state: a transaction of ONE account whose items are all charges without a
   * reservation, for which the account's previous transaction left its state (`carried`; on an
   * account with a budget, only when the items name no agent or user that state was not read
   * for), skips the state read: it decides from that state and sends the guarded lock (AccountTx.lockCarried),
   * the writes and COMMIT in one round trip. Idempotency keys are then not looked up: a key
   * recorded earlier makes the event insert fail on its unique key. Either failure (or any other)
   * rolls the transaction back and runs the same items again from a fresh read
   * (`carriedState` = false), so the outcome is what the two-round-trip path decides.
   */
  private async run(take: readonly [string, Pending[]][], carriedState = true, retryUnavailable = true): Promise<void> {
    let outcomes: Map<string, Settled[]>;
    const lone =
      this.carryState &&
      take.length === 1 &&
      take[0]![1].every((i) => i.kind === 'charge' && !('op' in i.item) && !i.item.cmd.reservationId);
    const left = lone && carriedState ? this.carried.get(take[0]![0]) : undefined;
    const from = left && carriedCovers(left.decisions, take[0]![1]) ? left : undefined;
    for (const [accountId] of take) this.carried.delete(accountId);
    let carry: (() => void) | undefined;
    try {
      outcomes = await withTransaction(this.pool, async (tx) => {
        carry = undefined;
        const now = this.clock();
        // Accounts with charges (and hold operations) only are decided together, in one read and
        // one write for all; their state read goes out behind the lock, in the same round trip as
        // BEGIN and the lock (readChargeStates).
        const chargeItems = new Map(
          take.flatMap(([accountId, items]) => (items.every((i) => i.kind === 'charge') ? [[accountId, (items as PendingCharge[]).map((p) => p.item)] as const] : [])),
        );
        let locking: Promise<Map<string, AccountTx>>;
        let statesRead: Promise<Map<string, ChargeState>> | undefined;
        let guard: Promise<unknown> | undefined;
        if (from) {
          const { atx, locked } = AccountTx.lockCarried(tx, from.row, now);
          guard = locked;
          locking = Promise.resolve(new Map([[atx.accountId, atx]]));
          const d = from.decisions;
          const batches = d.batches.filter((b) => b.remainingMicroCredits > 0n && (b.expiresAt === null || b.expiresAt > atx.now));
          // Only some of the batches were carried (AccountTx SPENDABLE_BATCHES_READ): their sum
          // holds while none of them has expired; once one may have, the state is read
          // afresh (behind the lock and the guard, in the same round trip).
          const complete = d.batchesComplete;
          const stale = !complete && d.earliestExpiryAt !== null && d.earliestExpiryAt.getTime() <= atx.now.getTime();
          const state: ChargeState = {
            now: atx.now,
            batches,
            spendableMicroCredits: complete ? remainingOf(batches) : d.spendableMicroCredits,
            batchesComplete: complete,
            earliestExpiryAt: d.earliestExpiryAt,
            reservedMicroCredits: 0n,
            hasAnyBudget: d.hasAnyBudget,
            priorUsage: new Map(),
            priorUsageRead: false,
            reservations: new Map(),
            priorHolds: new Map(),
            budgets: d.budgets,
            budgetSubjectsRead: d.budgetSubjectsRead,
          };
          statesRead = stale
            ? readChargeStates(tx, [{ accountId: atx.accountId, items: chargeItems.get(atx.accountId)! }], now)
            : Promise.resolve(new Map([[atx.accountId, state]]));
        } else {
          // One account: the single-row lock (its plan is the lone charge's); several: one
          // statement in id order, so two transactions holding several locks cannot deadlock.
          locking =
            take.length === 1
              ? AccountTx.lock(tx, take[0]![0], now).then((atx) => new Map([[atx.accountId, atx]]))
              : AccountTx.lockMany(tx, take.map(([accountId]) => accountId), now);
          statesRead = chargeItems.size > 0 ? readChargeStates(tx, [...chargeItems].map(([accountId, items]) => ({ accountId, items })), now) : undefined;
        }
        const locked = await locking;
        const found = take.flatMap(([accountId, items]) => {
          const atx = locked.get(accountId);
          return atx ? [{ atx, items }] : [];
        });
        const settled = new Map<string, Settled[]>();
        // The writes are not awaited: they go out with COMMIT, in one round trip (PipelinedCommit).
        const pending: Promise<unknown>[] = [];
        const chargesOnly = found.filter((g) => chargeItems.has(g.atx.accountId));
        if (chargesOnly.length > 0) {
          const leaves = lone ? new Map<string, CarriedDecisions>() : undefined;
          const charged = await this.chargeGroups(
            tx,
            chargesOnly.map((g) => ({ atx: g.atx, items: chargeItems.get(g.atx.accountId)! })),
            pending,
            statesRead,
            leaves,
          );
          const atx = chargesOnly[0]!.atx;
          const decisions = leaves?.get(atx.accountId);
          if (decisions) {
            carry = () => {
              const row = atx.carriedRow(versions.get(atx.accountId)!);
              if (row && this.waiting.has(atx.accountId)) this.carried.set(atx.accountId, { row, decisions });
            };
          }
          chargesOnly.forEach((g, i) => settled.set(g.atx.accountId, charged[i]!.map(toSettled)));
        }
        // Accounts with operations: their items in arrival order (inOrder), after the charges'
        // writes have answered (so a failed write is reported as itself, not as the 25P02 of the
        // operation's statement behind it).
        const alone = found.length === 1 && found[0]!.items.length === 1;
        for (const { atx, items } of found) {
          if (settled.has(atx.accountId)) continue;
          await awaitInOrder(pending.splice(0));
          settled.set(atx.accountId, await this.inOrder(tx, atx, items, alone));
        }
        const versions = await AccountTx.finishMany(tx, [...locked.values()], pending); // one version and snapshot per account
        if (guard) pending.unshift(guard); // the lock went out first; its failure is the one to report
        return new PipelinedCommit(pending, () => settled);
      });
    } catch (error) {
      if (isDatabaseUnavailable(error)) {
        // Not any item's fault: the database is gone, dropped the connection or timed out.
        // Splitting the transaction by account and by item would only repeat the failure, or
        // the wait, once per account and item (a group of 200 charges stuck behind a lock
        // would wait 201 statement timeouts). A lost connection gets one more try of the whole
        // transaction on another; then, and after a timeout at once, every item gets the error
        // (answered UNAVAILABLE: retry with the same key).
        if (retryUnavailable && !isStatementTimeout(error)) return this.run(take, false, false);
        for (const [, group] of take) for (const item of group) item.reject(error);
        return;
      }
      if (from) {
        this.counters.carriedStateMisses++;
        return this.run(take, false); // the account changed meanwhile, or a key was recorded before: decide from a fresh read
      }
      if (take.length > 1) {
        for (const one of take) await this.run([one]); // find the faulty account
        return;
      }
      const group = take[0]![1];
      if (error instanceof LedgerError) {
        for (const item of group) item.reject(error); // e.g. NOT_FOUND account, or a lone operation's refusal
        return;
      }
      this.counters.retriedAlone += group.length;
      for (const item of group) await this.runAlone(take[0]![0], item);
      return;
    }
    if (from) this.counters.carriedState++;
    carry?.();
    for (const [accountId, group] of take) {
      const out = outcomes.get(accountId);
      if (!out) {
        for (const item of group) item.reject(new LedgerError('NOT_FOUND', 'account not found'));
        continue;
      }
      out.forEach((o, i) => (o.ok ? group[i]!.resolve(o.value) : group[i]!.reject(o.error)));
    }
  }

  /**
   * The items of one locked account that has operations, in arrival order: each run of charges
   * together (chargeGroups), each operation under a savepoint, except when it refuses only before
   * writing or is the transaction's only item (then its refusal rolls back the whole transaction,
   * which is just that operation).
   * @throws unexpected errors, and an `alone` operation's LedgerError (the caller rolls back).
   */
  private async inOrder(tx: Tx, atx: AccountTx, items: readonly Pending[], alone: boolean): Promise<Settled[]> {
    const out: Settled[] = [];
    for (let i = 0; i < items.length; ) {
      const item = items[i]!;
      if (item.kind === 'charge') {
        let j = i;
        while (j < items.length && items[j]!.kind === 'charge') j++;
        const charged = await this.chargeGroups(tx, [{ atx, items: (items.slice(i, j) as PendingCharge[]).map((p) => p.item) }]);
        out.push(...charged[0]!.map(toSettled));
        i = j;
        continue;
      }
      i++;
      if (alone) {
        out.push({ ok: true, value: await item.fn(atx) });
        continue;
      }
      const savepoint = !item.refusesBeforeWriting;
      const mark = atx.checkpoint();
      if (savepoint) await tx.query(`SAVEPOINT ${OP_SAVEPOINT}`);
      try {
        const value = await item.fn(atx);
        if (savepoint) await tx.query(`RELEASE SAVEPOINT ${OP_SAVEPOINT}`);
        out.push({ ok: true, value });
      } catch (error) {
        if (!(error instanceof LedgerError)) throw error;
        if (savepoint) {
          await tx.query(`ROLLBACK TO SAVEPOINT ${OP_SAVEPOINT}`);
          atx.rollbackTo(mark);
        }
        out.push({ ok: false, error });
      }
    }
    return out;
  }

  /** One charge (applyCharge), hold operation (`alone`) or operation in a transaction of its own; settles it. */
  private async runAlone(accountId: string, item: Pending): Promise<void> {
    try {
      const value = await withTransaction(this.pool, async (tx) => {
        const atx = await AccountTx.lock(tx, accountId, this.clock());
        const result =
          item.kind === 'op' ? await item.fn(atx) : 'op' in item.item ? await item.item.alone(atx) : await this.apply(atx, item.item.cmd, item.item.price);
        await atx.finish();
        return result;
      });
      item.resolve(value);
    } catch (error) {
      item.reject(error);
    }
  }
}
