/**
 * refundUsage: gives a usage event's credit back to the batches it came from (contract:
 * expired ones excepted; voided ones too, since an operator removed them) and marks the event
 * refunded. The part of the cost that became debt is forgiven (up to the current debt); what later
 * grants already repaid of it comes back as a grant of its own (returnRepaidDebt). Its cost is
 * taken off its agent's / user's kept budget spending (spending-budgets.ts).
 * Refunding a refunded event returns it unchanged.
 */
import { withTransaction, toBigInt } from '../db/pg.js';
import { badInput } from '../ledger/errors.js';
import { minBig } from '../ledger/credits.js';
import { AccountTx } from './account-tx.js';
import { moveBudgetSpend } from './spending-budgets.js';
import { applyGrant } from './grant-credits.js';
import type { CreditType } from '../ledger/drawdown.js';
import { monthlyPeriodAt } from '../ledger/billing-period.js';
import type { ServiceContext } from './context.js';

/**
 * The part of a refunded event's debt that later grants already repaid (DEBT_REPAY) comes back
 * as credit, so a refund always gives the event's whole cost back (the parts drawn from expired or
 * voided batches excepted, as for the rest of the event). It is a grant of its own (source
 * ADJUSTMENT, reference `refund of usage event <id>`, idempotency key
 * `refund-repaid-debt:<event id>`), of the type and expiry of the batch of the account's latest
 * DEBT_REPAY entry: the credit that paid the debt, as far as the ledger can tell (repayments are
 * per account, not per event). If that batch has expired or was voided, nothing comes back, as
 * for a drawdown from such a batch. `amountMicroCredits` > 0.
 * @throws LedgerError only what applyGrant throws (not expected here: the key is the event's own).
 */
async function returnRepaidDebt(atx: AccountTx, usageEventId: string, amountMicroCredits: bigint): Promise<void> {
  const { rows } = await atx.tx.query(
    `SELECT b.type, b.expires_at, b.status FROM ledger_entries l JOIN credit_batches b ON b.id = l.batch_id
      WHERE l.account_id = $1 AND l.type = 'DEBT_REPAY' ORDER BY l.seq DESC LIMIT 1`,
    [atx.accountId],
  );
  const repaidBy = rows[0] as { type: CreditType; expires_at: Date | null; status: string } | undefined;
  if (repaidBy && (repaidBy.status === 'VOIDED' || repaidBy.status === 'EXPIRED' || (repaidBy.expires_at && repaidBy.expires_at.getTime() <= atx.now.getTime()))) return;
  await applyGrant(atx, {
    amountMicroCredits,
    type: repaidBy?.type ?? 'PAID',
    source: 'ADJUSTMENT',
    expiresAt: repaidBy?.expires_at ?? null,
    reference: `refund of usage event ${usageEventId}`,
    idempotencyKey: `refund-repaid-debt:${usageEventId}`,
  });
}

/**
 * Refunds an event.
 * @returns the event id.
 * @throws LedgerError NOT_FOUND, BAD_USER_INPUT (reason empty or > 500 characters).
 */
export async function refundUsage(ctx: ServiceContext, usageEventId: string, reason: string): Promise<string> {
  if (!reason.trim() || reason.length > 500) throw badInput('reason', 'must be 1 to 500 characters');
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lockOwner(tx, 'usage_events', usageEventId, 'usage event', ctx.clock());
    const ev = await tx.query('SELECT refunded_at, debt_micro_credits, agent_id, user_id, cost_micro_credits, recorded_at FROM usage_events WHERE id = $1', [usageEventId]);
    if (ev.rows[0].refunded_at) return usageEventId;
    const { rows } = await tx.query(
      `SELECT d.batch_id, d.amount_micro_credits, b.status, b.expires_at
         FROM drawdowns d JOIN credit_batches b ON b.id = d.batch_id
        WHERE d.usage_event_id = $1 ORDER BY d.position`,
      [usageEventId],
    );
    const ids: string[] = [];
    const amounts: string[] = [];
    for (const r of rows) {
      const expired = r.status === 'EXPIRED' || r.status === 'VOIDED' || (r.expires_at && (r.expires_at as Date).getTime() <= atx.now.getTime());
      if (expired) continue;
      const amount = toBigInt(r.amount_micro_credits);
      ids.push(r.batch_id as string);
      amounts.push(amount.toString());
      atx.addEntry({ type: 'REFUND', amountMicroCredits: amount, batchId: r.batch_id as string, usageEventId, note: reason });
    }
    if (ids.length > 0) {
      await tx.query(
        `UPDATE credit_batches b SET remaining_micro_credits = b.remaining_micro_credits + d.amount, status = 'ACTIVE', updated_at = $3
           FROM unnest($1::uuid[], $2::bigint[]) AS d(batch_id, amount) WHERE b.id = d.batch_id`,
        [ids, amounts, atx.now],
      );
    }
    const eventDebt = toBigInt(ev.rows[0].debt_micro_credits);
    const forgiven = minBig(eventDebt, atx.debt);
    if (forgiven > 0n) {
      atx.debt -= forgiven;
      atx.addEntry({ type: 'REFUND', amountMicroCredits: forgiven, usageEventId, note: `${reason} (debt forgiven)` });
    }
    if (eventDebt > forgiven) await returnRepaidDebt(atx, usageEventId, eventDebt - forgiven);
    await tx.query('UPDATE usage_events SET refunded_at = $2, refund_reason = $3 WHERE id = $1', [usageEventId, atx.now, reason]);
    const e = ev.rows[0];
    await moveBudgetSpend(
      atx,
      { agentId: e.agent_id as string | null, userId: e.user_id as string | null },
      monthlyPeriodAt(atx.billingAnchorAt, e.recorded_at as Date).start,
      -toBigInt(e.cost_micro_credits),
    );
    atx.touch();
    await atx.finish();
    return usageEventId;
  });
}
