/**
 * refundUsage: gives a usage event's whole cost back and marks the event refunded. The credit it
 * drew goes back to the batches it came from (contract: expired ones excepted; voided ones too,
 * since an operator removed them). The part of its cost that became debt (captures beyond a hold)
 * is split by the account's debt history (replayDebt, debt repaid first in, first out): what is
 * still owed is forgiven, and what later grants already repaid goes back into the batches of those
 * grants, by the same rules as drawn credit. Credit a ROLLOVER roll carried over since the event
 * gets back only what the cap leaves room for (rolloverRoom). Its cost is taken off its agent's / user's kept
 * budget spending of the billing period it was charged in (spending-budgets.ts), unless that
 * period belongs to a billing anchor a plan subscription has since replaced. Credit a payment
 * bought goes back into the payment's live grant, less the share of its refunded money not taken
 * back yet (readPaymentCredits). Refunding a refunded event returns it unchanged.
 */
import { freeText } from '../ledger/text-input.js';
import type pg from 'pg';
import { withTransaction, toBigInt, type Tx } from '../db/pg.js';
import { actorOf, recordAuditEvent } from '../audit/audit-log.js';
import { LedgerError, assert, badInput } from '../ledger/errors.js';
import { MAX_ABS_MICRO_CREDITS, formatCredits, minBig } from '../ledger/credits.js';
import { BALANCE_LIMIT_REASON } from '../ledger/refusals.js';
import { AccountTx } from './account-tx.js';
import { moveBudgetSpend } from './spending-budgets.js';
import { scheduleExpiry } from './expire-due.js';
import { DRAWN_SINCE_CTE, rollDuePeriodsFirst } from './plans.js';
import { monthlyPeriodAt } from '../ledger/billing-period.js';
import type { ServiceContext } from './context.js';
import { usdToCents } from '../payments/provider.js';
import { UUID_PATTERN } from '../db/uuid.js';

/**
 * One ledger fact that changed an account's debt, in ledger order (readDebtHistory). Amounts in
 * micro-credits, > 0.
 * - `DEBT`: a usage event's CONSUME entry left `amountMicroCredits` of its cost as debt
 *   (`usage_events.debt_micro_credits`).
 * - `REPAY`: a grant's DEBT_REPAY entry paid `amountMicroCredits` of debt from its batch `batchId`.
 * - `FORGIVE`: a refund forgave `amountMicroCredits` of the event's debt (a REFUND entry of the
 *   event without a batch).
 */
export interface DebtFact {
  seq: bigint;
  kind: 'DEBT' | 'REPAY' | 'FORGIVE';
  amountMicroCredits: bigint;
  usageEventId: string | null;
  batchId: string | null;
  /** When the fact's ledger entry was written (a REPAY: the repayment); absent where a caller builds facts by hand. */
  at?: Date;
}

/** What became of one event's debt (micro-credits): still owed, and repaid, by repaying batch id (in order of repayment). */
export interface EventDebtShare {
  unpaidMicroCredits: bigint;
  repaidByBatch: Map<string, bigint>;
}

/**
 * Replays an account's debt history (DebtFacts in ledger `seq` order) as a queue: debt is repaid
 * in the order it arose (first in, first out), which is what the account's single `debt` figure
 * means (applyGrant repays it without naming events). A REPAY takes from the oldest debt still
 * owed; a FORGIVE removes its event's debt still owed, and anything it forgave beyond that (a
 * refund before this rule forgave up to the account's debt, not the event's own) from the oldest
 * debt owed. Repayments or forgiveness beyond the debt owed are ignored (none should exist).
 * @returns each event with debt, what of it is owed and which batches repaid how much; the sum of
 *   `unpaidMicroCredits` over all events is the account's debt when the history is complete.
 * @throws Error (assertion) when a DEBT fact names no usage event or a REPAY fact no batch (the
 *   ledger writes neither).
 */
export function replayDebt(facts: readonly DebtFact[]): Map<string, EventDebtShare> {
  const shares = new Map<string, EventDebtShare>();
  const queue: { eventId: string; share: EventDebtShare }[] = [];
  let head = 0;
  /** Takes up to `amount` from the oldest debt owed, calling `take` for each part; returns what is left. */
  const fromOldest = (amount: bigint, take: (eventId: string, share: EventDebtShare, part: bigint) => void): bigint => {
    let left = amount;
    while (left > 0n && head < queue.length) {
      const owed = queue[head]!;
      const part = minBig(left, owed.share.unpaidMicroCredits);
      if (part > 0n) {
        owed.share.unpaidMicroCredits -= part;
        left -= part;
        take(owed.eventId, owed.share, part);
      }
      if (owed.share.unpaidMicroCredits === 0n) head++;
    }
    return left;
  };
  for (const f of facts) {
    if (f.kind === 'DEBT') {
      assert(f.usageEventId, 'a debt fact names its event');
      const share: EventDebtShare = { unpaidMicroCredits: f.amountMicroCredits, repaidByBatch: new Map() };
      shares.set(f.usageEventId, share);
      queue.push({ eventId: f.usageEventId, share });
    } else if (f.kind === 'REPAY') {
      assert(f.batchId, 'a repayment names its batch');
      const batchId = f.batchId;
      fromOldest(f.amountMicroCredits, (_e, share, part) => share.repaidByBatch.set(batchId, (share.repaidByBatch.get(batchId) ?? 0n) + part));
    } else {
      const own = f.usageEventId ? shares.get(f.usageEventId) : undefined;
      const part = own ? minBig(f.amountMicroCredits, own.unpaidMicroCredits) : 0n;
      if (own) own.unpaidMicroCredits -= part;
      fromOldest(f.amountMicroCredits - part, () => {});
    }
  }
  return shares;
}

/**
 * Reads the facts replayDebt needs of one account, in ledger order: the CONSUME entries of its
 * usage events with debt (`debt_micro_credits` > 0), its DEBT_REPAY entries and its debt-forgiving
 * REFUND entries (no batch). Nothing else moves debt: voids and expiries change batches only, and
 * every write of debt goes through AccountTx (record-usage, applyGrant, refundUsage). Call it under
 * the account lock (`db`: its transaction) for a history that cannot move meanwhile. Cost: only debt-related rows of this one account are read, so it grows with
 * the account's overage history, not with its usage: the events by a partial index on
 * (account_id) of events with debt, each one's CONSUME entry by the (account_id, created_at, seq)
 * index (the entry is dated at the event's recorded_at), the entries by a partial index on
 * (account_id, seq) of DEBT_REPAY and batch-less REFUND entries (migration refund_debt_history).
 */
export async function readDebtHistory(db: Tx | pg.Pool, accountId: string): Promise<DebtFact[]> {
  const { rows } = await db.query({
    name: 'cp-refund-debt-history',
    text: `SELECT x.seq, x.kind, x.amount, x.event, x.batch, x.at FROM (
         SELECT c.seq, 'DEBT' AS kind, e.debt_micro_credits AS amount, e.id AS event, NULL::uuid AS batch, e.recorded_at AS at
           FROM usage_events e
           CROSS JOIN LATERAL (SELECT l.seq FROM ledger_entries l
                                WHERE l.account_id = e.account_id AND l.created_at = e.recorded_at AND l.usage_event_id = e.id AND l.type = 'CONSUME'
                                LIMIT 1) c
          WHERE e.account_id = $1 AND e.debt_micro_credits > 0
         UNION ALL
         SELECT l.seq, CASE WHEN l.type = 'DEBT_REPAY' THEN 'REPAY' ELSE 'FORGIVE' END, l.amount_micro_credits, l.usage_event_id, l.batch_id, l.created_at
           FROM ledger_entries l
          WHERE l.account_id = $1 AND (l.type = 'DEBT_REPAY' OR (l.type = 'REFUND' AND l.batch_id IS NULL))
       ) x ORDER BY x.seq`,
    values: [accountId],
  });
  return rows.map((r) => ({
    seq: toBigInt(r.seq),
    kind: r.kind as DebtFact['kind'],
    amountMicroCredits: toBigInt(r.amount),
    usageEventId: r.event as string | null,
    batchId: r.batch as string | null,
    at: r.at as Date,
  }));
}

/**
 * What a refund may give back to subscription credit a ROLLOVER roll carried over (README
 * "Refunds and voids"). The latest roll of a ROLLOVER plan with a cap, at a period start `T`,
 * kept at most that plan's cap of the subscription credit; had the refunded event (recorded
 * before `T`) never drawn, the roll would have counted its credit too and trimmed it to the same
 * cap. So the credit given back to the carried batches (SUBSCRIPTION, added before `T`, not
 * expiring by `T`) is at most the room the roll left under the cap: cap − their credit at `T`
 * after the trim (their remaining plus what usage since `T`, not refunded, drew from them;
 * earlier refunds are in their remaining). The rest is not given back, as credit that would have
 * expired is not (refundUsage). The result does not depend on whether the refund ran before or
 * after the roll. Only the latest roll is counted: for an event several periods old the carried
 * credit still stays within the cap.
 * The roll and its cap are the ones the subscription row remembers (`capped_roll_at`, written by
 * every capped roll, migration plan_capped_roll), whichever plan is subscribed now: neither a
 * cancel nor a switch to another plan (which starts a new period without a roll, and whose RESET
 * or uncapped ROLLOVER rolls trim nothing) lifts the cap the old plan's last roll applied.
 * @returns the room (micro-credits, ≥ 0) and the carried batches it bounds; null when no cap
 *   applies (no capped roll has run on the account, or the event was recorded since the latest
 *   one), or while a roll of the active capped plan is due and has not run yet (refundUsage runs
 *   it first, so only when that roll was refused, e.g. over the balance limit: its later trim
 *   then counts the refunded credit).
 */
async function rolloverRoom(atx: AccountTx, recordedAt: Date): Promise<{ room: bigint; batchIds: Set<string> } | null> {
  const { rows: subs } = await atx.tx.query(
    `SELECT s.active, s.granted_period_start, s.capped_roll_at, s.capped_roll_cap_micro_credits AS cap,
            p.rollover = 'ROLLOVER' AND p.rollover_cap_micro_credits IS NOT NULL AS plan_capped
       FROM plan_subscriptions s JOIN plans p ON p.id = s.plan_id WHERE s.account_id = $1`,
    [atx.accountId],
  );
  const sub = subs[0];
  if (!sub || sub.capped_roll_at === null) return null;
  if (sub.active && sub.plan_capped && (sub.granted_period_start as Date).getTime() < atx.period().start.getTime()) return null;
  const periodStart = sub.capped_roll_at as Date;
  if (recordedAt.getTime() >= periodStart.getTime()) return null;
  const { rows } = await atx.tx.query(
    `WITH ${DRAWN_SINCE_CTE}
     SELECT b.id, b.remaining_micro_credits + COALESCE(s.drawn, 0) AS at_start
       FROM credit_batches b LEFT JOIN since s ON s.batch_id = b.id
      WHERE b.account_id = $1 AND b.source = 'SUBSCRIPTION' AND b.added_at < $2
        AND (b.expires_at IS NULL OR b.expires_at > $2) AND b.status <> 'VOIDED'`,
    [atx.accountId, periodStart],
  );
  // Expiries after the roll that this transaction recorded (a due roll run first: refundUsage)
  // are not in ledger_entries yet: their credit stood at the roll too (DRAWN_SINCE_CTE).
  const carriedIds = new Set(rows.map((r) => r.id as string));
  const pending = atx.pendingExpiriesAfter(periodStart).filter((e) => carriedIds.has(e.batchId));
  const carriedAtStart = rows.reduce((sum, r) => sum + toBigInt(r.at_start), 0n) + pending.reduce((sum, e) => sum + e.amountMicroCredits, 0n);
  const cap = toBigInt(sub.cap);
  return { room: carriedAtStart < cap ? cap - carriedAtStart : 0n, batchIds: new Set(rows.map((r) => r.id as string)) };
}

/** A payment whose grants an event's credit came from, as refundUsage gives that credit back (micro-credits). */
export interface PaymentCredit {
  /** The batch of the grant that carries the payment's credit now (payments.live_grant_id, else its own grant). */
  live: { batchId: string; status: string; expires_at: Date | null };
  /** The share of its refunded money (floor(pack credits x refunded / amount)) not taken back yet. */
  unrecoveredMicroCredits: bigint;
  takenBeforeMicroCredits: bigint;
  /** refund_taken_micro_credits once this refund has withheld its part of the unrecovered share. */
  takenMicroCredits: bigint;
}

/**
 * The payments (ids) whose grants an event drew from or whose grants repaid its debt, locked
 * (FOR UPDATE), for the rule of README "Refunds and voids": credit a payment bought follows the
 * payment, not the grant it was drawn from. A refund or dispute of the payment acts on its live
 * grant only (services/charge-reversal.ts: a partial refund voids it and grants its rest less the
 * share again; a won dispute gives back as a new grant what the dispute voided), so credit spent
 * before goes back into the live grant (none when that is voided or expired: a full refund, a
 * dispute not won), less the share of the refunded money that found nothing unused to take back
 * then (taken now: `refund_taken_micro_credits` grows). Amounts in micro-credits.
 * One primary-key probe per id (a LATERAL subquery with `LIMIT 1`, as account-tx.ts
 * priorKeysByAccount), not `p.id = ANY($1) AND p.account_id = $2`: the ledger pool's generic plan
 * of that read the account's every payment through (account_id, idempotency_key) and filtered
 * the ids (5,000 payments: 5,011 rows read for 2). The ids are locked in their order (sorted).
 * Call inside the account's locked transaction (`tx`); ids of another account's payments are left out.
 * @returns the payments found, by id.
 */
export async function readPaymentCredits(tx: Tx, accountId: string, paymentIds: readonly string[]): Promise<Map<string, PaymentCredit>> {
  const found = new Map<string, PaymentCredit>();
  if (paymentIds.length === 0) return found;
  const { rows } = await tx.query(
    `SELECT p.id, p.refunded_cents, p.amount_usd::text AS amount_usd, p.refund_taken_micro_credits, g.amount_micro_credits AS granted,
            lb.id AS live_batch, CASE WHEN lg.voided_at IS NULL THEN lb.status::text ELSE 'VOIDED' END AS live_status, lb.expires_at AS live_expires_at
       FROM unnest($1::uuid[]) AS x(id)
       CROSS JOIN LATERAL (SELECT * FROM payments WHERE id = x.id AND account_id = $2 LIMIT 1) p
       JOIN credit_grants g ON g.id = p.grant_id
       JOIN credit_grants lg ON lg.id = COALESCE(p.live_grant_id, p.grant_id) JOIN credit_batches lb ON lb.grant_id = lg.id
      ORDER BY p.id FOR UPDATE OF p`,
    [[...new Set(paymentIds)].sort(), accountId],
  );
  for (const r of rows) {
    const cents = usdToCents(r.amount_usd as string);
    const refunded = toBigInt(r.refunded_cents);
    const taken = toBigInt(r.refund_taken_micro_credits);
    const share = cents > 0n && refunded < cents ? (toBigInt(r.granted) * refunded) / cents : 0n;
    found.set(r.id as string, {
      live: { batchId: r.live_batch as string, status: r.live_status as string, expires_at: r.live_expires_at as Date | null },
      unrecoveredMicroCredits: share > taken ? share - taken : 0n,
      takenBeforeMicroCredits: taken,
      takenMicroCredits: taken,
    });
  }
  return found;
}

/** A batch credit of a refunded event goes back to, as {@link readRefundBatches} reads it. */
export interface RefundBatch {
  status: string;
  expires_at: Date | null;
  /** The payment whose grant made the batch (a pack purchase or an auto top-up), else null. */
  paymentId: string | null;
}

/**
 * The batches `batchIds` (those that exist) with their status, expiry and the payment whose grant
 * made them: a grant of source PURCHASE or AUTO_TOP_UP keyed `payment:<id>` whose reference is
 * that payment's id, of the same account. The payment is found by primary key: the reference as a
 * uuid where it reads as one (a grant made through grantCredits may carry any text), the text
 * comparison kept as the rule. With `p.id::text = g.reference` alone no index applied, and each
 * batch read the account's every payment (5,000 payments: 5,012 rows per batch).
 * @returns the batches found, by id.
 */
export async function readRefundBatches(tx: Tx, batchIds: readonly string[]): Promise<Map<string, RefundBatch>> {
  const batches = new Map<string, RefundBatch>();
  if (batchIds.length === 0) return batches;
  const { rows } = await tx.query(
    `SELECT b.id, b.status, b.expires_at, p.id AS payment_id
       FROM credit_batches b JOIN credit_grants g ON g.id = b.grant_id
       LEFT JOIN payments p ON g.source IN ('PURCHASE', 'AUTO_TOP_UP') AND g.idempotency_key LIKE 'payment:%'
                           AND p.id = CASE WHEN g.reference ~* '${UUID_PATTERN}' THEN g.reference::uuid END
                           AND p.id::text = g.reference AND p.account_id = g.account_id
      WHERE b.id = ANY($1::uuid[])`,
    [batchIds],
  );
  for (const r of rows) batches.set(r.id as string, { status: r.status as string, expires_at: r.expires_at as Date | null, paymentId: r.payment_id as string | null });
  return batches;
}

/**
 * Refunds an event in one transaction, under the account lock (so `refunded_at` makes it happen
 * once). Writes, in this order: a REFUND entry per batch its drawn credit goes back to; a REFUND
 * entry without a batch for its debt still owed, forgiven (note `<reason> (debt forgiven)`); a
 * REFUND entry per batch that repaid part of its debt, the repaid part going back into that batch
 * (note `<reason> (repaid debt)`); and, before them, a refund_credits row per instant the credit
 * given back into batches had left them (the event's recorded_at for drawn credit, the repayment
 * for repaid debt: what balance_figures adds to periodCredits, README "Plans and billing cycles").
 * Credit goes back into the batch it came from, keeping its type
 * and expiry (an exhausted batch becomes ACTIVE again; voidGrant can then remove it), never into
 * an expired or voided batch: that part is not given back (an operator removed that credit, or it
 * would have expired), except credit a payment bought, which goes back into the payment's live
 * grant (growing its batch's allocation when it gave less), less the unrecovered share of the
 * payment's refunded money (readPaymentCredits); nor, for an event recorded before a ROLLOVER roll, what the roll's cap would
 * have trimmed had the event never drawn (rolloverRoom). A plan roll that is due and has not run
 * yet runs first (plans.ts rollDuePeriodsFirst), as before a charge. A batch gets back at most what it gave, so its remaining stays within its
 * allocation (CHECK credit_batches_remaining_in_range) (a payment's live grant given more than it gave has its allocation grown by the difference). Its cost comes off the kept budget spending
 * of the period it was charged in, when that period is of the current billing anchor. The audit
 * trail records `usage.refunded` with `reason`, the event's `cost` and `givenBack` (what the
 * account's total grew by: README "Audit trail").
 * @param reason free text, 1..500 characters, kept on the event and the entries.
 * @returns the event id.
 * @throws LedgerError NOT_FOUND, BAD_USER_INPUT (reason empty or > 500 characters; field
 *   usageEventId, reason BALANCE_LIMIT, when the credit given back would take the account's total
 *   above MAX_ABS_MICRO_CREDITS: nothing is written, as grants are refused at that limit).
 */
export async function refundUsage(ctx: ServiceContext, usageEventId: string, reason: string): Promise<string> {
  if (!reason.trim() || reason.length > 500) throw badInput('reason', 'must be 1 to 500 characters');
  freeText(reason, 'reason');
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lockOwner(tx, 'usage_events', usageEventId, 'usage event', ctx.clock());
    const ev = await tx.query('SELECT refunded_at, debt_micro_credits, agent_id, user_id, cost_micro_credits, recorded_at FROM usage_events WHERE id = $1', [usageEventId]);
    if (ev.rows[0].refunded_at) return usageEventId;
    // A plan roll that is due and has not run yet runs first, as before a charge (the roll the job
    // would make, dated as on time), so the refund meets the credit an on-time roll left: refunded
    // first, the credit it gave back was counted by the late ROLLOVER trim as standing at the
    // period start, and the ended period's statement closed at a total the account never had.
    await rollDuePeriodsFirst(atx);
    const totalBefore = atx.total;
    const drawn = await tx.query(
      `SELECT d.batch_id, d.amount_micro_credits FROM drawdowns d WHERE d.usage_event_id = $1 ORDER BY d.position`,
      [usageEventId],
    );
    const eventDebt = toBigInt(ev.rows[0].debt_micro_credits);
    let share: EventDebtShare = { unpaidMicroCredits: 0n, repaidByBatch: new Map() };
    /**
     * When each batch repaid debt (its grant's DEBT_REPAY entry: applyGrant repays once, when the
     * grant is made), from the history just read: repaid debt given back is new credit of a
     * billing period only when it was repaid before the period started (a grant of the period is
     * already in periodCredits by its whole amount).
     */
    const repaidAt = new Map<string, Date>();
    if (eventDebt > 0n) {
      const history = await readDebtHistory(tx, atx.accountId);
      // A due roll run first (above) may have repaid debt in this transaction: its DEBT_REPAY
      // entries are not in ledger_entries yet and come after every written fact. Left out, the
      // event's repaid debt counted as still owed, the debt was gone, and the repaid part was not
      // given back (1 credit less than after an on-time roll: statement-audit.test.ts).
      let seq = history.reduce((max, f) => (f.seq > max ? f.seq : max), 0n);
      for (const r of atx.pendingDebtRepays()) history.push({ seq: ++seq, kind: 'REPAY', amountMicroCredits: r.amountMicroCredits, usageEventId: null, batchId: r.batchId, at: r.at });
      const found = replayDebt(history).get(usageEventId);
      assert(found, 'an event with debt is in its account debt history');
      share = found;
      for (const f of history) if (f.kind === 'REPAY' && f.batchId && f.at && !repaidAt.has(f.batchId)) repaidAt.set(f.batchId, f.at);
    }
    // Every batch credit goes back to: the drawn parts, then the repaid parts (no batch is both:
    // a grant repays debt when it is made, after the event drew).
    // Each part with when its credit left the batches (refund_credits): drawn credit at the
    // event's recorded_at, repaid debt when the repaying grant repaid it (its DEBT_REPAY entry).
    const recordedAt = ev.rows[0].recorded_at as Date;
    const parts = [
      ...drawn.rows.map((r) => ({ batchId: r.batch_id as string, amount: toBigInt(r.amount_micro_credits), note: reason, leftAt: recordedAt })),
      ...[...share.repaidByBatch].map(([batchId, amount]) => ({ batchId, amount, note: `${reason} (repaid debt)`, leftAt: repaidAt.get(batchId) ?? recordedAt })),
    ];
    const batches = await readRefundBatches(tx, parts.map((p) => p.batchId));
    const paid = await readPaymentCredits(tx, atx.accountId, [...new Set([...batches.values()].flatMap((b) => (b.paymentId ? [b.paymentId] : [])))]);
    const carried = parts.length > 0 ? await rolloverRoom(atx, recordedAt) : null;
    const back = new Map<string, bigint>();
    /** Credit given back into batches, by when it had left them (ms since the epoch). */
    const backByLeftAt = new Map<number, bigint>();
    /** What batches given back more than they gave (a payment's live grant) may now hold beyond their allocation. */
    const grown = new Map<string, bigint>();
    const spendable = (b: { status: string; expires_at: Date | null }) =>
      b.status !== 'EXPIRED' && b.status !== 'VOIDED' && !(b.expires_at && b.expires_at.getTime() <= atx.now.getTime());
    const addBack = (p: (typeof parts)[number]) => {
      const b = batches.get(p.batchId)!;
      let batchId = p.batchId;
      let amount = p.amount;
      let note = p.note;
      const payment = b.paymentId ? paid.get(b.paymentId) : undefined;
      if (payment) {
        // Credit a payment bought follows the payment (readPaymentCredits): back into the grant that
        // carries its credit now, less the share of its refunded money not taken back yet.
        if (!spendable(payment.live)) return;
        const withheld = minBig(amount, payment.unrecoveredMicroCredits);
        payment.unrecoveredMicroCredits -= withheld;
        payment.takenMicroCredits += withheld;
        amount -= withheld;
        if (amount === 0n) return;
        if (payment.live.batchId !== batchId) {
          batchId = payment.live.batchId;
          grown.set(batchId, (grown.get(batchId) ?? 0n) + amount);
          note = `${p.note} (payment ${b.paymentId}'s credit, carried by its live grant)`;
        }
      } else {
        if (!spendable(b)) return;
        if (carried?.batchIds.has(p.batchId)) {
          amount = minBig(amount, carried.room);
          carried.room -= amount;
        }
        if (amount === 0n) return;
      }
      back.set(batchId, (back.get(batchId) ?? 0n) + amount);
      backByLeftAt.set(p.leftAt.getTime(), (backByLeftAt.get(p.leftAt.getTime()) ?? 0n) + amount);
      atx.addEntry({ type: 'REFUND', amountMicroCredits: amount, batchId, usageEventId, note });
    };
    parts.slice(0, drawn.rows.length).forEach(addBack);
    const forgiven = minBig(share.unpaidMicroCredits, atx.debt);
    if (forgiven > 0n) {
      atx.debt -= forgiven;
      atx.addEntry({ type: 'REFUND', amountMicroCredits: forgiven, usageEventId, note: `${reason} (debt forgiven)` });
    }
    parts.slice(drawn.rows.length).forEach(addBack);
    // The total is kept in a signed 64-bit column, like every amount: credit granted since the
    // event can have filled the room its cost left (grants stop at the limit, applyGrant).
    if (atx.total > MAX_ABS_MICRO_CREDITS) {
      throw new LedgerError(
        'BAD_USER_INPUT',
        `usageEventId: refunding it would take the account's credit above the largest amount kept (${formatCredits(MAX_ABS_MICRO_CREDITS)} credits); nothing was refunded`,
        { field: 'usageEventId', reason: BALANCE_LIMIT_REASON },
      );
    }
    if (backByLeftAt.size > 0) {
      // Before the statement that writes the REFUND entries (atx.finish): its balance snapshot
      // and alert check read the period's credit through balance_figures, which cannot see them
      // (migration period_credits_refund_rows).
      const leftAts = [...backByLeftAt.keys()];
      await tx.query(
        `INSERT INTO refund_credits (usage_event_id, left_at, account_id, refunded_at, amount_micro_credits)
         SELECT $1, d.left_at, $2, $3, d.amount FROM unnest($4::timestamptz[], $5::bigint[]) AS d(left_at, amount)`,
        [usageEventId, atx.accountId, atx.now, leftAts.map((ms) => new Date(ms)), leftAts.map((ms) => String(backByLeftAt.get(ms)))],
      );
    }
    if (back.size > 0) {
      const ids = [...back.keys()];
      await tx.query(
        `UPDATE credit_batches b SET remaining_micro_credits = b.remaining_micro_credits + d.amount,
                allocated_micro_credits = b.allocated_micro_credits + d.grown, status = 'ACTIVE', updated_at = $3
           FROM unnest($1::uuid[], $2::bigint[], $4::bigint[]) AS d(batch_id, amount, grown) WHERE b.id = d.batch_id`,
        [ids, ids.map((id) => String(back.get(id))), atx.now, ids.map((id) => String(grown.get(id) ?? 0n))],
      );
      // A batch a grant's repayment used up had no expiry job (applyGrant schedules one only for
      // credit left); the same job id as the grant's when it had one. So may a payment's live
      // grant given back credit drawn from its voided predecessor.
      const liveExpiries = new Map([...paid.values()].map((p) => [p.live.batchId, p.live.expires_at]));
      for (const id of ids) {
        const expiresAt = batches.get(id)?.expires_at ?? liveExpiries.get(id) ?? null;
        if (expiresAt && (share.repaidByBatch.has(id) || grown.has(id))) scheduleExpiry(atx, 'batch', id, expiresAt);
      }
    }
    for (const [paymentId, p] of paid) {
      if (p.takenMicroCredits === p.takenBeforeMicroCredits) continue;
      await tx.query('UPDATE payments SET refund_taken_micro_credits = $2, updated_at = $3 WHERE id = $1', [paymentId, p.takenMicroCredits.toString(), atx.now]);
    }
    await tx.query('UPDATE usage_events SET refunded_at = $2, refund_reason = $3 WHERE id = $1', [usageEventId, atx.now, reason]);
    const e = ev.rows[0];
    // The kept spending of the period the event was charged in. An event recorded before the
    // billing anchor (a plan subscribed since) was charged in a period of the old anchor, whose
    // kept rows subscribeToPlan deleted: nothing to take off. monthlyPeriodAt would name the new
    // anchor's first period for it, and take the old event's cost off that period's spending.
    if (recordedAt.getTime() >= atx.billingAnchorAt.getTime()) {
      await moveBudgetSpend(
        atx,
        { agentId: e.agent_id as string | null, userId: e.user_id as string | null },
        monthlyPeriodAt(atx.billingAnchorAt, recordedAt).start,
        -toBigInt(e.cost_micro_credits),
      );
    }
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'usage.refunded',
      accountId: atx.accountId,
      subjectType: 'usage_event',
      subjectId: usageEventId,
      // givenBack: what came back (REFUND entries: credit into batches, debt forgiven), less than
      // `cost` when credit went to expired or voided batches, a payment's refunded share was
      // withheld, or a rollover cap trimmed it: the trail shows what the account got, not only
      // what the event cost.
      details: { reason, cost: formatCredits(toBigInt(e.cost_micro_credits)), givenBack: formatCredits(atx.total - totalBefore) },
    });
    atx.touch();
    await atx.finish();
    return usageEventId;
  });
}
