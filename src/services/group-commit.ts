/**
 * Group commit of charges on one account (issue #6: "batching concurrent charges for one account
 * into one transaction"). Every charge of an account serializes on its balance row anyway; when
 * charges arrive while one is in flight, this process queues them and runs the queue as ONE
 * transaction: one BEGIN, one lock, one COMMIT (one WAL flush) for the whole group, and per
 * charge only its own statements (its state, its writes, its balance version with its outbox
 * snapshot). So each charge still gets its own balance version and live update, refusals stay
 * per charge (applyCharge refuses before it writes), and idempotency keys still dedupe inside a
 * group (a later item sees the earlier item's insert in the same transaction).
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
import type { ChargeResult } from './record-usage.js';

/** The charge function of record-usage.ts (injected to avoid an import cycle). */
export type ApplyCharge = (atx: AccountTx, cmd: UsageCommand, price: () => { priced: PricedUsage; version: number }) => Promise<ChargeResult>;

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
}

/** See the module comment. */
export class GroupCommitter {
  private readonly queues = new Map<string, Pending[]>();
  private readonly counters: GroupCommitStats = { groups: 0, charges: 0, largestGroup: 0 };

  /**
   * @param pool the ledger's pg pool
   * @param clock wall clock (the account's own clock applies inside AccountTx)
   * @param apply applyCharge
   * @param maxGroup most charges per transaction (bounds lock hold time and memory)
   */
  constructor(
    private readonly pool: pg.Pool,
    private readonly clock: Clock,
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
    let outcomes: Array<{ ok: true; result: ChargeResult } | { ok: false; error: unknown }>;
    try {
      outcomes = await withTransaction(this.pool, async (tx) => {
        const results: typeof outcomes = [];
        const atx = await AccountTx.lock(tx, accountId, this.clock());
        for (const item of group) {
          try {
            results.push({ ok: true, result: await this.apply(atx, item.cmd, item.price) });
          } catch (error) {
            if (!(error instanceof LedgerError)) throw error;
            results.push({ ok: false, error });
            continue;
          }
          await atx.finish(); // this charge's own balance version and outbox snapshot
        }
        return results;
      });
    } catch (error) {
      if (error instanceof LedgerError && group.length === 1) {
        group[0]!.reject(error); // e.g. NOT_FOUND account
        return;
      }
      // Unexpected (or a whole-group refusal such as an unknown account): each charge alone.
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
