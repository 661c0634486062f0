/**
 * recordUsage / recordUsageBatch: meter, price and charge work (architecture: "How one charge
 * flows"). Pricing is pure and in memory (the price book in force); the charge is one
 * transaction that locks the account's balance row, checks the idempotency key, draws the cost
 * from batches in drawdown order (src/ledger/drawdown.ts), and writes the event, its drawdowns,
 * one CONSUME ledger entry and the new balance.
 *
 * Without a reservation the event is refused with INSUFFICIENT_CREDITS when available credit
 * (total - reserved) does not cover a non-zero cost, and nothing is recorded. With a
 * reservation the cost comes from the hold first, then from available credit, and beyond that
 * it becomes debt (a negative balance) that the next grant repays (contract RecordUsageInput).
 * A charge that would take that debt, or what its hold has consumed, past the largest amount
 * kept (MAX_ABS_MICRO_CREDITS, a signed 64-bit column) is refused with BAD_USER_INPUT, reason
 * BALANCE_LIMIT, as grants are, decided in memory before anything is written. Usage captured
 * against a hold is the hold's agent's and user's (chargeSubjects: README "Budgets inside a pool").
 */
import { randomUUID } from 'node:crypto';
import { awaitInOrder, deferStatement, isDatabaseUnavailable, isStatementTimeout, PipelinedCommit, withTransaction, type Tx } from '../db/pg.js';
import { LedgerError, assert, badInput } from '../ledger/errors.js';
import { planDrawdown, type DrawdownPart } from '../ledger/drawdown.js';
import { formatCredits, maxBig, minBig } from '../ledger/credits.js';
import { priceUsage, type PricedUsage } from '../pricing/price-book.js';
import { rollDuePeriodsFirst } from './plans.js';
import { AccountTx, budgetSubjectKey, type ChargeState, type HoldState, type LoadedBatch, type SubjectBudgetState } from './account-tx.js';
import { SETTLE_NOTE, isHolding, reservationNotActive } from './reservation-tx.js';
import type { ReserveCommand } from './reserve-credits.js';
import { chargeLimitRefusal, idempotencyConflict } from '../ledger/refusals.js';
import { afterCreditRefusals, creditRefusal } from './depletion-alerts.js';
import { scheduleExpiry } from './expire-due.js';
import type { ServiceContext } from './context.js';
import { requestHash } from './request-hash.js';
import { validateUsageInput, type UsageCommand, type UsageInput } from './usage-command.js';
import type { ActivePriceBook, SettingsRecord } from './pricing-state.js';
import { assertWithinBudgets, budgetExceeded, moveBudgetSpend, moveBudgetSpendMany, type BudgetSpendMove, type BudgetSubjectKind } from './spending-budgets.js';

/** The recorded (or replayed) event's id. */
export interface ChargeResult {
  eventId: string;
  replayed: boolean;
  /** The usage_events row as written (pg's snake_case columns), when this call recorded it. */
  row?: Record<string, unknown>;
}

/** A priced line as stored on the event (amounts as canonical Credits text). */
export interface StoredCostLine {
  item: string;
  quantity: string;
  unitPrice: string;
  amount: string;
  exactAmount: string;
}

/**
 * How far after the charged account's "now" an event's occurredAt may lie: 5 minutes of clock
 * skew between the platform's servers and creditpool, as Stripe allows for meter events ("Must be
 * within the past 35 calendar days or up to 5 minutes in the future", https://docs.stripe.com/api/v2/billing-meter/object).
 * A later occurredAt would be priced at a future instant's catalog prices and counted in a
 * future month of usageSummary and usageHistory, not in the period it was charged in; it is
 * BAD_USER_INPUT. Earlier instants (backfills) are accepted without a bound.
 */
export const MAX_OCCURRED_AT_AHEAD_MS = 5 * 60_000;

/**
 * Prices a usage command with the book and settings in force.
 * @param accountNow the charged account's "now" (AccountTx.now: its test clock for a test-mode
 *   account, else the wall clock): the instant whose catalog prices (date- and time-of-day-
 *   dependent LLM prices) apply when the command has no occurredAt, i.e. the instant the event is
 *   recorded as having occurred (README "Test clocks": every rule reads "now" from the account's
 *   clock; docs/pricing.md: prices apply by the event's time).
 * @throws LedgerError BAD_USER_INPUT when occurredAt is more than MAX_OCCURRED_AT_AHEAD_MS after
 *   `accountNow`, no price book is published, no rule matches, or the model is unknown without a
 *   fallback.
 */
export function priceCommand(cmd: UsageCommand, book: ActivePriceBook | null, settings: SettingsRecord, accountNow: Date): PricedUsage {
  if (cmd.occurredAt && cmd.occurredAt.getTime() - accountNow.getTime() > MAX_OCCURRED_AT_AHEAD_MS) {
    throw badInput('occurredAt', `must not be more than ${MAX_OCCURRED_AT_AHEAD_MS / 60_000} minutes after the account's current time (${accountNow.toISOString()})`);
  }
  if (!book) throw new LedgerError('BAD_USER_INPUT', 'no price book has been published yet');
  return priceUsage(
    book.book,
    {
      category: cmd.category,
      model: cmd.model,
      tier: cmd.tier,
      sku: cmd.sku,
      quantities: cmd.quantities,
      providerCostUsd: cmd.providerCostUsd,
      byok: cmd.byok,
      occurredAt: cmd.occurredAt ?? accountNow,
    },
    { creditUsdValue: settings.creditUsdValue },
  );
}

/**
 * A usage command's pricing, called once its account is locked and only when its idempotency key
 * is new, with the account's "now" (AccountTx.now; see priceCommand): the priced event and the
 * version of the price book it was priced with.
 * @throws LedgerError BAD_USER_INPUT as priceCommand.
 */
export type Pricer = (accountNow: Date) => { priced: PricedUsage; version: number };

function commandHash(cmd: UsageCommand): string {
  return requestHash({ ...cmd, op: 'usage' });
}

/** The agent and user of a usage event or hold (null: none). */
export interface UsageSubjects {
  agentId: string | null;
  userId: string | null;
}

/**
 * Whose usage a charge is, for the event row and the budgets (README "Budgets inside a pool").
 * A charge without a hold is the agent's and user's it names, and is checked against their
 * budgets. Usage captured against a hold belongs to the hold's subjects, per field (agentId,
 * userId): the hold was checked against their budgets and counts against them while it holds, so
 * its captures must count there too, or a capture would free the hold's share of a budget and
 * count nowhere. The usage may name the hold's subject or leave it out (the event then records
 * the hold's), and is not checked for it (the hold was the authorization). Where the hold has no
 * subject, the usage's own (if any) was authorized by nothing: it is recorded and checked like a
 * charge without a hold, so naming an agent that has a budget cannot bypass that budget.
 * The request hash stays that of the command as sent (a replay of a capture recorded before
 * this rule still replays).
 * @param hold the hold captured against (its agentId/userId as stored), or null for a charge without one
 * @returns `recorded`: the subjects stored on the event, whose budget spending its cost moves;
 *   `checked`: those whose budgets the cost must fit in (a subset); `refusal`: BAD_USER_INPUT naming
 *   `agentId` / `userId` when the usage names another subject than the hold has (nothing may be
 *   written then), else null.
 */
export function chargeSubjects(
  cmd: Pick<UsageCommand, 'agentId' | 'userId'>,
  hold: { agentId?: string | null; userId?: string | null } | null,
): { recorded: UsageSubjects; checked: UsageSubjects; refusal: LedgerError | null } {
  const named: UsageSubjects = { agentId: cmd.agentId ?? null, userId: cmd.userId ?? null };
  if (!hold) return { recorded: named, checked: named, refusal: null };
  const held: UsageSubjects = { agentId: hold.agentId ?? null, userId: hold.userId ?? null };
  const refusal =
    held.agentId !== null && named.agentId !== null && named.agentId !== held.agentId
      ? badInput('agentId', "must be the reservation's agentId or be omitted: usage captured against a hold is the hold's agent's")
      : held.userId !== null && named.userId !== null && named.userId !== held.userId
        ? badInput('userId', "must be the reservation's userId or be omitted: usage captured against a hold is the hold's user's")
        : null;
  return {
    recorded: { agentId: held.agentId ?? named.agentId, userId: held.userId ?? named.userId },
    checked: { agentId: held.agentId === null ? named.agentId : null, userId: held.userId === null ? named.userId : null },
    refusal,
  };
}

/**
 * Charges one usage command inside a locked account transaction. `price` is called only when
 * the idempotency key is new (a retry returns the first event even if prices changed since).
 * Every refusal is thrown BEFORE the first write, so a caller may catch a LedgerError and keep
 * using the same transaction (recordUsageBatch relies on this). A capture is recorded under its
 * hold's agent and user (chargeSubjects).
 * @throws LedgerError IDEMPOTENCY_CONFLICT, NOT_FOUND (reservation), RESERVATION_NOT_ACTIVE,
 *   BAD_USER_INPUT naming agentId / userId (a capture naming another subject than its hold's),
 *   BUDGET_EXCEEDED (agent/user budget: charges without a reservation, and a capture's subject
 *   its hold has none of), INSUFFICIENT_CREDITS, BAD_USER_INPUT (from pricing; reason
 *   BALANCE_LIMIT when the account's debt or the hold's consumed would pass
 *   MAX_ABS_MICRO_CREDITS: ledger/refusals.ts chargeLimitRefusal).
 */
export async function applyCharge(atx: AccountTx, cmd: UsageCommand, price: Pricer): Promise<ChargeResult> {
  const hash = commandHash(cmd);
  const stateOf = () => atx.state({ reservationId: cmd.reservationId, agentId: cmd.agentId, userId: cmd.userId, usageIdempotencyKey: cmd.idempotencyKey });
  let state = await stateOf();
  if (state.priorUsage) {
    if (state.priorUsage.requestHash !== hash) {
      throw idempotencyConflict('usage event');
    }
    return { eventId: state.priorUsage.id, replayed: true };
  }
  // The plan's period that began and has not rolled yet is rolled first (plans.ts).
  if (await rollDuePeriodsFirst(atx)) state = await stateOf();

  let holdLeft = 0n;
  if (cmd.reservationId) {
    const r = state.reservation;
    if (!r) throw new LedgerError('NOT_FOUND', 'reservation not found');
    if (!isHolding(r, atx.now)) throw reservationNotActive(r.status);
    holdLeft = maxBig(r.amountMicroCredits - r.consumedMicroCredits, 0n);
  }
  // A capture is the hold's agent's and user's (chargeSubjects).
  const subjects = chargeSubjects(cmd, cmd.reservationId ? state.reservation : null);
  if (subjects.refusal) throw subjects.refusal;

  const { priced, version } = price(atx.now);
  const cost = priced.costMicroCredits;
  const { reservedMicroCredits: reservedOthers } = state;
  // `hasBudget` is about the recorded subjects, of which the checked ones are a part.
  if (state.hasBudget) await assertWithinBudgets(atx, subjects.checked, cost);
  const spendable = state.spendableMicroCredits;

  let toDraw: bigint;
  let debtAdded = 0n;
  if (!cmd.reservationId) {
    const available = spendable - atx.debt - reservedOthers;
    if (cost > 0n && cost > available) {
      throw creditRefusal(atx, 'cost', cost, available);
    }
    toDraw = cost;
  } else {
    const fromHold = minBig(cost, holdLeft);
    const availableOutsideHold = spendable - atx.debt - reservedOthers - holdLeft;
    const fromAvailable = minBig(cost - fromHold, maxBig(availableOutsideHold, 0n));
    toDraw = fromHold + fromAvailable;
    debtAdded = cost - toDraw;
  }
  const batches = state.batchesComplete || remainingOf(state.batches) >= toDraw ? state.batches : await atx.allSpendableBatches();
  const plan = planDrawdown(batches, toDraw, atx.now);
  debtAdded += plan.shortfallMicroCredits; // a hold whose batches expired or were voided meanwhile
  const overLimit = chargeLimitRefusal(atx.debt + debtAdded, state.reservation ? state.reservation.consumedMicroCredits + cost : null);
  if (overLimit) throw overLimit;

  const eventId = randomUUID();
  const recorded = { ...cmd, ...subjects.recorded }; // `hash` stays the request's as sent
  const [row] = await insertUsageEvents(atx.tx, [{ atx, id: eventId, cmd: recorded, hash, cost, debtAdded, priced, version, parts: plan.parts }]);
  // Captures included: a budget counts the subject's whole usage (spending-budgets.ts).
  if (state.hasBudget) await moveBudgetSpend(atx, subjects.recorded, atx.period().start, cost);
  atx.debt += debtAdded;
  // No `usage` outbox row: the CONSUME entry changes the balance, so finish() writes this
  // transaction's `balance` row, which is what wakes usageRecorded (graphql/subscriptions.ts).
  atx.addEntry({ type: 'CONSUME', amountMicroCredits: -cost, usageEventId: eventId, reservationId: cmd.reservationId, note: cmd.category });
  return { eventId, replayed: false, row };
}

/** The credit left in `batches` (micro-credits). */
export function remainingOf(batches: readonly LoadedBatch[]): bigint {
  let sum = 0n;
  for (const b of batches) sum += b.remainingMicroCredits;
  return sum;
}

/**
 * What one transaction's decisions leave for the account's next transaction, as chargeAccounts's
 * state read would find it once this one committed (GroupCommitter's carried state): the spendable
 * batches (micro-credits), whether the account has a spending budget, and the budgets (kept
 * spending of the period, nothing held) of the subjects the state was read for.
 */
export interface CarriedDecisions {
  batches: LoadedBatch[];
  /** What all spendable batches hold after these decisions, loaded or not (micro-credits). */
  spendableMicroCredits: bigint;
  /** `batches` are all the spendable batches (ChargeState.batchesComplete). */
  batchesComplete: boolean;
  /** ChargeState.earliestExpiryAt of the state these decisions started from. */
  earliestExpiryAt: Date | null;
  hasAnyBudget: boolean;
  budgets: Map<string, SubjectBudgetState>;
  /** The subjects (budgetSubjectKey) `budgets` says something about: a next transaction naming another must read its state. */
  budgetSubjectsRead: ReadonlySet<string>;
}

/** A charge decided in memory, ready to be written. */
interface PreparedEvent {
  /** The locked account it is charged to. */
  atx: AccountTx;
  /** The event's id, generated here so one statement can write the event and what refers to it. */
  id: string;
  cmd: UsageCommand;
  hash: string;
  /** Micro-credits. */
  cost: bigint;
  /** Micro-credits of the cost that became debt. */
  debtAdded: bigint;
  priced: PricedUsage;
  version: number;
  parts: DrawdownPart[];
}

/**
 * Writes usage events with their drawdowns and the batches they drew from (and, for a single
 * event, the reservation it captured against) in ONE statement (multi-row, in input order so
 * `seq` follows it).
 *
 * PostgreSQL returns only what it decides or normalizes: `seq` (its sequence), the numeric
 * quantities and provider cost (numeric(30, 9|12) text) and `metadata` (jsonb orders and dedupes
 * keys); every other column is what this statement wrote, taken from `events` as pg would have
 * parsed it (timestamptz(3) from the same millisecond Dates, int8 as decimal text, `lines` as
 * the objects it serialized; refunded_at and refund_reason NULL). Parsing `RETURNING *` cost the
 * server ~13 µs of CPU per row against ~1.8 µs for these columns (1,000 stored rows, pg 8).
 * A test compares the rows with the events read back.
 * @returns the inserted usage_events rows (snake_case columns, as `SELECT *` returns them), in input order.
 */
async function insertUsageEvents(tx: Tx, events: readonly PreparedEvent[]): Promise<Record<string, unknown>[]> {
  const col = <T>(f: (e: PreparedEvent) => T): T[] => events.map(f);
  const lines = events.map((e) => storedLines(e.priced));
  const dd = events.flatMap((e) => e.parts.map((p, i) => ({ event: e.id, batch: p.batchId, position: i, amount: p.amountMicroCredits.toString(), now: e.atx.now })));
  const { rows } = await tx.query({
    name: 'cp-charge-insert',
    text: `WITH ev AS (
       INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, recorded_at, category, model, tier, sku,
                                 agent_id, user_id, task_id, conversation_id, message_id, input_tokens, output_tokens,
                                 reasoning_tokens, cache_read_tokens, cache_write_tokens, seconds, units, provider_cost_usd,
                                 byok, cost_micro_credits, debt_micro_credits, lines, reservation_id, price_book_version, metadata)
       SELECT t.id, t.account, t.key, t.hash, COALESCE(t.occurred_at, t.now), t.now, t.category, t.model, t.tier, t.sku,
              t.agent_id, t.user_id, t.task_id, t.conversation_id, t.message_id, t.input_tokens, t.output_tokens,
              t.reasoning_tokens, t.cache_read_tokens, t.cache_write_tokens, t.seconds, t.units, t.provider_cost_usd,
              t.byok, t.cost, t.debt, t.lines, t.reservation_id, t.price_book_version, t.metadata
         FROM unnest($3::uuid[], $4::text[], $5::text[], $6::timestamptz[], $7::text[], $8::text[], $9::text[], $10::text[],
                     $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::int[], $17::int[], $18::int[], $19::int[],
                     $20::int[], $21::numeric[], $22::numeric[], $23::numeric[], $24::boolean[], $25::bigint[], $26::bigint[],
                     $27::jsonb[], $28::uuid[], $29::int[], $30::jsonb[], $1::uuid[], $2::timestamptz[])
              WITH ORDINALITY AS t(id, key, hash, occurred_at, category, model, tier, sku, agent_id, user_id, task_id,
                                   conversation_id, message_id, input_tokens, output_tokens, reasoning_tokens, cache_read_tokens,
                                   cache_write_tokens, seconds, units, provider_cost_usd, byok, cost, debt, lines, reservation_id,
                                   price_book_version, metadata, account, now, ord)
        ORDER BY t.ord
       RETURNING id, seq, seconds, units, provider_cost_usd, metadata
     ), dd AS (
       INSERT INTO drawdowns (id, usage_event_id, batch_id, position, amount_micro_credits)
       SELECT gen_random_uuid(), d.event, d.batch, d.position, d.amount
         FROM unnest($31::uuid[], $32::uuid[], $33::int[], $34::bigint[]) AS d(event, batch, position, amount)
     ), ub AS (
       UPDATE credit_batches b
          SET remaining_micro_credits = b.remaining_micro_credits - d.amount,
              status = CASE WHEN b.remaining_micro_credits - d.amount = 0 THEN 'EXHAUSTED'::"BatchStatus" ELSE b.status END,
              updated_at = d.now
         FROM (SELECT batch, SUM(amount)::bigint AS amount, MAX(now) AS now FROM unnest($32::uuid[], $34::bigint[], $35::timestamptz[]) AS x(batch, amount, now) GROUP BY batch) d
        WHERE b.id = d.batch
     ), ur AS (
       -- Captures: each hold's consumed grows by the cost of its events (a primary-key probe per hold).
       UPDATE reservations r SET consumed_micro_credits = r.consumed_micro_credits + x.amount
         FROM (SELECT id, SUM(cost)::bigint AS amount FROM unnest($28::uuid[], $25::bigint[]) AS x(id, cost)
                WHERE id IS NOT NULL GROUP BY id) x
        WHERE r.id = x.id
     )
     SELECT * FROM ev`,
    values: [
      col((e) => e.atx.accountId),
      col((e) => e.atx.now),
      col((e) => e.id),
      col((e) => e.cmd.idempotencyKey),
      col((e) => e.hash),
      col((e) => e.cmd.occurredAt),
      col((e) => e.cmd.category),
      col((e) => e.cmd.model),
      col((e) => e.cmd.tier),
      col((e) => e.cmd.sku),
      col((e) => e.cmd.agentId),
      col((e) => e.cmd.userId),
      col((e) => e.cmd.taskId),
      col((e) => e.cmd.conversationId),
      col((e) => e.cmd.messageId),
      col((e) => e.cmd.quantities.inputTokens),
      col((e) => e.cmd.quantities.outputTokens),
      col((e) => e.cmd.quantities.reasoningTokens),
      col((e) => e.cmd.quantities.cacheReadTokens),
      col((e) => e.cmd.quantities.cacheWriteTokens),
      col((e) => e.cmd.quantities.seconds),
      col((e) => e.cmd.quantities.units),
      col((e) => e.cmd.providerCostUsd),
      col((e) => e.cmd.byok),
      col((e) => e.cost.toString()),
      col((e) => e.debtAdded.toString()),
      lines.map((l) => JSON.stringify(l)),
      col((e) => e.cmd.reservationId),
      col((e) => e.version),
      col((e) => (e.cmd.metadata === null || e.cmd.metadata === undefined ? null : JSON.stringify(e.cmd.metadata))),
      dd.map((d) => d.event),
      dd.map((d) => d.batch),
      dd.map((d) => d.position),
      dd.map((d) => d.amount),
      dd.map((d) => d.now),
    ],
  });
  const byId = new Map(rows.map((r) => [r.id as string, r as Record<string, unknown>]));
  return events.map((e, i) => {
    const r = byId.get(e.id)!;
    return usageEventRow(e.cmd, {
      id: e.id,
      seq: r.seq,
      accountId: e.atx.accountId,
      requestHash: e.hash,
      now: e.atx.now,
      seconds: r.seconds,
      units: r.units,
      providerCostUsd: r.provider_cost_usd,
      costMicroCredits: e.cost.toString(),
      debtMicroCredits: e.debtAdded.toString(),
      lines: lines[i],
      priceBookVersion: e.version,
      metadata: r.metadata,
    });
  });
}

/** What a usage_events row holds beyond its command's own fields: decided by the charge or returned by the INSERT. */
export interface UsageRowDecided {
  id: string;
  /** int8 as text, as pg returns it. */
  seq: unknown;
  /** The account whose row the transaction locked and charged. */
  accountId: string;
  requestHash: string;
  /** The transaction's clock: recorded_at, and occurred_at when the command has none. */
  now: Date;
  /** numeric columns as text, metadata as parsed JSON: as the database normalised them. */
  seconds: unknown;
  units: unknown;
  providerCostUsd: unknown;
  costMicroCredits: string;
  debtMicroCredits: string;
  lines: unknown;
  priceBookVersion: number;
  metadata: unknown;
}

/**
 * The usage_events row of an event recorded from `cmd`, in pg's shape (snake_case columns, int8
 * and numeric as text), as a `SELECT *` would return it right after the INSERT: the command's
 * own fields plus `decided`. The API answers a new charge from it (db/usage-event-row.ts
 * `usageEventFromRow`) instead of reading the event again.
 */
export function usageEventRow(cmd: UsageCommand, decided: UsageRowDecided): Record<string, unknown> {
  const q = cmd.quantities;
  return {
    id: decided.id,
    seq: decided.seq,
    account_id: decided.accountId,
    idempotency_key: cmd.idempotencyKey,
    request_hash: decided.requestHash,
    occurred_at: cmd.occurredAt ?? decided.now,
    recorded_at: decided.now,
    category: cmd.category,
    model: cmd.model,
    tier: cmd.tier,
    sku: cmd.sku,
    agent_id: cmd.agentId,
    user_id: cmd.userId,
    task_id: cmd.taskId,
    conversation_id: cmd.conversationId,
    message_id: cmd.messageId,
    input_tokens: q.inputTokens,
    output_tokens: q.outputTokens,
    reasoning_tokens: q.reasoningTokens,
    cache_read_tokens: q.cacheReadTokens,
    cache_write_tokens: q.cacheWriteTokens,
    seconds: decided.seconds,
    units: decided.units,
    provider_cost_usd: decided.providerCostUsd,
    byok: cmd.byok,
    cost_micro_credits: decided.costMicroCredits,
    debt_micro_credits: decided.debtMicroCredits,
    lines: decided.lines,
    reservation_id: cmd.reservationId,
    price_book_version: decided.priceBookVersion,
    refunded_at: null,
    refund_reason: null,
    metadata: decided.metadata,
  };
}

function storedLines(priced: PricedUsage): StoredCostLine[] {
  return priced.lines.map((l) => ({
    item: l.item,
    quantity: l.quantity,
    unitPrice: l.unitPrice,
    amount: formatCredits(l.amountMicroCredits),
    exactAmount: l.exactAmount,
  }));
}

/** One charge of a group: the command and its pricing thunk. */
export interface ChargeItem {
  cmd: UsageCommand;
  price: Pricer;
}

/**
 * An operation on a hold that chargeAccounts decides in memory with the account's charges: a
 * hold (reserveCredits; `hash` is its request hash) or a settle without usage items
 * (settleReservation).
 */
export type HoldOp = { kind: 'reserve'; cmd: ReserveCommand; hash: string } | { kind: 'settle'; reservationId: string };

/**
 * A hold operation as an item of a charge group. `alone` performs it on the locked account with
 * statements of its own (accounts whose budget spending row of the period is not there yet, and
 * retries one item per transaction);
 * it must throw its LedgerErrors only before its first write, since it runs without a savepoint.
 * `T` is what both ways return.
 */
export interface HoldOpItem<T = unknown> {
  op: HoldOp;
  alone: (atx: AccountTx) => Promise<T>;
}

/**
 * What a hold operation returns: the reservation, whether the call replayed an earlier one (a hold
 * of a recorded key, a settle of a settled hold), and the reservations row as written (pg's snake_case columns) when this call wrote it
 * (decided in memory; `alone` leaves it out).
 */
export interface ReservationResult {
  reservationId: string;
  replayed?: boolean;
  row?: Record<string, unknown>;
}

/** An item of a charge group: a charge or a hold operation. */
export type GroupItem = ChargeItem | HoldOpItem;

/** Outcome of one item of a group: its result, or the error that refused it. */
export type ItemOutcome = { ok: true; result: unknown } | { ok: false; error: unknown };

/** A hold made in memory, to be inserted (writeHoldOps). */
interface NewHold {
  id: string;
  atx: AccountTx;
  cmd: ReserveCommand;
  hash: string;
  expiresAt: Date;
}

/**
 * A budgeted subject's running figures while chargeAccounts decides its account's items in memory
 * (micro-credits): what spending-budgets.ts's check would read at each item, kept in step with
 * the decisions.
 */
interface BudgetTrack {
  subjectKind: BudgetSubjectKind;
  subjectId: string;
  limitMicroCredits: bigint;
  /** The subject's usage cost in the current period (its kept row); null when the row is not there (checks then take the statement path). */
  spentMicroCredits: bigint | null;
  /** Held by the subject's ACTIVE unexpired holds. */
  heldMicroCredits: bigint;
  /** What the group's events add to the kept row (written by moveBudgetSpendMany). */
  movedMicroCredits: bigint;
}

/** The agent and user an item or hold names, as budget subjects. */
function subjectsOf(x: { agentId?: string | null; userId?: string | null }): { subjectKind: BudgetSubjectKind; subjectId: string }[] {
  const subjects: { subjectKind: BudgetSubjectKind; subjectId: string }[] = [];
  if (x.agentId) subjects.push({ subjectKind: 'AGENT', subjectId: x.agentId });
  if (x.userId) subjects.push({ subjectKind: 'USER', subjectId: x.userId });
  return subjects;
}

/** The budget keys (budgetSubjectKey) of an item's or hold's agent and user. */
export function subjectKeys(x: { agentId?: string | null; userId?: string | null }): string[] {
  return subjectsOf(x).map((b) => budgetSubjectKey(b.subjectKind, b.subjectId));
}

/**
 * assertWithinBudgets in memory: the BUDGET_EXCEEDED refusal of `amountMicroCredits` more for the
 * subjects `x` names, or null when every budget of theirs has room (or the amount is not positive).
 */
function budgetRefusal(budgets: ReadonlyMap<string, BudgetTrack>, x: { agentId?: string | null; userId?: string | null }, amountMicroCredits: bigint): LedgerError | null {
  if (amountMicroCredits <= 0n) return null;
  for (const key of subjectKeys(x)) {
    const t = budgets.get(key);
    if (!t) continue;
    assert(t.spentMicroCredits !== null, 'a budget checked in memory has its kept spending of the period');
    const spentMicroCredits = t.spentMicroCredits + t.heldMicroCredits;
    if (spentMicroCredits + amountMicroCredits > t.limitMicroCredits) return budgetExceeded({ ...t, spentMicroCredits }, amountMicroCredits);
  }
  return null;
}

/** Moves the held credit of the budgeted subjects of `hold` by `deltaMicroCredits`. */
function moveHeld(budgets: ReadonlyMap<string, BudgetTrack>, hold: { agentId?: string | null; userId?: string | null }, deltaMicroCredits: bigint): void {
  for (const key of subjectKeys(hold)) {
    const t = budgets.get(key);
    if (t) t.heldMicroCredits += deltaMicroCredits;
  }
}

/**
 * The budgets of a locked account's state as running figures for its items, or null when a
 * budget one of them must be checked against has no kept spending row for the account's current
 * period (the first check of a period starts it from the SUM: spending-budgets.ts; those items
 * take the statement path).
 */
function budgetTracks(state: ChargeState, atx: AccountTx, items: readonly GroupItem[]): Map<string, BudgetTrack> | null {
  const tracks = new Map<string, BudgetTrack>();
  if (state.budgets.size === 0) return tracks;
  const periodStartMs = atx.period().start.getTime();
  for (const [key, b] of state.budgets) {
    const current = b.keptPeriodStart !== null && b.keptPeriodStart.getTime() === periodStartMs;
    tracks.set(key, {
      subjectKind: b.subjectKind,
      subjectId: b.subjectId,
      limitMicroCredits: b.limitMicroCredits,
      spentMicroCredits: current ? b.keptMicroCredits : null,
      heldMicroCredits: b.heldMicroCredits,
      movedMicroCredits: 0n,
    });
  }
  for (const item of items) {
    // What is checked: a charge without a hold, a new hold, and a capture's subjects its hold has
    // none of (chargeSubjects; the hold's own are not re-checked).
    const checked =
      'op' in item
        ? item.op.kind === 'reserve'
          ? item.op.cmd
          : null
        : !item.cmd.reservationId
          ? item.cmd
          : state.reservations.has(item.cmd.reservationId)
            ? chargeSubjects(item.cmd, state.reservations.get(item.cmd.reservationId)!).checked
            : null; // refused NOT_FOUND
    if (checked && subjectKeys(checked).some((k) => tracks.get(k)?.spentMicroCredits === null)) return null;
  }
  return tracks;
}

/** One locked account's running figures while chargeAccounts decides its items in memory. */
interface AccountDecisions {
  atx: AccountTx;
  /** Remaining credit of its spendable batches (micro-credits). */
  spendableMicroCredits: bigint;
  /** Held by its ACTIVE unexpired holds (micro-credits). */
  reservedMicroCredits: bigint;
  /** The holds the items name or create, by id. */
  holds: Map<string, HoldState>;
  /** Holds made under the items' hold idempotency keys, by key. */
  priorHolds: Map<string, { id: string; requestHash: string }>;
  /** The budgets of the subjects its items name, by budgetSubjectKey (empty without budgets). */
  budgets: Map<string, BudgetTrack>;
}

/** What the hold operations of one chargeAccounts call leave to write (writeHoldOps), and the results that get the written rows. */
interface HoldWrites {
  created: NewHold[];
  settled: { id: string; atx: AccountTx }[];
  /** By reservation id. */
  results: Map<string, ReservationResult>;
}

/**
 * Decides one hold operation in memory, under the rules of its statement-by-statement path:
 * a hold (holdOnLockedAccount: the idempotency key first, then the available credit) or a settle
 * without usage (settleReservation: a settled hold replays, a closed or expired one is refused,
 * else it is settled and its unused rest released). Updates `acct`, records the ledger entry and
 * outbox rows on its AccountTx, and queues the write in `writes`.
 * @returns the outcome (ReservationResult, or the LedgerError refusal).
 */
function decideHoldOp(acct: AccountDecisions, op: HoldOp, writes: HoldWrites): ItemOutcome {
  const { atx } = acct;
  if (op.kind === 'reserve') {
    const { cmd, hash } = op;
    const prior = acct.priorHolds.get(cmd.idempotencyKey);
    if (prior) return prior.requestHash === hash ? { ok: true, result: { reservationId: prior.id, replayed: true } } : { ok: false, error: idempotencyConflict('reservation') };
    const overBudget = budgetRefusal(acct.budgets, cmd, cmd.amountMicroCredits);
    if (overBudget) return { ok: false, error: overBudget };
    const available = acct.spendableMicroCredits - atx.debt - acct.reservedMicroCredits;
    if (cmd.amountMicroCredits > available) return { ok: false, error: creditRefusal(atx, 'hold', cmd.amountMicroCredits, available) };
    const id = randomUUID();
    const expiresAt = new Date(atx.now.getTime() + cmd.ttlSeconds * 1000);
    writes.created.push({ id, atx, cmd, hash, expiresAt });
    const hold: HoldState = { amountMicroCredits: cmd.amountMicroCredits, consumedMicroCredits: 0n, status: 'ACTIVE', expiresAt, agentId: cmd.agentId ?? null, userId: cmd.userId ?? null };
    acct.holds.set(id, hold);
    acct.priorHolds.set(cmd.idempotencyKey, { id, requestHash: hash });
    acct.reservedMicroCredits += cmd.amountMicroCredits;
    moveHeld(acct.budgets, hold, cmd.amountMicroCredits);
    atx.addEntry({ type: 'RESERVE', amountMicroCredits: cmd.amountMicroCredits, reservationId: id });
    scheduleExpiry(atx, 'hold', id, expiresAt);
    const result: ReservationResult = { reservationId: id, replayed: false };
    writes.results.set(id, result);
    return { ok: true, result };
  }
  const hold = acct.holds.get(op.reservationId);
  if (!hold) return { ok: false, error: new LedgerError('NOT_FOUND', 'reservation not found') };
  const result: ReservationResult = { reservationId: op.reservationId, replayed: false };
  if (hold.status === 'SETTLED') return { ok: true, result: { reservationId: op.reservationId, replayed: true } };
  if (!isHolding(hold, atx.now)) return { ok: false, error: reservationNotActive(hold.status) };
  const released = maxBig(hold.amountMicroCredits - hold.consumedMicroCredits, 0n);
  acct.reservedMicroCredits -= released;
  moveHeld(acct.budgets, hold, -released);
  hold.status = 'SETTLED';
  writes.settled.push({ id: op.reservationId, atx });
  if (released > 0n) atx.addEntry({ type: 'RELEASE', amountMicroCredits: -released, reservationId: op.reservationId, note: SETTLE_NOTE });
  else atx.touch();
  writes.results.set(op.reservationId, result);
  return { ok: true, result };
}

/**
 * Charges groups of usage commands, each group on one account locked by the same transaction
 * (`tx`); each charge succeeds or fails on its own, in input order within its group. The caller
 * writes the balances once (`AccountTx.finishMany` / `finish`), so each account's balance
 * version moves once (the contract asks for "at least 1 on every change").
 *
 * Charges, captures against a hold included, are decided in memory from ONE read of all the
 * accounts' batches, holds, prior idempotency keys, the reservations captured against and the
 * budgets of the agents and users named, and written with ONE multi-row statement for all accounts: a
 * charge no longer costs a read and a write round trip of its own. The rules are those of
 * applyCharge (same order of checks, same drawdown, same refusals, a capture beyond its hold and
 * the available credit becomes debt); an idempotency key repeated inside a group replays the
 * first item's event. Hold operations (HoldOpItem) among the items are decided the same way,
 * under the rules of their `alone` functions (reserve-credits.ts, settle-reservation.ts), and
 * written with one more statement for all accounts. Budgets are checked as assertWithinBudgets
 * does (a charge without a hold, a new hold, and a capture's subjects its hold has none of:
 * chargeSubjects; the subject's kept spending of the period plus what its holds hold), a capture
 * is recorded under its hold's subjects (the state read includes the budgets of the holds'
 * subjects, so their kept spending moves in memory too), and the group's kept spending written
 * with one more statement (moveBudgetSpendMany). An account with a budget to check whose kept spending row of the current
 * period is not there yet (its first check of the period creates it from a SUM) runs each item
 * with its own statements (applyCharge, `alone`).
 * @returns per group, one outcome per item (ChargeResult for a charge, what `alone` returns for
 *   an operation); refusals are LedgerErrors (IDEMPOTENCY_CONFLICT, INSUFFICIENT_CREDITS,
 *   BUDGET_EXCEEDED, NOT_FOUND and RESERVATION_NOT_ACTIVE for a capture or settle,
 *   BAD_USER_INPUT for a capture naming another agentId / userId than its hold's, from pricing,
 *   or with reason BALANCE_LIMIT as applyCharge, and applyCharge's on the slow path).
 *
 * `statesRead` is the state read issued right behind the accounts' lock statement, before its
 * answer (readChargeStates: same round trip); without it, or for an account it read at another
 * instant than the locked account's now, the state is read here.
 *
 * `carry`, when given, receives for each account decided in memory whose holds hold nothing, its
 * spendable batches and budgets after these decisions (the state its next transaction may start
 * from if this one commits: GroupCommitter's carried state).
 *
 * The event insert and the hold writes are issued together (one round trip, the ledger pool
 * pipelines). With `pending`, they are not awaited: their promises (with a `.catch` attached) are
 * pushed onto it, to go out with the caller's next statements and its COMMIT
 * (db/pg.ts PipelinedCommit), and the results' written rows (`row`) are only there once they
 * resolved.
 * @throws unexpected (non-LedgerError) errors, leaving the transaction to be rolled back.
 */
export async function chargeAccounts(
  tx: Tx,
  groups: readonly { atx: AccountTx; items: readonly ChargeItem[] }[],
  pending?: Promise<unknown>[],
  statesRead?: Promise<Map<string, ChargeState>>,
  carry?: Map<string, CarriedDecisions>,
): Promise<BatchItemResult[][]>;
export async function chargeAccounts(
  tx: Tx,
  groups: readonly { atx: AccountTx; items: readonly GroupItem[] }[],
  pending?: Promise<unknown>[],
  statesRead?: Promise<Map<string, ChargeState>>,
  carry?: Map<string, CarriedDecisions>,
): Promise<ItemOutcome[][]>;
export async function chargeAccounts(
  tx: Tx,
  groups: readonly { atx: AccountTx; items: readonly GroupItem[] }[],
  pending?: Promise<unknown>[],
  statesRead?: Promise<Map<string, ChargeState>>,
  carry?: Map<string, CarriedDecisions>,
): Promise<ItemOutcome[][]> {
  const sequential = async (atx: AccountTx, items: readonly GroupItem[]): Promise<ItemOutcome[]> => {
    const out: ItemOutcome[] = [];
    for (const item of items) {
      try {
        out.push({ ok: true, result: 'op' in item ? await item.alone(atx) : await applyCharge(atx, item.cmd, item.price) });
      } catch (error) {
        if (!(error instanceof LedgerError)) throw error;
        out.push({ ok: false, error });
      }
    }
    return out;
  };
  const results: ItemOutcome[][] = new Array(groups.length);
  // The state read issued with the lock (readChargeStates) is used where it was read at the
  // account's now as locked; any other account (none issued, or a test clock moved between the
  // two statements) is read now.
  const states = statesRead ? await statesRead : new Map<string, ChargeState>();
  const readAgain = async (stale: readonly { atx: AccountTx; items: readonly GroupItem[] }[]) => {
    if (stale.length === 0) return;
    const read = await AccountTx.chargeStates(
      tx,
      stale.map((g) => stateRequest(g.atx.accountId, g.items, g.atx.now, false)),
    );
    for (const g of stale) {
      const st = read.get(g.atx.accountId);
      if (st) states.set(g.atx.accountId, st);
      else states.delete(g.atx.accountId);
    }
  };
  await readAgain(groups.filter((g) => states.get(g.atx.accountId)?.now.getTime() !== g.atx.now.getTime()));
  // A plan whose period began and has not rolled yet is rolled before a new charge or hold
  // (plans.ts rollDuePeriodsFirst; known from the lock, no statement otherwise; replays do not
  // roll); the account is then read again.
  const rolled: typeof groups[number][] = [];
  for (const g of groups) {
    const st = states.get(g.atx.accountId);
    if (!st || !g.atx.periodRollDue() || !g.items.some((item) => isNewWork(item, st))) continue;
    if (await rollDuePeriodsFirst(g.atx)) rolled.push(g);
  }
  await readAgain(rolled);
  const events: PreparedEvent[] = [];
  const fresh: { out: ItemOutcome[]; index: number }[] = []; // parallel to `events`
  const holdWrites: HoldWrites = { created: [], settled: [], results: new Map() };
  const budgetMoves: BudgetSpendMove[] = [];
  for (let g = 0; g < groups.length; g++) {
    const { atx, items } = groups[g]!;
    const state = states.get(atx.accountId);
    const budgets = state && budgetTracks(state, atx, items);
    if (!state || !budgets) {
      results[g] = await sequential(atx, items);
      continue;
    }
    const out: ItemOutcome[] = [];
    results[g] = out;
    const acct: AccountDecisions = {
      atx,
      spendableMicroCredits: state.spendableMicroCredits,
      reservedMicroCredits: state.reservedMicroCredits, // held by ACTIVE unexpired holds, all of them
      holds: new Map([...state.reservations].map(([id, h]) => [id, { ...h }])),
      priorHolds: new Map(state.priorHolds),
      budgets,
    };
    let batches = state.batches.map((b) => ({ ...b }));
    let batchesComplete = state.batchesComplete;
    const recorded = new Map(state.priorUsage);
    for (const item of items) {
      if ('op' in item) {
        out.push(decideHoldOp(acct, item.op, holdWrites));
        continue;
      }
      const { cmd, price } = item;
      const hash = commandHash(cmd);
      const prior = recorded.get(cmd.idempotencyKey);
      if (prior) {
        out.push(replayOrConflict(prior, hash));
        continue;
      }
      const hold = cmd.reservationId ? acct.holds.get(cmd.reservationId) : undefined;
      if (cmd.reservationId) {
        if (!hold) {
          out.push({ ok: false, error: new LedgerError('NOT_FOUND', 'reservation not found') });
          continue;
        }
        if (!isHolding(hold, atx.now)) {
          out.push({ ok: false, error: reservationNotActive(hold.status) });
          continue;
        }
      }
      // applyCharge's rule: a capture is the hold's agent's and user's.
      const subjects = chargeSubjects(cmd, hold ?? null);
      if (subjects.refusal) {
        out.push({ ok: false, error: subjects.refusal });
        continue;
      }
      let priced: PricedUsage;
      let version: number;
      try {
        ({ priced, version } = price(atx.now));
      } catch (error) {
        if (!(error instanceof LedgerError)) throw error;
        out.push({ ok: false, error });
        continue;
      }
      const cost = priced.costMicroCredits;
      let toDraw: bigint;
      let debtAdded = 0n;
      let fromHold = 0n;
      // A charge without a hold, and a capture's subjects its hold has none of (chargeSubjects).
      const overBudget = budgetRefusal(acct.budgets, subjects.checked, cost);
      if (overBudget) {
        out.push({ ok: false, error: overBudget });
        continue;
      }
      if (!hold) {
        const available = acct.spendableMicroCredits - atx.debt - acct.reservedMicroCredits;
        if (cost > 0n && cost > available) {
          out.push({ ok: false, error: creditRefusal(atx, 'cost', cost, available) });
          continue;
        }
        toDraw = cost;
      } else {
        // applyCharge's rule: the hold first, then credit nobody holds, the rest becomes debt.
        // (applyCharge subtracts the other holds and this hold's rest; `reservedMicroCredits` is their sum.)
        const holdLeft = maxBig(hold.amountMicroCredits - hold.consumedMicroCredits, 0n);
        fromHold = minBig(cost, holdLeft);
        const availableOutsideHold = acct.spendableMicroCredits - atx.debt - acct.reservedMicroCredits;
        const fromAvailable = minBig(cost - fromHold, maxBig(availableOutsideHold, 0n));
        toDraw = fromHold + fromAvailable;
        debtAdded = cost - toDraw;
      }
      if (!batchesComplete && remainingOf(batches) < toDraw) {
        // The first batches in drawdown order (as this group left them) do not cover it: all of
        // them, those already drawn from here as they are in memory.
        const drawn = new Map(batches.map((b) => [b.id, b]));
        batches = (await atx.allSpendableBatches()).map((b) => drawn.get(b.id) ?? b);
        batchesComplete = true;
      }
      const plan = planDrawdown(batches, toDraw, atx.now);
      assert(hold || plan.shortfallMicroCredits === 0n, 'a charge within available credit is fully drawn');
      debtAdded += plan.shortfallMicroCredits; // a hold whose batches expired or were voided meanwhile
      // applyCharge's rule: the debt and the hold's consumed stay within their 64-bit columns.
      const overLimit = chargeLimitRefusal(atx.debt + debtAdded, hold ? hold.consumedMicroCredits + cost : null);
      if (overLimit) {
        out.push({ ok: false, error: overLimit });
        continue;
      }
      for (const part of plan.parts) {
        const b = batches.find((x) => x.id === part.batchId)!;
        b.remainingMicroCredits -= part.amountMicroCredits;
        acct.spendableMicroCredits -= part.amountMicroCredits;
      }
      if (hold) {
        hold.consumedMicroCredits += cost;
        acct.reservedMicroCredits -= fromHold;
        moveHeld(acct.budgets, hold, -fromHold);
      }
      // Captures included: a budget counts the subject's whole usage (applyCharge, moveBudgetSpend),
      // a capture's under its hold's subjects (the state read their budgets with the hold's).
      for (const key of subjectKeys(subjects.recorded)) {
        const t = acct.budgets.get(key);
        if (t && t.spentMicroCredits !== null) {
          t.spentMicroCredits += cost;
          t.movedMicroCredits += cost;
        }
      }
      atx.debt += debtAdded;
      const id = randomUUID();
      recorded.set(cmd.idempotencyKey, { id, requestHash: hash });
      events.push({ atx, id, cmd: { ...cmd, ...subjects.recorded }, hash, cost, debtAdded, priced, version, parts: plan.parts }); // `hash`: as sent
      atx.addEntry({ type: 'CONSUME', amountMicroCredits: -cost, usageEventId: id, reservationId: cmd.reservationId, note: cmd.category }); // wakes usageRecorded via the balance row
      fresh.push({ out, index: out.length });
      out.push({ ok: true, result: { eventId: id, replayed: false } });
    }
    if (!state.priorUsageRead) await answerRecordedRefusals(tx, atx.accountId, items, out);
    for (const t of acct.budgets.values()) {
      if (t.movedMicroCredits !== 0n) budgetMoves.push({ accountId: atx.accountId, subjectKind: t.subjectKind, subjectId: t.subjectId, periodStart: atx.period().start, deltaMicroCredits: t.movedMicroCredits });
    }
    // What the account's next transaction may start from (GroupCommitter's carried state): its
    // spendable batches and budgets after these decisions, when no hold of it counts (so no
    // subject holds anything either). AccountTx.lockCarried's guard checks nothing moved them.
    if (carry && acct.reservedMicroCredits === 0n) {
      const budgets = new Map<string, SubjectBudgetState>();
      for (const [key, t] of acct.budgets) {
        const read = state.budgets.get(key)!;
        budgets.set(key, {
          ...read,
          keptPeriodStart: t.spentMicroCredits === null ? read.keptPeriodStart : atx.period().start,
          keptMicroCredits: t.spentMicroCredits ?? read.keptMicroCredits,
          heldMicroCredits: t.heldMicroCredits,
        });
      }
      carry.set(atx.accountId, {
        batches,
        spendableMicroCredits: acct.spendableMicroCredits,
        batchesComplete,
        earliestExpiryAt: state.earliestExpiryAt,
        hasAnyBudget: state.hasAnyBudget,
        budgets,
        budgetSubjectsRead: state.budgetSubjectsRead,
      });
    }
  }
  const writes: Promise<unknown>[] = [];
  if (events.length > 0) {
    writes.push(
      insertUsageEvents(tx, events).then((rows) =>
        fresh.forEach(({ out, index }, i) => {
          const r = out[index]!;
          if (r.ok) (r.result as ChargeResult).row = rows[i];
        }),
      ),
    );
  }
  if (holdWrites.created.length > 0 || holdWrites.settled.length > 0) {
    writes.push(
      writeHoldOps(tx, holdWrites.created, holdWrites.settled).then((rows) => {
        for (const row of rows) holdWrites.results.get(row.id as string)!.row = row;
      }),
    );
  }
  if (budgetMoves.length > 0) writes.push(moveBudgetSpendMany(tx, budgetMoves));
  if (pending) for (const w of writes) deferStatement(pending, w);
  else await awaitInOrder(writes);
  return results;
}

/** A charge whose key is recorded: the recorded event replayed when `hash` is its request hash, else IDEMPOTENCY_CONFLICT (applyCharge's rule). */
function replayOrConflict(prior: { id: string; requestHash: string }, hash: string): ItemOutcome {
  return prior.requestHash === hash ? { ok: true, result: { eventId: prior.id, replayed: true } } : { ok: false, error: idempotencyConflict('usage event') };
}

/**
 * For a group decided from carried state (ChargeState.priorUsageRead false: its keys were not
 * looked up): every charge it refused, which inserts nothing, so the usage events' unique key
 * cannot catch a key recorded by an earlier transaction, is looked up now and answered as
 * applyCharge answers a recorded key before deciding anything: the recorded event replayed
 * (same request hash) or IDEMPOTENCY_CONFLICT. A client retrying a charge that was recorded is
 * then never told INSUFFICIENT_CREDITS or BUDGET_EXCEEDED because the credit has run out since.
 * One statement, only when the group refused something. Replaces entries of `out` (parallel to
 * `items`) in place; a refusal stays a refusal when no event has its key.
 */
async function answerRecordedRefusals(tx: Tx, accountId: string, items: readonly GroupItem[], out: ItemOutcome[]): Promise<void> {
  const refused = items.flatMap((item, i) => {
    const o = out[i]!;
    return !('op' in item) && !o.ok && !(o.error instanceof LedgerError && o.error.code === 'IDEMPOTENCY_CONFLICT') ? [{ i, cmd: item.cmd }] : [];
  });
  if (refused.length === 0) return;
  const prior = await AccountTx.priorUsageKeys(tx, accountId, [...new Set(refused.map((r) => r.cmd.idempotencyKey))]);
  for (const { i, cmd } of refused) {
    const p = prior.get(cmd.idempotencyKey);
    if (p) out[i] = replayOrConflict(p, commandHash(cmd));
  }
}

/** AccountTx.chargeStates's request for one account's items: their idempotency keys, the holds they capture or settle, the keys of their holds. */
function stateRequest(accountId: string, items: readonly GroupItem[], now: Date, accountClock: boolean) {
  const charges = items.flatMap((it) => ('op' in it ? [] : [it.cmd]));
  const ops = items.flatMap((it) => ('op' in it ? [it.op] : []));
  return {
    accountId,
    now,
    accountClock,
    idempotencyKeys: [...new Set(charges.map((c) => c.idempotencyKey))],
    reservationIds: [
      ...new Set([
        ...charges.flatMap((c) => (c.reservationId ? [c.reservationId] : [])),
        ...ops.flatMap((o) => (o.kind === 'settle' ? [o.reservationId] : [])),
      ]),
    ],
    holdKeys: [...new Set(ops.flatMap((o) => (o.kind === 'reserve' ? [o.cmd.idempotencyKey] : [])))],
    budgetSubjects: [
      ...new Map(
        [...charges, ...ops.flatMap((o) => (o.kind === 'reserve' ? [o.cmd] : []))].flatMap(subjectsOf).map((b) => [budgetSubjectKey(b.subjectKind, b.subjectId), b]),
      ).values(),
    ],
  };
}

/**
 * Issues chargeAccounts's state read for accounts whose lock statement was just issued and not
 * yet answered, so both go out in one round trip (the ledger pool pipelines; PostgreSQL runs the
 * read once the locks are granted, with a snapshot taken then). The accounts' "now" is not known
 * yet, so the statement applies each account's test clock to `wallNow` itself; chargeAccounts
 * re-reads an account whose clock moved in between.
 * @param groups per account, the items that chargeAccounts will decide
 * @param wallNow the wall clock the accounts are locked with
 * @returns the pending read (a `.catch` attached: a failed lock fails it with 25P02, and the
 *   caller reports the lock's error); pass it to chargeAccounts as `statesRead`.
 */
export function readChargeStates(tx: Tx, groups: readonly { accountId: string; items: readonly GroupItem[] }[], wallNow: Date): Promise<Map<string, ChargeState>> {
  const read = AccountTx.chargeStates(
    tx,
    groups.map((g) => stateRequest(g.accountId, g.items, wallNow, true)),
  );
  read.catch(() => undefined);
  return read;
}

/**
 * Writes the hold operations chargeAccounts decided, in ONE statement: the new holds (one
 * multi-row insert) and the settled ones (status SETTLED, closed now; their consumed was already
 * written with the captures' events).
 * @returns the written reservations rows (pg's snake_case columns) with their account's test
 *   clock (account_test_mode, account_test_clock_at: the API's status reads it), in no particular order.
 */
async function writeHoldOps(tx: Tx, created: readonly NewHold[], settled: readonly { id: string; atx: AccountTx }[]): Promise<Record<string, unknown>[]> {
  const { rows } = await tx.query({
    name: 'cp-hold-ops',
    text: `WITH ins AS (
       INSERT INTO reservations (id, account_id, amount_micro_credits, status, expires_at, created_at, idempotency_key, request_hash, agent_id, user_id)
       SELECT n.id, n.account, n.amount, 'ACTIVE', n.expires_at, n.now, n.key, n.hash, n.agent_id, n.user_id
         FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::timestamptz[], $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[])
              AS n(id, account, amount, expires_at, now, key, hash, agent_id, user_id)
       RETURNING *
     ), upd AS (
       UPDATE reservations r SET status = 'SETTLED', closed_at = x.now
         FROM unnest($10::uuid[], $11::timestamptz[]) AS x(id, now)
        WHERE r.id = x.id
       RETURNING r.*
     )
     SELECT w.*, a.test_mode AS account_test_mode, a.test_clock_at AS account_test_clock_at
       FROM (SELECT * FROM ins UNION ALL SELECT * FROM upd) w JOIN accounts a ON a.id = w.account_id`,
    values: [
      created.map((h) => h.id),
      created.map((h) => h.atx.accountId),
      created.map((h) => h.cmd.amountMicroCredits.toString()),
      created.map((h) => h.expiresAt),
      created.map((h) => h.atx.now),
      created.map((h) => h.cmd.idempotencyKey),
      created.map((h) => h.hash),
      created.map((h) => h.cmd.agentId ?? null),
      created.map((h) => h.cmd.userId ?? null),
      settled.map((s) => s.id),
      settled.map((s) => s.atx.now),
    ],
  });
  return rows;
}

/**
 * Loads the pricing inputs (the price book and settings in force, cached per process: README
 * Limits) and returns `cmd`'s Pricer: called with the account's now once the account is locked,
 * it prices `cmd` (priceCommand) and names the book's version.
 * @throws the database error of loading them; the Pricer throws LedgerError BAD_USER_INPUT as
 *   priceCommand.
 */
export async function pricerFor(ctx: ServiceContext, cmd: UsageCommand): Promise<Pricer> {
  return (await pricersFor(ctx, [cmd]))[0]!;
}

/**
 * The Pricers of `cmds` (pricerFor's), all from ONE load of the pricing inputs, so the items of
 * one request (a settle's usage) are priced with one price book version even when a publish
 * lands, or the per-process cache expires, while they are being priced.
 * @throws as pricerFor.
 */
export async function pricersFor(ctx: ServiceContext, cmds: readonly UsageCommand[]): Promise<Pricer[]> {
  const [book, settings] = await Promise.all([ctx.pricing.priceBook(), ctx.pricing.settings()]);
  return cmds.map((cmd) => (accountNow: Date) => ({ priced: priceCommand(cmd, book, settings, accountNow), version: book?.version ?? 0 }));
}

/** True when `item` is not a replay of a usage event or hold already recorded under its key (as read in `state`), nor a settle. */
function isNewWork(item: GroupItem, state: ChargeState): boolean {
  if (!('op' in item)) return !state.priorUsage.has(item.cmd.idempotencyKey);
  return item.op.kind === 'reserve' && !state.priorHolds.has(item.op.cmd.idempotencyKey);
}

/**
 * Records one usage event (validated input): in one transaction of its own, or, with
 * `ctx.groupCommit`, in one transaction with the other charges of its account that are waiting
 * (src/services/group-commit.ts). A refusal for lack of credit raises the period's depletion
 * notice first, once that transaction ended (depletion-alerts.ts afterCreditRefusals).
 * @throws LedgerError as applyCharge, plus NOT_FOUND for an unknown account.
 */
export async function recordUsage(ctx: ServiceContext, input: UsageInput): Promise<ChargeResult> {
  const cmd = validateUsageInput(input);
  const price = await pricerFor(ctx, cmd);
  try {
    if (ctx.groupCommit) return await ctx.groupCommit.charge(cmd, price);
    return await withTransaction(ctx.pool, async (tx) => {
      const atx = await AccountTx.lock(tx, cmd.accountId, ctx.clock());
      const result = await applyCharge(atx, cmd, price);
      await atx.finish();
      return result;
    });
  } catch (error) {
    await afterCreditRefusals(ctx, [error]);
    throw error;
  }
}

/** Outcome of one item of a batch: the event, or the error that refused it. */
export type BatchItemResult = { ok: true; result: ChargeResult } | { ok: false; error: unknown };

/** Most accounts one recordUsageBatch transaction locks (bounds lock hold time and statement size). */
export const BATCH_ACCOUNTS_PER_TRANSACTION = 100;

/**
 * Refuses a recordUsageBatch of more than `maxItems` items (MAX_BATCH_ITEMS). The GraphQL resolver
 * calls it with the count of items sent, before it drops the items whose ids it cannot read (they
 * answer per item), so that the cap counts every item of the request; recordUsageBatch calls it too.
 * @throws LedgerError BAD_USER_INPUT (field `inputs`) when `itemCount` > `maxItems`.
 */
export function assertBatchSize(itemCount: number, maxItems: number): void {
  if (itemCount > maxItems) throw badInput('inputs', `at most ${maxItems} items per batch`);
}

/**
 * Records many usage events; each succeeds or fails on its own.
 *
 * Items are grouped by account and the accounts, in id order, into chunks of at most
 * BATCH_ACCOUNTS_PER_TRANSACTION. Each chunk is ONE transaction: lock its accounts in one
 * statement (id order, so concurrent batches cannot deadlock), decide every item in memory from
 * one read of their state (chargeAccounts), write all events in one statement and all ledger
 * entries, balances and outbox rows in another (AccountTx.finishMany), commit once. That is what
 * makes bulk ingestion cheaper than one transaction per event. A refused item leaves no trace
 * (refusals are decided before anything is written). If a chunk's transaction fails
 * unexpectedly, its accounts are retried one transaction each, and an account that still fails
 * has its items retried one transaction each, so only the faulty item fails. A failure of the
 * database itself (db/pg.ts `isDatabaseUnavailable`) is no item's fault, as in group commit: a
 * lost connection runs the whole chunk once more, a statement timeout not at all, and then every
 * item of the chunk gets the error (the caller retries with the same keys; what committed, the
 * COMMIT's answer being what was lost, replays). At most `concurrency` chunks run at once.
 * Items refused for lack of credit raise their period's depletion notice once every chunk ended
 * (depletion-alerts.ts afterCreditRefusals). Results are in input order.
 * @throws LedgerError BAD_USER_INPUT when there are more than `maxItems` inputs.
 */
export async function recordUsageBatch(
  ctx: ServiceContext,
  inputs: readonly UsageInput[],
  opts: { maxItems: number; concurrency?: number },
): Promise<BatchItemResult[]> {
  assertBatchSize(inputs.length, opts.maxItems);
  const results: BatchItemResult[] = new Array(inputs.length);
  const [book, settings] = await Promise.all([ctx.pricing.priceBook(), ctx.pricing.settings()]);
  const groups = new Map<string, { index: number; cmd: UsageCommand }[]>();
  inputs.forEach((input, index) => {
    try {
      const cmd = validateUsageInput(input);
      const list = groups.get(cmd.accountId) ?? [];
      list.push({ index, cmd });
      groups.set(cmd.accountId, list);
    } catch (error) {
      results[index] = { ok: false, error };
    }
  });
  const pricer = (cmd: UsageCommand): Pricer => (accountNow) => ({ priced: priceCommand(cmd, book, settings, accountNow), version: book?.version ?? 0 });

  const chargeChunk = async (accountIds: readonly string[]) => {
    const items = new Map(accountIds.map((id) => [id, groups.get(id)!.map(({ cmd }) => ({ cmd, price: pricer(cmd) }))]));
    const outcomes = await withTransaction(ctx.pool, async (tx) => {
      const now = ctx.clock();
      // BEGIN, the locks and the state read go out in one round trip; the events, holds, ledger
      // entries and balances with COMMIT in another.
      const locking = AccountTx.lockMany(tx, accountIds, now);
      const statesRead = readChargeStates(tx, accountIds.map((id) => ({ accountId: id, items: items.get(id)! })), now);
      const locked = await locking;
      const found = accountIds.flatMap((id) => {
        const atx = locked.get(id);
        return atx ? [{ atx, items: items.get(id)! }] : [];
      });
      const pending: Promise<unknown>[] = [];
      const charged = await chargeAccounts(tx, found, pending, statesRead);
      await AccountTx.finishMany(tx, [...locked.values()], pending);
      return new PipelinedCommit(pending, () => new Map(found.map((g, i) => [g.atx.accountId, charged[i]!])));
    });
    for (const id of accountIds) {
      const out = outcomes.get(id);
      groups.get(id)!.forEach(({ index }, i) => {
        results[index] = out ? out[i]! : { ok: false, error: new LedgerError('NOT_FOUND', 'account not found') };
      });
    }
  };

  /** Every item of `accountIds` fails with `error`. */
  const failAll = (accountIds: readonly string[], error: unknown) => {
    for (const id of accountIds) for (const { index } of groups.get(id)!) results[index] = { ok: false, error };
  };
  const runChunk = async (accountIds: readonly string[], retryUnavailable = true): Promise<void> => {
    try {
      await chargeChunk(accountIds);
    } catch (error) {
      if (isDatabaseUnavailable(error)) {
        // Not any item's fault (as in group-commit.ts): a transaction per account and per item
        // would repeat the failure, or the wait, once each (1,000 items stuck behind a lock
        // waited 1,002 statement timeouts). A lost connection gets one more try of the whole
        // chunk; then, and after a timeout at once, every item of it gets the error (UNAVAILABLE:
        // retry with the same keys, which replays what committed).
        if (retryUnavailable && !isStatementTimeout(error)) return runChunk(accountIds, false);
        failAll(accountIds, error);
        return;
      }
      if (accountIds.length > 1) {
        for (const id of accountIds) await runChunk([id]); // find the faulty account
        return;
      }
      // Unexpected on one account: isolate the faulty item(s) with one transaction per item.
      const items = groups.get(accountIds[0]!)!;
      for (let i = 0; i < items.length; i++) {
        const { index } = items[i]!;
        try {
          results[index] = { ok: true, result: await recordUsage(ctx, inputs[index]!) };
        } catch (itemError) {
          results[index] = { ok: false, error: itemError ?? error };
          if (isDatabaseUnavailable(itemError)) {
            for (const rest of items.slice(i + 1)) results[rest.index] = { ok: false, error: itemError };
            return;
          }
        }
      }
    }
  };

  const sorted = [...groups.keys()].sort();
  const chunks: string[][] = [];
  for (let i = 0; i < sorted.length; i += BATCH_ACCOUNTS_PER_TRANSACTION) chunks.push(sorted.slice(i, i + BATCH_ACCOUNTS_PER_TRANSACTION));
  const workers = Array.from({ length: Math.min(opts.concurrency ?? 4, chunks.length) }, async () => {
    for (let next = chunks.shift(); next; next = chunks.shift()) await runChunk(next);
  });
  await Promise.all(workers);
  await afterCreditRefusals(ctx, results.flatMap((r) => (r.ok ? [] : [r.error])));
  return results;
}
