/**
 * voidGrant: an operator revokes a grant; its batch's unused remainder is removed (VOID entry)
 * and the batch becomes VOIDED. Idempotent: voiding a voided grant returns it unchanged.
 */
import { withTransaction, toBigInt } from '../db/pg.js';
import { badInput } from '../ledger/errors.js';
import { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';

/**
 * Voids a grant.
 * @param grantId the grant's database id.
 * @param reason free text, 1..500 characters, kept on the grant.
 * @returns the grant id.
 * @throws LedgerError NOT_FOUND, BAD_USER_INPUT (empty reason).
 */
export async function voidGrant(ctx: ServiceContext, grantId: string, reason: string): Promise<string> {
  if (!reason.trim() || reason.length > 500) throw badInput('reason', 'must be 1 to 500 characters');
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lockOwner(tx, 'credit_grants', grantId, 'grant', ctx.clock());
    const { rows } = await tx.query(
      `SELECT g.voided_at, b.id AS batch_id, b.status, b.remaining_micro_credits
         FROM credit_grants g JOIN credit_batches b ON b.grant_id = g.id WHERE g.id = $1`,
      [grantId],
    );
    const row = rows[0];
    if (row.voided_at) return grantId;
    const remaining = row.status === 'ACTIVE' ? toBigInt(row.remaining_micro_credits) : 0n;
    await tx.query('UPDATE credit_grants SET voided_at = $2, void_reason = $3 WHERE id = $1', [grantId, atx.now, reason]);
    {
      await tx.query(
        `UPDATE credit_batches SET remaining_micro_credits = 0, status = 'VOIDED', updated_at = $2 WHERE id = $1 AND status IN ('ACTIVE', 'EXHAUSTED')`,
        [row.batch_id, atx.now],
      );
    }
    atx.addEntry({ type: 'VOID', amountMicroCredits: -remaining, batchId: row.batch_id as string, note: reason });
    await atx.finish();
    return grantId;
  });
}
