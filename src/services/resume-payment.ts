/**
 * Resuming purchase payments left PENDING (issue #4): a purchase whose provider answer was lost
 * (timeout, crash between the charge and its settlement) stays PENDING until someone calls
 * purchaseCreditPack again with the same key. A client that never does would leave the customer
 * charged and never credited, so the `sweep-due` maintenance job offers every PURCHASE payment
 * PENDING for longer than PAYMENT_RESUME_AFTER_SECONDS to the `resume-payment` job
 * (jobId `resume-payment-<payment id>`), whose processor calls {@link resumePayment}.
 *
 * Resuming sends the payment's recorded provider request again with its id as the idempotency
 * key (services/purchase-pack.ts completePurchase): a charge that happened is answered, not
 * repeated, and becomes its grant exactly once (grant key `payment:<payment id>`); a decline marks
 * the payment FAILED. Past IDEMPOTENCY_KEY_SAFE_WINDOW_MS the charge is only looked up, never
 * sent again; finding none leaves it PENDING (retried like a timeout) until LOOKUP_SETTLE_DELAY_MS
 * after its last send, then marks it FAILED `no_charge_found`. AUTO_TOP_UP payments are not resumed here: their `auto-top-up` job does it (the
 * sweep re-adds it), because their outcome also updates the top-up.
 */
import type pg from 'pg';
import { isBalanceLimitRefusal } from '../ledger/refusals.js';
import { PaymentTimeoutError } from '../payments/provider.js';
import { completePurchase, findPayment, requireProvider, type PaymentRow } from './purchase-pack.js';
import type { ServiceContext } from './context.js';

/** What one resume did: the payment's status after it, and why it is still PENDING if it is. */
export interface ResumePaymentResult {
  paymentId: string;
  status: PaymentRow['status'] | 'NOT_FOUND';
  /** Why it is still PENDING (provider timeout, balance limit), else null. */
  reason: string | null;
}

/**
 * PURCHASE payments PENDING since before `wallNow - graceSeconds` (wall clock), oldest first:
 * the `resume-payment` jobs the sweep (re-)adds.
 * @param graceSeconds how long a purchase may stay PENDING before it is resumed (PAYMENT_RESUME_AFTER_SECONDS).
 * @returns at most `limit` jobs `{ name: 'resume-payment', jobId: 'resume-payment-<id>', data: { paymentId, accountId } }`.
 */
export async function findPaymentsToResume(db: pg.Pool, wallNow: Date, graceSeconds: number, limit = 1_000) {
  const { rows } = await db.query(
    `SELECT id, account_id FROM payments
      WHERE status = 'PENDING' AND purpose = 'PURCHASE' AND created_at < $1::timestamptz - make_interval(secs => $2)
      ORDER BY created_at LIMIT $3`,
    [wallNow, graceSeconds, limit],
  );
  return rows.map((r) => ({
    name: 'resume-payment' as const,
    jobId: `resume-payment-${r.id as string}`,
    data: { paymentId: r.id as string, accountId: r.account_id as string },
  }));
}

/**
 * Resumes one PENDING purchase payment (module comment). A payment that is not PENDING (settled
 * by a retry of the client, or by a concurrent resume) or not a purchase is left alone.
 * @returns its status after this call; PENDING with a reason when the provider did not answer
 *   definitely, found no charge too soon after the last send, or the grant would pass the
 *   balance limit (the caller retries later).
 * @throws LedgerError UNAVAILABLE when no provider is configured; errors of the provider that are
 *   not a timeout (e.g. a request it refuses) and database errors.
 */
export async function resumePayment(ctx: ServiceContext, paymentId: string): Promise<ResumePaymentResult> {
  const provider = requireProvider(ctx);
  const payment = await findPayment(ctx.pool, paymentId);
  if (!payment) return { paymentId, status: 'NOT_FOUND', reason: null };
  if (payment.status !== 'PENDING' || payment.purpose !== 'PURCHASE') return { paymentId, status: payment.status, reason: null };
  try {
    const after = await completePurchase(ctx, provider, payment);
    return { paymentId, status: after.status, reason: after.error };
  } catch (err) {
    if (err instanceof PaymentTimeoutError) return { paymentId, status: 'PENDING', reason: `payment provider timed out: ${err.message}` };
    if (isBalanceLimitRefusal(err)) return { paymentId, status: 'PENDING', reason: err.message };
    throw err;
  }
}
