/**
 * Group commit of charges on one account (issue #6: "batching concurrent charges for one account
 * into one transaction"). Every charge of an account serializes on its balance row anyway; when
 * charges arrive while one is in flight, this process queues them and runs the queue as ONE
 * transaction: one BEGIN, one lock, one read of the account's state, one multi-row write of the
 * events and one balance update with its outbox snapshot, one COMMIT (one WAL flush) for the
 * whole group (record-usage.ts `applyCharges`). Refusals stay per charge, idempotency keys still
 * dedupe inside a group (a repeated key replays the first item's event), and every charge still
 * gets its own `usageRecorded` update; the balance version moves once per group, which the
 * contract allows ("increases by at least 1 on every change").
 *
 * Nothing waits for a group to fill: the first charge of an idle account runs at once; charges
 * that arrive meanwhile form the next group. If a group's transaction fails unexpectedly (not a
 * refusal), each of its charges is retried alone, so one bad item fails alone.
 */
import type pg from 'pg';
import { withTransaction } from '../db/pg.js';
import { LedgerError } from '../ledger/errors.js';
import type { PricedUsage } from '../pricing/price-book.js';
import { AccountTx } from './account-tx.js';
import type { Clock } from './context.js';
import type { UsageCommand } from './usage-command.js';
import type { BatchItemResult, ChargeItem, ChargeResult } from './record-usage.js';

/** The charge function of record-usage.ts (injected to avoid an import cycle). */
export type ApplyCharge = (atx: AccountTx, cmd: UsageCommand, price: () => { priced: PricedUsage; version: number }) => Promise<ChargeResult>;

/** The group charge function of record-usage.ts (`applyCharges`; injected likewise). */
export type ApplyCharges = (atx: AccountTx, items: readonly ChargeItem[]) => Promise<BatchItemResult[]>;

interface Pending {
  cmd: UsageCommand;
  price: () => { priced: PricedUsage; version: number };
  resolve(result: ChargeResult): void;
  reject(error: unknown): void;
}

/** Counters (for benchmarks): groups run and charges in them. */
export interface GroupCommitStats {
  groups: number;
  charges: number;
  largestGroup: number;
  /** Charges retried one transaction each after their group's transaction failed unexpectedly. */
  retriedAlone: number;
}

/** See the module comment. */
export class GroupCommitter {
  private readonly queues = new Map<string, Pending[]>();
  private readonly counters: GroupCommitStats = { groups: 0, charges: 0, largestGroup: 0, retriedAlone: 0 };

  /**
   * @param pool the ledger's pg pool
   * @param clock wall clock (the account's own clock applies inside AccountTx)
   * @param applyGroup applyCharges: a group's charges in one transaction
   * @param apply applyCharge: one charge alone (the retry after an unexpected failure)
   * @param maxGroup most charges per transaction (bounds lock hold time and memory)
   */
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
    private readonly applyGroup: ApplyCharges,
    private readonly apply: ApplyCharge,
    private readonly maxGroup = 200,
  ) {}

  /**
   * Charges `cmd`, in a group with the other charges of its account that are waiting.
   * @throws what applyCharge throws for this charge (LedgerError refusals), or the database
   *   error of its own retry.
   */
  charge(cmd: UsageCommand, price: () => { priced: PricedUsage; version: number }): Promise<ChargeResult> {
    return new Promise((resolve, reject) => {
      const queue = this.queues.get(cmd.accountId);
      if (queue) {
        queue.push({ cmd, price, resolve, reject });
        return;
      }
      const fresh: Pending[] = [{ cmd, price, resolve, reject }];
      this.queues.set(cmd.accountId, fresh);
      void this.drain(cmd.accountId, fresh);
    });
  }

  /** Current counters. */
  stats(): GroupCommitStats {
    return { ...this.counters };
  }

  private async drain(accountId: string, queue: Pending[]): Promise<void> {
    while (queue.length > 0) {
      const group = queue.splice(0, this.maxGroup);
      this.counters.groups++;
      this.counters.charges += group.length;
      this.counters.largestGroup = Math.max(this.counters.largestGroup, group.length);
      await this.runGroup(accountId, group);
    }
    this.queues.delete(accountId);
  }

  private async runGroup(accountId: string, group: Pending[]): Promise<void> {
    let outcomes: BatchItemResult[];
    try {
      outcomes = await withTransaction(this.pool, async (tx) => {
        const atx = await AccountTx.lock(tx, accountId, this.clock());
        const results = await this.applyGroup(atx, group);
        await atx.finish(); // one balance version and outbox snapshot for the group
        return results;
      });
    } catch (error) {
      if (error instanceof LedgerError && group.length === 1) {
        group[0]!.reject(error); // e.g. NOT_FOUND account
        return;
      }
      // Unexpected (or a whole-group refusal such as an unknown account): each charge alone.
      this.counters.retriedAlone += group.length;
      for (const item of group) {
        try {
          item.resolve(
            await withTransaction(this.pool, async (tx) => {
              const atx = await AccountTx.lock(tx, accountId, this.clock());
              const result = await this.apply(atx, item.cmd, item.price);
              await atx.finish();
              return result;
            }),
          );
        } catch (itemError) {
          item.reject(itemError);
        }
      }
      return;
    }
    outcomes.forEach((o, i) => (o.ok ? group[i]!.resolve(o.result) : group[i]!.reject(o.error)));
  }
}
