/**
 * Buying credit packs (issue #4): the account's saved payment method is charged the pack's price
 * and the pack is granted as ONE PAID batch (credits + bonus, source PURCHASE). Also the pieces
 * auto top-up shares (services/auto-top-up.ts): the payment method, charging a `payments` row,
 * settling it.
 *
 * A purchase runs in three steps so that no database transaction waits on the provider:
 * 1. a `payments` row PENDING, unique per (account, idempotency key): the purchase's identity;
 * 2. provider.charge with the payment id as the provider's idempotency key (outside any transaction);
 * 3. one transaction under the account lock: on success the grant (idempotency key
 *    `payment:<payment id>`) and the payment SUCCEEDED with its grant; on a decline the payment
 *    FAILED with the reason.
 * A crash or timeout between 2 and 3 leaves the payment PENDING; calling again with the same key
 * resumes at step 2, and the provider answers the first charge's outcome instead of charging again.
 * The provider request is rebuilt only from what the row recorded at step 1 (payment method,
 * amount; USD; the pack, which never changes): a payment method attached since does not change
 * it, or the provider would refuse the reused key. A purchase the client never retries is resumed
 * by the `resume-payment` job (services/resume-payment.ts). Past IDEMPOTENCY_KEY_SAFE_WINDOW_MS
 * after step 1 the charge is never re-sent, only looked up (provider.lookupCharge); a lookup
 * that finds nothing is a decline (`no_charge_found`) only LOOKUP_SETTLE_DELAY_MS after the
 * request was last sent (`payments.last_sent_at`, written before every send), since a request
 * sent just before the window closed may still be in flight or not searchable yet.
 * Step 1 refuses (BAD_USER_INPUT, nothing charged) a pack that would take the balance above
 * MAX_ABS_MICRO_CREDITS; the grant at step 3 checks again under the account lock.
 */
import { singleLine } from '../ledger/text-input.js';
import type pg from 'pg';
import { withTransaction } from '../db/pg.js';
import { SYSTEM_ACTOR, actorOf, recordAuditEvent, type AuditActor } from '../audit/audit-log.js';
import { toBigInt } from '../db/pg.js';
import { LedgerError, assert, badInput } from '../ledger/errors.js';
import {
  IDEMPOTENCY_KEY_SAFE_WINDOW_MS,
  LOOKUP_SETTLE_DELAY_MS,
  PaymentTimeoutError,
  type ChargeOutcome,
  type PaymentProvider,
} from '../payments/provider.js';
import { providerNameFor } from '../payments/mode-routing.js';
import { AccountTx } from './account-tx.js';
import { applyGrant, balanceRoomError } from './grant-credits.js';
import { rollDuePeriodsFirst } from './plans.js';
import { canonicalUsd, findCreditPack, packGrantMicroCredits, type CreditPackView } from './credit-packs.js';
import type { ServiceContext } from './context.js';
import { paymentGrantKey } from '../ledger/grant-keys.js';
import { applyEarlyReversals, reportEarlyReversals, type AppliedEarlyReversal } from './charge-reversal.js';

const DAY_MS = 86_400_000;
const REFERENCE_RE = /^[A-Za-z0-9_\-./:]{1,255}$/;

/** Why a `payments` row exists. */
export type PaymentPurpose = 'PURCHASE' | 'AUTO_TOP_UP';

/** A `payments` row (amount in USD, canonical decimal string). */
export interface PaymentRow {
  id: string;
  accountId: string;
  purpose: PaymentPurpose;
  idempotencyKey: string;
  packId: string;
  amountUsd: string;
  status: 'PENDING' | 'SUCCEEDED' | 'FAILED';
  providerRef: string | null;
  /** `<reason>: <message>` of a FAILED payment. */
  error: string | null;
  grantId: string | null;
  /**
   * The payment method the provider request is sent with, recorded when the row was made (null
   * only on settled rows from before it was recorded, and on PENDING ones whose account had no
   * method then: those are only ever looked up, see chargePayment).
   */
  paymentMethodRef: string | null;
  /**
   * When the row was made, just before its first charge attempt (wall clock): where the
   * provider's idempotency key starts aging (IDEMPOTENCY_KEY_SAFE_WINDOW_MS).
   */
  createdAt: Date;
  /** When its provider request was last sent (wall clock; written just before each send). */
  lastSentAt: Date;
}

/** A saved payment method as stored. */
export interface PaymentMethodView {
  accountId: string;
  provider: string;
  reference: string;
  createdAt: Date;
}

/** Reads a `payments` row into a PaymentRow. */
export function toPaymentRow(r: Record<string, unknown>): PaymentRow {
  return {
    id: r.id as string,
    accountId: r.account_id as string,
    purpose: r.purpose as PaymentPurpose,
    idempotencyKey: r.idempotency_key as string,
    packId: r.pack_id as string,
    amountUsd: canonicalUsd(String(r.amount_usd)),
    status: r.status as PaymentRow['status'],
    providerRef: (r.provider_ref as string | null) ?? null,
    error: (r.error as string | null) ?? null,
    grantId: (r.grant_id as string | null) ?? null,
    paymentMethodRef: (r.payment_method_ref as string | null) ?? null,
    createdAt: r.created_at as Date,
    lastSentAt: r.last_sent_at as Date,
  };
}

/** The payment with id `paymentId` (uuid) as a PaymentRow, or null when there is none. */
export async function findPayment(db: Pick<pg.Pool, 'query'>, paymentId: string): Promise<PaymentRow | null> {
  const { rows } = await db.query('SELECT * FROM payments WHERE id = $1', [paymentId]);
  return rows[0] ? toPaymentRow(rows[0]) : null;
}

/** The configured provider. @throws LedgerError UNAVAILABLE when this process has none. */
export function requireProvider(ctx: ServiceContext): PaymentProvider {
  if (!ctx.payments) throw new LedgerError('UNAVAILABLE', 'payments are not configured on this server');
  return ctx.payments;
}

/**
 * Saves (or replaces) the account's payment method: the provider's reference to it (Stripe: a
 * PaymentMethod `pm_…`, or `cus_…/pm_…` for one attached to a customer; the simulator takes any),
 * stored with the name of the provider that charges the account's mode (payments/mode-routing.ts:
 * "simulator" for a test-mode account on a live Stripe deployment without STRIPE_TEST_SECRET_KEY).
 * @throws LedgerError NOT_FOUND (account), BAD_USER_INPUT (reference: 1 to 255 of A-Z a-z 0-9 _ - . / :),
 *   UNAVAILABLE (no provider configured).
 */
export async function attachPaymentMethod(ctx: ServiceContext, accountId: string, reference: string): Promise<PaymentMethodView> {
  const provider = requireProvider(ctx);
  const ref = reference.trim();
  if (!REFERENCE_RE.test(ref)) throw badInput('reference', 'must be 1 to 255 characters of A-Z, a-z, 0-9, "_", "-", ".", "/" or ":"');
  const r = await withTransaction(ctx.pool, async (tx) => {
    const { rows } = await tx.query(
      `INSERT INTO payment_methods (account_id, provider, reference, created_at)
       SELECT id, CASE WHEN test_mode THEN $5 ELSE $2 END, $3, $4 FROM accounts WHERE id = $1
       ON CONFLICT (account_id) DO UPDATE SET provider = EXCLUDED.provider, reference = EXCLUDED.reference, created_at = EXCLUDED.created_at
       RETURNING account_id, provider, reference, created_at`,
      [accountId, providerNameFor(provider, false), ref, ctx.clock(), providerNameFor(provider, true)],
    );
    const saved = rows[0];
    if (!saved) throw new LedgerError('NOT_FOUND', 'account not found');
    // The provider only: the reference names a payment credential, which the trail never keeps.
    await recordAuditEvent(tx, actorOf(ctx), { action: 'payment_method.attached', accountId, subjectType: 'payment_method', subjectId: accountId, details: { provider: saved.provider as string } });
    return saved;
  });
  return { accountId: r.account_id as string, provider: r.provider as string, reference: r.reference as string, createdAt: r.created_at as Date };
}

/** The account's saved payment method reference, or null. */
export async function findPaymentMethodRef(db: pg.Pool | pg.PoolClient, accountId: string): Promise<string | null> {
  const { rows } = await db.query('SELECT reference FROM payment_methods WHERE account_id = $1', [accountId]);
  return (rows[0]?.reference as string | undefined) ?? null;
}

/** The `code` of the outcome of a payment the provider has no charge for (looked up, never sent): nothing was taken. */
const NO_CHARGE_FOUND = 'no_charge_found';

/**
 * Charges a PENDING payment (step 2), the payment id being the provider's idempotency key, with
 * exactly the request its row recorded (payment method, amount in USD, the pack's name and id),
 * so a retry or resume is the same request. Before the request goes out, one statement checks
 * that the payment is still PENDING and younger than IDEMPOTENCY_KEY_SAFE_WINDOW_MS at `wallNow`
 * (measured from `created_at`, its first attempt: the provider ages the key from its first use)
 * and records the send in `last_sent_at`. A payment that fails that check (too old: the provider
 * may have forgotten its key; settled meanwhile) or has no recorded payment method is never sent
 * again: its charge is looked up (provider.lookupCharge), and when the provider has none the
 * outcome is a decline with code {@link NO_CHARGE_FOUND}, which {@link settlePayment} records
 * only once LOOKUP_SETTLE_DELAY_MS have passed since the last send. Both the charge and the
 * lookup carry the mode of the payment's account (accounts.test_mode, set at its creation and
 * never changed), so a test-mode account's payment only reaches the test-mode provider.
 * @param db where the send is recorded (not inside the settling transaction: the mark must be
 *   committed before the request goes out, so a concurrent lookup sees it)
 * @param opts.lookupOnly never send the request (again), only look its charge up, as for a
 *   payment too old to send: an auto top-up turned off after its charge went out (auto-top-up.ts).
 * @throws PaymentTimeoutError when the outcome is unknown (the payment stays PENDING).
 */
export async function chargePayment(
  db: pg.Pool,
  provider: PaymentProvider,
  payment: PaymentRow,
  pack: CreditPackView,
  wallNow: Date,
  opts: { lookupOnly?: boolean } = {},
): Promise<ChargeOutcome> {
  const ref = payment.paymentMethodRef;
  // One statement: the send mark (only with a payment method to send with, not for a lookup) and the account's
  // mode, which decides the provider (accounts.test_mode never changes after creation).
  const { rows } = await db.query(
    // GREATEST: a caller that read its clock before waiting for a connection must not move
    // another caller's later send time back (it would shorten the lookup's settle delay).
    // COALESCE (a no-op: status is NOT NULL) keeps the planner on the primary key: a plain
    // `status = 'PENDING' AND created_at > …` also matches the partial index of every account's
    // pending payments (payments_pending_created_at, for resume-payment.ts's sweep), which the
    // ledger pool's generic plan took while the statistics counted no pending payment, and then
    // read every pending payment of the last day at each charge (23,014 rows in
    // test/integration/neighbour-growth-audit.test.ts after a provider outage's 25,000).
    `WITH marked AS (
       UPDATE payments SET last_sent_at = GREATEST(last_sent_at, $2)
        WHERE id = $1 AND $4 AND COALESCE(status, '') = 'PENDING' AND created_at > $2::timestamptz - make_interval(secs => $3)
        RETURNING id
     )
     SELECT a.test_mode, EXISTS (SELECT 1 FROM marked) AS marked FROM accounts a WHERE a.id = $5`,
    [payment.id, wallNow, IDEMPOTENCY_KEY_SAFE_WINDOW_MS / 1000, ref !== null && opts.lookupOnly !== true, payment.accountId],
  );
  assert(rows[0], 'a payment refers to an existing account');
  const testMode = rows[0].test_mode === true;
  if (ref === null || rows[0].marked !== true) {
    const found = await provider.lookupCharge(payment.id, testMode);
    return (
      found ?? {
        status: 'declined',
        code: NO_CHARGE_FOUND,
        message: 'The payment provider has no charge for this payment, and it is too old to be sent again safely.',
      }
    );
  }
  return provider.charge({
    idempotencyKey: payment.id,
    amountUsd: payment.amountUsd,
    paymentMethodRef: ref,
    accountId: payment.accountId,
    testMode,
    description: `${pack.name} (${payment.purpose === 'PURCHASE' ? 'credit pack' : 'automatic top-up'})`,
    metadata: { paymentId: payment.id, packId: pack.id, purpose: payment.purpose },
  });
}

/**
 * Refuses a pack the account's balance cannot take: total + credits + bonus above
 * MAX_ABS_MICRO_CREDITS (read without the lock, before anything is charged; the grant checks
 * again under it).
 * @throws LedgerError BAD_USER_INPUT (field packId, reason BALANCE_LIMIT).
 */
async function assertBalanceRoom(db: pg.Pool | pg.PoolClient, accountId: string, pack: CreditPackView): Promise<void> {
  const { rows } = await db.query('SELECT total_micro_credits FROM balances WHERE account_id = $1', [accountId]);
  if (!rows[0]) return;
  const err = balanceRoomError(toBigInt(rows[0].total_micro_credits), packGrantMicroCredits(pack), 'packId');
  if (err) throw err;
}

/**
 * True when a FAILED payment was settled because a lookup found no charge (not a provider's
 * decline): the one FAILED state a success may still turn into SUCCEEDED ({@link settlePayment}).
 */
export function failedAsNoChargeFound(payment: PaymentRow): boolean {
  return payment.status === 'FAILED' && (payment.error ?? '').startsWith(`${NO_CHARGE_FOUND}: `);
}

/**
 * Records a charge's outcome (step 3) inside the locked account transaction; the caller calls
 * atx.finish(). Success: grants the pack as one PAID batch of credits + bonus (source = the
 * payment's purpose, reference = the payment id, expiring `expiresAfterDays` after the account's
 * now when set, grant idempotency key `payment:<payment id>`) and marks the payment SUCCEEDED
 * with its grant. Decline / requires_action: marks it FAILED with `<reason>: <message>`.
 * A lookup's "no charge found" ({@link NO_CHARGE_FOUND}) is recorded only when the payment's
 * request was last sent more than LOOKUP_SETTLE_DELAY_MS before `wallNow` (checked on the locked
 * row, so a send recorded after the lookup began is seen). A success for a payment already FAILED
 * as `no_charge_found` (a request that was still in flight when the lookup settled it) is not
 * dropped: the money was taken, so it is granted (once: the grant key) and the payment becomes
 * SUCCEEDED; `lateSuccess` tells the caller to log it. A success runs a plan roll that is due
 * first (plans.ts rollDuePeriodsFirst, as before every grant: grant-credits.ts); a payment
 * already settled rolls nothing. A success also applies, in the same
 * transaction, the refunds and disputes the provider reported for the charge before it was
 * settled (services/charge-reversal.ts applyEarlyReversals: the grant just made is voided and the
 * payment records them); `reversals` tells the caller to log them (reportEarlyReversals).
 * @param wallNow the wall clock (the settle delay is measured on it, like `last_sent_at`)
 * @param actor who settles it: the audit trail's actor of what applying early reversals writes
 *   (`system` by default)
 * @returns the payment after this call, whether this call settled it (false: it was already
 *   settled, e.g. by a concurrent run of the same payment, and nothing was done), and whether
 *   it turned a `no_charge_found` payment into SUCCEEDED.
 * @throws PaymentTimeoutError for "no charge found" within the settle delay (the caller keeps the
 *   payment PENDING and tries later, as after a timeout); nothing was written.
 */
export async function settlePayment(
  atx: AccountTx,
  paymentId: string,
  pack: CreditPackView,
  outcome: ChargeOutcome,
  wallNow: Date,
  actor: AuditActor = SYSTEM_ACTOR,
): Promise<SettledPayment> {
  const { rows } = await atx.tx.query('SELECT * FROM payments WHERE id = $1 AND account_id = $2 FOR UPDATE', [paymentId, atx.accountId]);
  const current = toPaymentRow(rows[0]);
  const lateSuccess = outcome.status === 'succeeded' && failedAsNoChargeFound(current);
  if (current.status !== 'PENDING' && !lateSuccess) return { payment: current, settledNow: false, lateSuccess: false, reversals: [] };
  if (outcome.status === 'declined' && outcome.code === NO_CHARGE_FOUND) {
    const sinceSentMs = wallNow.getTime() - current.lastSentAt.getTime();
    if (sinceSentMs <= LOOKUP_SETTLE_DELAY_MS) {
      throw new PaymentTimeoutError(
        `no charge found yet for payment ${current.id}, but its request was sent ${Math.round(sinceSentMs / 1000)} s ago and may still be in flight or not searchable yet`,
      );
    }
  }
  if (outcome.status === 'succeeded') {
    // A due plan roll first, as on time: its grant repays debt before the pack (grant-credits.ts).
    await rollDuePeriodsFirst(atx);
    const grant = await applyGrant(atx, {
      amountMicroCredits: packGrantMicroCredits(pack),
      type: 'PAID',
      source: current.purpose,
      expiresAt: pack.expiresAfterDays ? new Date(atx.now.getTime() + pack.expiresAfterDays * DAY_MS) : null,
      reference: current.id,
      idempotencyKey: paymentGrantKey(current.id),
    });
    const done = await atx.tx.query(
      `UPDATE payments SET status = 'SUCCEEDED', grant_id = $2, provider_ref = $3, error = NULL, updated_at = $4 WHERE id = $1 RETURNING *`,
      [current.id, grant.grantId, outcome.providerRef, atx.now],
    );
    // A refund or dispute the provider reported before this settlement is applied now, in this
    // transaction: the grant just made is voided, and the payment row records it.
    const reversals = await applyEarlyReversals(atx, toPaymentRow(done.rows[0]), actor);
    const settled = await atx.tx.query('SELECT * FROM payments WHERE id = $1', [current.id]);
    return { payment: toPaymentRow(settled.rows[0]), settledNow: true, lateSuccess, reversals };
  }
  const reason = outcome.status === 'declined' ? outcome.code : 'requires_action';
  const failed = await atx.tx.query(
    `UPDATE payments SET status = 'FAILED', provider_ref = $2, error = $3, updated_at = $4 WHERE id = $1 RETURNING *`,
    [current.id, outcome.status === 'requires_action' ? outcome.providerRef : null, `${reason}: ${outcome.message}`, atx.now],
  );
  return { payment: toPaymentRow(failed.rows[0]), settledNow: true, lateSuccess: false, reversals: [] };
}

/** What {@link settlePayment} did. */
export interface SettledPayment {
  /** The payment after the call. */
  payment: PaymentRow;
  /** This call settled it (false: it was settled before; nothing written). */
  settledNow: boolean;
  /** A success for a payment FAILED `no_charge_found` (the caller logs it: logLateSuccess). */
  lateSuccess: boolean;
  /** The refunds and disputes reported before the settlement that it applied (the caller logs them: reportEarlyReversals). */
  reversals: AppliedEarlyReversal[];
}

/** The PAYMENT_FAILED error of a FAILED payment; `extensions.reason` is the provider's code or `requires_action`. */
export function paymentFailedError(payment: PaymentRow): LedgerError {
  const text = payment.error ?? 'unknown: the payment failed';
  const cut = text.indexOf(': ');
  const reason = cut < 0 ? text : text.slice(0, cut);
  const message =
    reason === 'requires_action'
      ? "The payment needs the customer: their bank asks them to authenticate it (e.g. 3-D Secure), which a charge made without them cannot do. Nothing was charged; pay with the customer present or use another payment method."
      : `The payment was declined (${reason}): ${cut < 0 ? text : text.slice(cut + 2)} Nothing was charged.`;
  return new LedgerError('PAYMENT_FAILED', message, { reason });
}

/** What purchaseCreditPack takes (database ids). */
export interface PurchaseCommand {
  accountId: string;
  packId: string;
  /** The caller's key for this purchase (1 to 255 characters). */
  idempotencyKey: string;
}

function noPaymentMethod(): LedgerError {
  return new LedgerError('BAD_USER_INPUT', 'accountId: the account has no payment method (attachPaymentMethod first); nothing was charged', {
    field: 'accountId',
    reason: 'NO_PAYMENT_METHOD',
  });
}

/** Step 1: the purchase's PENDING payment, or the one this key already made. */
async function openPurchase(ctx: ServiceContext, cmd: PurchaseCommand): Promise<PaymentRow> {
  const key = `purchase:${cmd.idempotencyKey}`;
  const find = async () => {
    const { rows } = await ctx.pool.query('SELECT * FROM payments WHERE account_id = $1 AND idempotency_key = $2', [cmd.accountId, key]);
    return rows[0] ? toPaymentRow(rows[0]) : null;
  };
  let payment = await find();
  if (!payment) {
    const account = await ctx.pool.query('SELECT 1 FROM accounts WHERE id = $1', [cmd.accountId]);
    if (!account.rows[0]) throw new LedgerError('NOT_FOUND', 'account not found');
    const pack = await findCreditPack(ctx.pool, cmd.packId);
    if (!pack) throw new LedgerError('NOT_FOUND', 'credit pack not found');
    const methodRef = await findPaymentMethodRef(ctx.pool, cmd.accountId);
    if (!methodRef) throw noPaymentMethod();
    await assertBalanceRoom(ctx.pool, cmd.accountId, pack);
    // The purchase request and its audit row commit together; a replay (the key's payment exists)
    // writes neither. The grant follows in the transaction that settles the payment.
    const inserted = await withTransaction(ctx.pool, async (tx) => {
      const { rows } = await tx.query(
        `INSERT INTO payments (id, account_id, purpose, idempotency_key, pack_id, amount_usd, payment_method_ref, status, created_at, updated_at)
         VALUES (gen_random_uuid(), $1, 'PURCHASE', $2, $3, $4, $5, 'PENDING', $6, $6)
         ON CONFLICT (account_id, idempotency_key) DO NOTHING RETURNING *`,
        [cmd.accountId, key, pack.id, pack.priceUsd, methodRef, ctx.clock()],
      );
      if (!rows[0]) return null;
      const opened = toPaymentRow(rows[0]);
      await recordAuditEvent(tx, actorOf(ctx), {
        action: 'credit_pack.purchased',
        accountId: cmd.accountId,
        subjectType: 'payment',
        subjectId: opened.id,
        details: { packId: pack.id, packName: pack.name, priceUsd: pack.priceUsd, idempotencyKey: cmd.idempotencyKey },
      });
      return opened;
    });
    payment = inserted ?? (await find());
  }
  assert(payment, 'the payment of this key exists (inserted or found)');
  if (payment.packId !== cmd.packId) throw new LedgerError('IDEMPOTENCY_CONFLICT', 'idempotencyKey was already used to buy another pack');
  return payment;
}

/**
 * Buys a pack for an account (module comment). Idempotent on (account, idempotencyKey): a
 * replay returns the same grant without charging; a replay of a declined purchase answers the
 * same PAYMENT_FAILED (use a new key to try again); a replay of one left PENDING (timeout, crash)
 * resumes it and the provider answers the first outcome.
 * @returns the grant (one PAID batch of credits + bonus) and the payment id.
 * @throws LedgerError NOT_FOUND (account, pack), BAD_USER_INPUT (idempotencyKey; no payment
 *   method: nothing is recorded), IDEMPOTENCY_CONFLICT (same key, other pack), PAYMENT_FAILED
 *   (declined or needs the customer; `reason` in the details; nothing granted), UNAVAILABLE (the
 *   provider did not answer: the payment stays PENDING, retry with the same key; or no provider).
 */
export async function purchaseCreditPack(ctx: ServiceContext, cmd: PurchaseCommand): Promise<{ grantId: string; paymentId: string }> {
  const provider = requireProvider(ctx);
  if (cmd.idempotencyKey.length < 1 || cmd.idempotencyKey.length > 255) throw badInput('idempotencyKey', 'must be 1 to 255 characters');
  singleLine(cmd.idempotencyKey, 'idempotencyKey');
  const payment = await openPurchase(ctx, cmd);
  if (payment.status === 'SUCCEEDED' && payment.grantId) return { grantId: payment.grantId, paymentId: payment.id };
  if (payment.status === 'FAILED') throw paymentFailedError(payment);
  let settled: PaymentRow;
  try {
    settled = await completePurchase(ctx, provider, payment);
  } catch (err) {
    if (!(err instanceof PaymentTimeoutError)) throw err;
    throw new LedgerError('UNAVAILABLE', 'The payment provider did not answer in time; nothing was granted yet. Retry with the same idempotencyKey: it never charges twice.');
  }
  if (settled.status === 'SUCCEEDED' && settled.grantId) return { grantId: settled.grantId, paymentId: settled.id };
  throw paymentFailedError(settled);
}

/**
 * Logs (warning) a success that arrived after its payment had been settled `no_charge_found`
 * and was granted then (settlePayment's `lateSuccess`): the customer may have been told the
 * payment failed. For the operators; nothing else to do.
 */
export function logLateSuccess(ctx: ServiceContext, payment: PaymentRow, extra: Record<string, unknown> = {}): void {
  ctx.log?.warn(
    { paymentId: payment.id, accountId: payment.accountId, purpose: payment.purpose, grantId: payment.grantId, providerRef: payment.providerRef, ...extra },
    'payment: a charge succeeded after its payment was settled as no_charge_found; granted it now',
  );
}

/**
 * Steps 2 and 3 of a PENDING purchase payment: charges it with its recorded request (or looks it
 * up, see chargePayment) and settles the outcome in one transaction under the account lock.
 * Used by purchaseCreditPack and the resume-payment job; safe to run concurrently with itself
 * (same idempotency key; the payment row is settled once).
 * @returns the payment after this call (SUCCEEDED with its grant, or FAILED).
 * @throws PaymentTimeoutError when the provider's answer is unknown, or a lookup found no charge
 *   within LOOKUP_SETTLE_DELAY_MS of the last send (the payment stays PENDING);
 *   LedgerError BAD_USER_INPUT when the grant would take the balance above MAX_ABS_MICRO_CREDITS
 *   (the payment stays PENDING and is granted by a later resume once the balance has room).
 */
export async function completePurchase(ctx: ServiceContext, provider: PaymentProvider, payment: PaymentRow): Promise<PaymentRow> {
  const pack = await findCreditPack(ctx.pool, payment.packId);
  assert(pack, 'a payment refers to an existing pack');
  const outcome = await chargePayment(ctx.pool, provider, payment, pack, ctx.clock());
  return (await settlePurchase(ctx, payment, pack, outcome)).payment;
}

/**
 * Step 3 of a purchase payment: records the charge's `outcome` with {@link settlePayment} in one
 * transaction under the account lock, and logs a late success. Shared by the charge's own answer
 * (completePurchase) and the provider's webhook (services/payment-events.ts), so both settle a
 * payment the same way, once.
 * @returns settlePayment's answer (the payment after this call; whether this call settled it).
 * @throws PaymentTimeoutError as settlePayment (nothing written); LedgerError BAD_USER_INPUT
 *   (reason BALANCE_LIMIT) when the grant would take the balance above MAX_ABS_MICRO_CREDITS
 *   (nothing written: the payment keeps its status); database errors.
 */
export async function settlePurchase(
  ctx: ServiceContext,
  payment: PaymentRow,
  pack: CreditPackView,
  outcome: ChargeOutcome,
): Promise<SettledPayment> {
  const settled = await withTransaction(ctx.pool, async (tx) => {
    const wallNow = ctx.clock();
    const atx = await AccountTx.lock(tx, payment.accountId, wallNow);
    const result = await settlePayment(atx, payment.id, pack, outcome, wallNow, actorOf(ctx));
    await atx.finish();
    return result;
  });
  if (settled.lateSuccess) logLateSuccess(ctx, settled.payment);
  reportEarlyReversals(ctx, settled.payment, settled.reversals);
  return settled;
}
