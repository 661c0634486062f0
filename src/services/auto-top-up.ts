/**
 * Auto top-up (issue #4): when an account's available credit falls below its threshold, its
 * pack is bought with the saved payment method, at most `maxPerPeriod` times per billing period.
 *
 * Who does what:
 * - the crossing is detected by the SQL function `balances_changed`, run by AccountTx.finish in
 *   the same statement as every balance change: it inserts one PENDING `auto_top_ups` row (a
 *   partial unique index keeps at most one PENDING per account: single flight) and an outbox
 *   `job` row, which the relay turns into the BullMQ job `auto-top-up-<id>`; a refusal for lack
 *   of credit records the same, with what it refused (services/refusal-top-ups.ts), so that an
 *   account above its threshold whose calls cost more than it has is not refused for ever;
 * - {@link runAutoTopUp} (the job's processor, or {@link runPendingTopUps} inline for test
 *   clocks) charges and grants it like a purchase (services/purchase-pack.ts): a `payments` row
 *   per charge attempt (purpose AUTO_TOP_UP, key `auto-top-up:<top-up id>:<attempt>`, its id the
 *   provider's idempotency key), the charge outside any transaction, then one transaction for
 *   the outcome. A run that dies or times out after charging leaves that payment PENDING; the
 *   next run charges it again with the same key, so the provider answers the first outcome and
 *   nothing is charged twice (with the request the payment recorded: its payment method, not the
 *   account's current one; see chargePayment). A decline is final for its key, so a retry makes
 *   a new attempt. A pack the balance cannot take (above MAX_ABS_MICRO_CREDITS) is SKIPPED
 *   before anything is charged. Once auto top-up is off (turned off by setAutoTopUp, or paused),
 *   such a PENDING payment is only looked up, never sent again: a charge that was made is
 *   granted, one that never reached the provider is never made (the top-up ends SKIPPED, and
 *   that is no failure of the card).
 * - three failed charges in a row pause it (enabled = false, pausedAt) and raise the webhook
 *   `auto_top_up.paused`, when it is still on (a failure arriving after it was turned off or
 *   paused by a refund or dispute pauses nothing again); setAutoTopUp re-enables it.
 */
import type pg from 'pg';
import { withTransaction } from '../db/pg.js';
import { actorOf, recordAuditEvent } from '../audit/audit-log.js';
import { formatCredits } from '../ledger/credits.js';
import { LedgerError, assert, badInput } from '../ledger/errors.js';
import { PaymentTimeoutError, type ChargeOutcome } from '../payments/provider.js';
import { AccountTx } from './account-tx.js';
import { accountNowSql } from './account-clock.js';
import { findCreditPack, packGrantMicroCredits, type CreditPackView } from './credit-packs.js';
import { readBalance } from './read-balance.js';
import { balanceRoomError } from './grant-credits.js';
import { lockAfterDueRoll, rollBillingPeriods } from './plans.js';
import {
  chargePayment,
  failedAsNoChargeFound,
  findPayment,
  findPaymentMethodRef,
  logLateSuccess,
  requireProvider,
  settlePayment,
  toPaymentRow,
  type PaymentRow,
} from './purchase-pack.js';
import type { ServiceContext } from './context.js';
import { reportEarlyReversals, type AppliedEarlyReversal } from './charge-reversal.js';

/** Failed charges in a row that pause auto top-up. */
export const PAUSE_AFTER_FAILURES = 3;

/** What setAutoTopUp takes (database ids, micro-credits). */
export interface SetAutoTopUpCommand {
  accountId: string;
  enabled: boolean;
  thresholdMicroCredits: bigint;
  packId: string;
  /** 1 to 100 top-ups per billing period. */
  maxPerPeriod: number;
}

/**
 * Saves the account's auto top-up settings in one transaction under the account lock. Saving
 * re-enables a paused one (pausedAt cleared, consecutive failures reset to 0). A plan roll that is
 * due runs first (plans.ts lockAfterDueRoll). When enabled and
 * available credit is already below the threshold, one top-up starts at once: the balance is
 * marked changed (version + 1, no ledger entry), so `balances_changed` applies the one rule that
 * starts top-ups (threshold, cap, single flight) in this same transaction. After the commit this
 * process's RefusalTopUps forgets the account (the next refusal checks the saved settings).
 * @throws LedgerError NOT_FOUND (account, pack), BAD_USER_INPUT (threshold < 0, maxPerPeriod
 *   outside 1..100, enabling without a payment method).
 */
export async function setAutoTopUp(ctx: ServiceContext, cmd: SetAutoTopUpCommand): Promise<void> {
  if (cmd.thresholdMicroCredits < 0n) throw badInput('thresholdCredits', 'must not be negative');
  if (!Number.isInteger(cmd.maxPerPeriod) || cmd.maxPerPeriod < 1 || cmd.maxPerPeriod > 100) throw badInput('maxPerPeriod', 'must be 1 to 100');
  await withTransaction(ctx.pool, async (tx) => {
    // A due plan roll first, so the check below reads available credit with the new period's
    // allowance, as on time (plans.ts lockAfterDueRoll): read without it, a save just after the
    // boundary started a top-up the on-time account never had (reset-roll-audit.test.ts).
    const atx = await lockAfterDueRoll(tx, cmd.accountId, ctx.clock());
    if (!(await findCreditPack(tx, cmd.packId))) throw new LedgerError('NOT_FOUND', 'credit pack not found');
    if (cmd.enabled && !(await findPaymentMethodRef(tx, cmd.accountId))) {
      throw new LedgerError('BAD_USER_INPUT', 'enabled: the account has no payment method (attachPaymentMethod first)', { field: 'enabled', reason: 'NO_PAYMENT_METHOD' });
    }
    await tx.query(
      `INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period, consecutive_failures, paused_at, updated_at)
       VALUES ($1, $2, $3, $4, $5, 0, NULL, $6)
       ON CONFLICT (account_id) DO UPDATE SET enabled = EXCLUDED.enabled, threshold_micro_credits = EXCLUDED.threshold_micro_credits,
         pack_id = EXCLUDED.pack_id, max_per_period = EXCLUDED.max_per_period, consecutive_failures = 0, paused_at = NULL, updated_at = EXCLUDED.updated_at`,
      [cmd.accountId, cmd.enabled, cmd.thresholdMicroCredits.toString(), cmd.packId, cmd.maxPerPeriod, atx.now],
    );
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'auto_top_up.updated',
      accountId: cmd.accountId,
      subjectType: 'auto_top_up',
      subjectId: cmd.accountId,
      details: { enabled: cmd.enabled, thresholdCredits: formatCredits(cmd.thresholdMicroCredits), packId: cmd.packId, maxPerPeriod: cmd.maxPerPeriod },
    });
    if (cmd.enabled && (await readBalance(tx, cmd.accountId, ctx.clock())).availableMicroCredits < cmd.thresholdMicroCredits) {
      atx.touch();
      await atx.finish();
    }
  });
  // The next refusal for lack of credit in this process checks the saved settings (refusal-top-ups.ts).
  ctx.refusalTopUps?.forget(cmd.accountId);
}

/**
 * Top-ups that SUCCEEDED in the account's current billing period: the one containing its now as
 * Balance reads it (account-clock.ts: its test clock, else `wallNow` but never before its last
 * committed change), as a top-up started under the account's lock dates its period.
 */
export async function topUpsUsedThisPeriod(db: pg.Pool | pg.PoolClient, accountId: string, wallNow: Date): Promise<number> {
  const { rows } = await db.query(
    `SELECT count(t.id)::int AS n
       FROM accounts a JOIN balances bal ON bal.account_id = a.id
       CROSS JOIN LATERAL billing_period(a.billing_anchor_at, ${accountNowSql('a', 'bal', '$2')}) p
       LEFT JOIN auto_top_ups t ON t.account_id = a.id AND t.period_start = p.period_start AND t.status = 'SUCCEEDED'
      WHERE a.id = $1`,
    [accountId, wallNow],
  );
  return (rows[0]?.n as number | undefined) ?? 0;
}

/** Status of a top-up after a run (`PENDING`: not finished, to be retried). */
export type TopUpStatus = 'PENDING' | 'SUCCEEDED' | 'FAILED' | 'SKIPPED';

/** What one run of a top-up ended with. */
export interface TopUpRunResult {
  topUpId: string;
  status: TopUpStatus;
  /** Why it is not SUCCEEDED (skip reason, the charge's error, a timeout). */
  reason: string | null;
}

/** Which attempt of the job this run is (BullMQ: attemptsMade before this one, attempts allowed). */
export interface AttemptInfo {
  attemptsMade: number;
  attempts: number;
}

/**
 * Step 1 under the account lock: the payment to charge now (`lookupOnly`: only look its charge
 * up, never send it again), or the run's final result.
 */
type Prepared = { payment: PaymentRow; lookupOnly: boolean } | { done: TopUpRunResult };

async function finishTopUp(atx: AccountTx, topUpId: string, status: Exclude<TopUpStatus, 'PENDING'>, reason: string | null): Promise<TopUpRunResult> {
  await atx.tx.query(`UPDATE auto_top_ups SET status = $2, error = $3, finished_at = $4 WHERE id = $1`, [topUpId, status, reason, atx.now]);
  return { topUpId, status, reason };
}

/** Locks the account and the top-up (in that order, like every writer). Null: no such top-up. */
async function lockTopUp(tx: pg.PoolClient, topUpId: string, wallNow: Date) {
  const owner = await tx.query('SELECT account_id FROM auto_top_ups WHERE id = $1', [topUpId]);
  const accountId = owner.rows[0]?.account_id as string | undefined;
  if (!accountId) return null;
  const atx = await AccountTx.lock(tx, accountId, wallNow);
  const { rows } = await tx.query(
    `SELECT t.status, t.period_start, t.attempts, t.payment_id, t.refused_micro_credits, s.enabled, s.threshold_micro_credits, s.pack_id, s.max_per_period
       FROM auto_top_ups t LEFT JOIN auto_top_up_settings s ON s.account_id = t.account_id
      WHERE t.id = $1 FOR UPDATE OF t`,
    [topUpId],
  );
  return { atx, row: rows[0] as Record<string, unknown> };
}

async function prepare(ctx: ServiceContext, topUpId: string): Promise<Prepared> {
  return withTransaction(ctx.pool, async (tx) => {
    const locked = await lockTopUp(tx, topUpId, ctx.clock());
    if (!locked) return { done: { topUpId, status: 'SKIPPED', reason: 'no such top-up' } };
    const { atx, row } = locked;
    if (row.status !== 'PENDING') return { done: { topUpId, status: row.status as TopUpStatus, reason: null } };
    const methodRef = await findPaymentMethodRef(tx, atx.accountId);
    if (row.payment_id) {
      const payment = (await findPayment(tx, row.payment_id as string))!; // the top-up's payment exists (foreign key)
      // A charge whose outcome was never recorded: send its recorded request again with its key
      // (never twice). Once auto top-up is off (turned off or paused) nothing is sent any more:
      // the charge is only looked up, so a request that never reached the provider is never made
      // after the customer turned it off, and one that was made is granted (README "Auto top-up").
      if (payment.status === 'PENDING') return { payment, lookupOnly: row.enabled !== true };
    }
    if (!row.enabled) return { done: await finishTopUp(atx, topUpId, 'SKIPPED', 'auto top-up is disabled or paused') };
    const used = await tx.query(`SELECT count(*)::int AS n FROM auto_top_ups WHERE account_id = $1 AND period_start = $2 AND status = 'SUCCEEDED'`, [
      atx.accountId,
      row.period_start,
    ]);
    if ((used.rows[0].n as number) >= (row.max_per_period as number)) return { done: await finishTopUp(atx, topUpId, 'SKIPPED', 'maxPerPeriod reached') };
    const balance = await readBalance(tx, atx.accountId, ctx.clock());
    // A top-up started by a refusal (refusal-top-ups.ts) runs while available credit is below
    // the threshold or does not cover what was refused; one started by a crossing, while below.
    const refused = row.refused_micro_credits === null ? null : BigInt(row.refused_micro_credits as string);
    if (balance.availableMicroCredits >= BigInt(row.threshold_micro_credits as string) && (refused === null || balance.availableMicroCredits >= refused)) {
      return {
        done: await finishTopUp(atx, topUpId, 'SKIPPED', refused === null ? 'available credit is no longer below the threshold' : 'available credit covers the refused charge and is not below the threshold'),
      };
    }
    if (!methodRef) return { done: await finishTopUp(atx, topUpId, 'SKIPPED', 'no payment method') };
    const pack = await findCreditPack(tx, row.pack_id as string);
    assert(pack, 'the settings refer to an existing pack');
    if (balanceRoomError(atx.total, packGrantMicroCredits(pack), 'packId')) {
      return { done: await finishTopUp(atx, topUpId, 'SKIPPED', 'the pack would take the balance above the largest amount') };
    }
    const attempt = (row.attempts as number) + 1;
    const inserted = await tx.query(
      `INSERT INTO payments (id, account_id, purpose, idempotency_key, pack_id, amount_usd, payment_method_ref, status, created_at, updated_at)
       VALUES (gen_random_uuid(), $1, 'AUTO_TOP_UP', $2, $3, $4, $5, 'PENDING', $6, $6) RETURNING *`,
      [atx.accountId, `auto-top-up:${topUpId}:${attempt}`, pack.id, pack.priceUsd, methodRef, ctx.clock()],
    );
    const payment = toPaymentRow(inserted.rows[0]);
    await tx.query('UPDATE auto_top_ups SET payment_id = $2, attempts = $3 WHERE id = $1', [topUpId, payment.id, attempt]);
    return { payment, lookupOnly: false };
  });
}

/**
 * Step 3: records the outcome of charging `payment` for the top-up, in one transaction.
 * A success is recorded even when the top-up is no longer PENDING or the payment was settled
 * `no_charge_found` meanwhile (settlePayment's late success: the money was taken, so it is
 * granted). Such a late success ends the top-up SUCCEEDED when `payment` is still its current
 * attempt (so no further attempt charges the card again); when a newer attempt exists already,
 * the card may be charged twice, which is logged as an error (both charges are granted).
 * @returns the run's result, and whether this call settled the payment (false: a concurrent run
 *   or the provider's webhook did, or the top-up had ended).
 * @throws PaymentTimeoutError when a lookup found no charge within LOOKUP_SETTLE_DELAY_MS of the
 *   last send (nothing written; the top-up stays PENDING).
 */
async function recordOutcome(
  ctx: ServiceContext,
  topUpId: string,
  payment: PaymentRow,
  pack: CreditPackView,
  outcome: ChargeOutcome,
  lastAttempt: boolean,
  lookupOnly = false,
): Promise<{ run: TopUpRunResult; settledNow: boolean }> {
  // What settlePayment applied of a refund or dispute reported before it, logged after the commit.
  const early: { payment: PaymentRow; reversals: AppliedEarlyReversal[] }[] = [];
  const result = await withTransaction(ctx.pool, async (tx) => {
    early.length = 0; // a retried transaction (serialization failure, deadlock) logs only what its committed attempt applied
    const wallNow = ctx.clock();
    const locked = await lockTopUp(tx, topUpId, wallNow);
    if (!locked) return { topUpId, status: 'SKIPPED' as const, reason: null, settledNow: false };
    const { atx, row } = locked;
    const topUpStatus = row.status as TopUpStatus;
    if (topUpStatus !== 'PENDING' && outcome.status !== 'succeeded') return { topUpId, status: topUpStatus, reason: null, settledNow: false };
    const { payment: after, settledNow, lateSuccess, reversals } = await settlePayment(atx, payment.id, pack, outcome, wallNow, actorOf(ctx));
    early.push({ payment: after, reversals });
    // Settled by a concurrent run of the same payment, which also recorded its consequences.
    if (!settledNow) return { topUpId, status: topUpStatus, reason: topUpStatus === 'PENDING' ? after.error : null, settledNow };
    if (after.status === 'SUCCEEDED' && row.payment_id !== payment.id) {
      // A late success of an earlier attempt: granted (the money was taken), but the top-up went on with another one.
      await atx.finish();
      return { topUpId, status: topUpStatus, reason: null, lateSuccess, chargedTwice: true, payment: after, settledNow };
    }
    if (after.status === 'SUCCEEDED') {
      // finish() runs balances_changed while this top-up is still PENDING (unless a late success
      // revives a FAILED one): the grant cannot start another.
      await atx.finish();
      // A refund or dispute of this charge reported before it was settled paused auto top-up
      // in settlePayment (applyEarlyReversals): its last_error names why, and stays.
      const pausedByReversal = reversals.some((r) => r.done?.pausedAutoTopUp === true);
      await tx.query(
        `UPDATE auto_top_up_settings SET consecutive_failures = 0, last_attempt_at = $2, last_error = CASE WHEN $3 THEN last_error END WHERE account_id = $1`,
        [atx.accountId, atx.now, pausedByReversal],
      );
      if (topUpStatus === 'FAILED') {
        // A late success revives a FAILED top-up, which may be the one that paused auto top-up:
        // its error and finished_at stay as they were, since the `auto_top_up.paused` webhook's body
        // is built from them (services/webhooks.ts buildWebhookEvent) and must not change between
        // its attempts. Auto top-up stays paused (setAutoTopUp resumes it).
        await tx.query(`UPDATE auto_top_ups SET status = 'SUCCEEDED' WHERE id = $1`, [topUpId]);
        return { topUpId, status: 'SUCCEEDED' as const, reason: null, lateSuccess, chargedTwice: false, payment: after, settledNow };
      }
      return { ...(await finishTopUp(atx, topUpId, 'SUCCEEDED', null)), lateSuccess, chargedTwice: false, payment: after, settledNow };
    }
    if (lookupOnly && failedAsNoChargeFound(after)) {
      // Only looked up, auto top-up being off: the request never reached the provider and is not
      // sent again. Nothing was charged, and it is no failure of the card (not counted).
      const result: TopUpRunResult =
        row.enabled === true ? { topUpId, status: 'PENDING', reason: after.error } : await finishTopUp(atx, topUpId, 'SKIPPED', 'auto top-up is disabled or paused');
      await atx.finish();
      return { ...result, settledNow };
    }
    // The third failure in a row pauses auto top-up and raises `auto_top_up.paused`, only when it
    // is still on: a charge in flight when the customer turned it off, or when a refund or dispute
    // paused it (charge-reversal.ts), fails without pausing it again; a pause keeps its time and
    // reason (lastError names the dispute or refund), and no webhook announces it.
    const { rows } = await tx.query(
      `UPDATE auto_top_up_settings s SET consecutive_failures = s.consecutive_failures + 1, last_attempt_at = $2,
              last_error = CASE WHEN s.paused_at IS NULL THEN $3 ELSE s.last_error END,
              enabled = s.enabled AND s.consecutive_failures + 1 < $4,
              paused_at = CASE WHEN s.enabled AND s.consecutive_failures + 1 = $4 THEN $2 ELSE s.paused_at END
         FROM (SELECT enabled FROM auto_top_up_settings WHERE account_id = $1) old
        WHERE s.account_id = $1 RETURNING old.enabled AND NOT s.enabled AS paused_now`,
      [atx.accountId, atx.now, after.error, PAUSE_AFTER_FAILURES],
    );
    let result: TopUpRunResult = { topUpId, status: 'PENDING', reason: after.error };
    if (rows[0]?.paused_now === true) {
      atx.publish('job', {
        name: 'deliver-webhook',
        jobId: `webhook-auto_top_up_paused-${topUpId}`,
        data: { eventType: 'auto_top_up.paused', eventId: topUpId, accountId: atx.accountId },
      });
      result = await finishTopUp(atx, topUpId, 'FAILED', after.error);
    } else if (lastAttempt) {
      result = await finishTopUp(atx, topUpId, 'FAILED', after.error);
    }
    await atx.finish();
    return { ...result, settledNow };
  });
  for (const { payment: settled, reversals } of early) reportEarlyReversals(ctx, settled, reversals);
  if ('payment' in result && result.lateSuccess) {
    logLateSuccess(ctx, result.payment, { topUpId });
    if (result.chargedTwice) {
      ctx.log?.error(
        { topUpId, paymentId: result.payment.id, accountId: result.payment.accountId },
        'auto top-up: an earlier attempt was charged after it had been settled as no_charge_found and a newer attempt was made; the card may be charged twice (both are granted)',
      );
    }
  }
  return { run: { topUpId: result.topUpId, status: result.status, reason: result.reason }, settledNow: result.settledNow };
}

/**
 * Runs one top-up (module comment): skips it (SKIPPED) when auto top-up is disabled or paused,
 * the period's cap is reached, available credit is back above the threshold or there is no
 * payment method; else charges the pack and grants it (SUCCEEDED). A failed charge counts
 * toward the pause; the top-up stays PENDING for a retry unless it paused auto top-up or
 * `attempt` was the last one (then FAILED). A timeout leaves it PENDING, reason set. A charge
 * sent earlier whose outcome is unknown is sent again with its key while auto top-up is on, and
 * only looked up once it is off (module comment).
 * Safe to run concurrently with itself: the top-up row lock and the payment's idempotency key
 * make one charge and one grant. `topUp`: the top-up's id and its account's (uuids; the job
 * payload carries both).
 * @throws LedgerError UNAVAILABLE when no payment provider is configured; database errors.
 */
export async function runAutoTopUp(ctx: ServiceContext, topUp: { topUpId: string; accountId: string }, attempt: AttemptInfo): Promise<TopUpRunResult> {
  const { topUpId, accountId } = topUp;
  const provider = requireProvider(ctx);
  // A plan's period that has begun but not rolled yet is rolled first: at a RESET plan's period
  // end the old allowance expires (its expiry job, or any charge, sees the balance drop below
  // the threshold and starts this top-up) while the new period's grant is due in the same
  // instant. Charging the card for credit the plan is about to grant would be wrong; after the
  // roll, prepare() re-checks the balance and skips the top-up when the grant covers it.
  // A roll that fails must not keep a top-up whose charge may already have happened from
  // settling: the top-up goes on without it (the roll's own `roll-period` job and the sweep retry it).
  // (`accountId` only names the account to roll: the top-up itself is found by its id.)
  await rollBillingPeriods(ctx, accountId).catch((err: unknown) =>
    ctx.log?.warn({ err, topUpId }, 'auto top-up: rolling the due billing period first failed; the top-up goes on without it'),
  );
  const prepared = await prepare(ctx, topUpId);
  if ('done' in prepared) return prepared.done;
  const { payment, lookupOnly } = prepared;
  const pack = await findCreditPack(ctx.pool, payment.packId);
  assert(pack, 'a payment refers to an existing pack');
  try {
    const outcome = await chargePayment(ctx.pool, provider, payment, pack, ctx.clock(), { lookupOnly });
    return (await recordOutcome(ctx, topUpId, payment, pack, outcome, attempt.attemptsMade + 1 >= attempt.attempts, lookupOnly)).run;
  } catch (err) {
    // No answer, or "no charge found" too soon after the last send: the outcome is unknown, retried later.
    if (err instanceof PaymentTimeoutError) return { topUpId, status: 'PENDING', reason: `payment provider timed out: ${err.message}` };
    throw err;
  }
}

/** The top-up an AUTO_TOP_UP payment was made for: its idempotency key is `auto-top-up:<top-up id>:<attempt>` (prepare). */
const TOP_UP_PAYMENT_KEY_RE = /^auto-top-up:([0-9a-f-]{36}):\d+$/;

/**
 * Records the outcome of an AUTO_TOP_UP payment that the provider reported on its own (its
 * webhook: services/payment-events.ts) exactly as a run of the top-up records its charge's answer
 * (recordOutcome, under the account and top-up locks): a success grants the pack once (also a
 * late success of a payment settled `no_charge_found`, and of an earlier attempt) and ends the
 * top-up SUCCEEDED when the payment is its current attempt; a failure counts toward the pause and
 * leaves the top-up PENDING for its job or the sweep, whose next run makes a new attempt (a
 * webhook is never the job's last attempt, so it never ends the top-up FAILED by itself, except
 * by pausing it).
 * @param payment an AUTO_TOP_UP payment (its key names the top-up).
 * @returns the top-up's state after this call, and whether this call settled the payment.
 * @throws LedgerError BAD_USER_INPUT (reason BALANCE_LIMIT) when the grant would take the balance
 *   above MAX_ABS_MICRO_CREDITS (nothing written); database errors.
 */
export async function settleTopUpPayment(ctx: ServiceContext, payment: PaymentRow, outcome: ChargeOutcome): Promise<{ run: TopUpRunResult; settledNow: boolean }> {
  const topUpId = TOP_UP_PAYMENT_KEY_RE.exec(payment.idempotencyKey)?.[1];
  assert(payment.purpose === 'AUTO_TOP_UP' && topUpId, 'an auto top-up payment is keyed auto-top-up:<top-up id>:<attempt>');
  const pack = await findCreditPack(ctx.pool, payment.packId);
  assert(pack, 'a payment refers to an existing pack');
  return recordOutcome(ctx, topUpId, payment, pack, outcome, false);
}

/**
 * Runs every PENDING top-up of one account inline, one attempt each (a failed charge is final
 * for that top-up; a timeout leaves it PENDING for the worker). Used by advanceTestClock; safe
 * next to the worker (see runAutoTopUp). Without a payment provider it does nothing.
 * @returns one result per PENDING top-up found.
 */
export async function runPendingTopUps(ctx: ServiceContext, accountId: string): Promise<TopUpRunResult[]> {
  if (!ctx.payments) return [];
  const { rows } = await ctx.pool.query(`SELECT id FROM auto_top_ups WHERE account_id = $1 AND status = 'PENDING' ORDER BY created_at`, [accountId]);
  const results: TopUpRunResult[] = [];
  for (const r of rows) results.push(await runAutoTopUp(ctx, { topUpId: r.id as string, accountId }, { attemptsMade: 0, attempts: 1 }));
  return results;
}
