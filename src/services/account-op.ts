/**
 * One operation on one locked account, in whichever transaction the service is configured for:
 * with `ctx.groupCommit` (CHARGE_PATH=group) in a transaction shared with other waiting charges
 * and operations (group-commit.ts `withAccount`, under a savepoint), otherwise in a transaction
 * of its own. Either way the account's balance row is locked while `fn` runs, `fn`'s ledger
 * entries, balance and outbox rows commit together, and a LedgerError thrown by `fn` leaves no
 * trace.
 */
import { withTransaction } from '../db/pg.js';
import { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';

/**
 * Runs `fn` with the account `accountId` locked, then writes its balance (`finish`) and commits.
 * `fn` must not call `finish` itself nor lock other accounts.
 * @param opts.refusesBeforeWriting see GroupCommitter.withAccount (skips the savepoint).
 * @returns what `fn` returned, after commit.
 * @throws LedgerError NOT_FOUND when the account does not exist; whatever `fn` throws.
 */
export function onAccount<T>(
  ctx: ServiceContext,
  accountId: string,
  fn: (atx: AccountTx) => Promise<T>,
  opts: { refusesBeforeWriting?: boolean } = {},
): Promise<T> {
  if (ctx.groupCommit) return ctx.groupCommit.withAccount(accountId, fn, opts);
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, accountId, ctx.clock());
    const result = await fn(atx);
    await atx.finish();
    return result;
  });
}
