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
 */
import { withTransaction } from '../db/pg.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { planDrawdown } from '../ledger/drawdown.js';
import { formatCredits, maxBig, minBig } from '../ledger/credits.js';
import { priceUsage, type PricedUsage } from '../pricing/price-book.js';
import { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';
import { requestHash } from './request-hash.js';
import { validateUsageInput, type UsageCommand, type UsageInput } from './usage-command.js';
import type { ActivePriceBook, SettingsRecord } from './pricing-state.js';
import { assertWithinBudgets } from './spending-budgets.js';

/** The recorded (or replayed) event's id. */
export interface ChargeResult {
  eventId: string;
  replayed: boolean;
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
 * Prices a usage command with the book and settings in force.
 * @throws LedgerError BAD_USER_INPUT when no price book is published, no rule matches, or the
 *   model is unknown without a fallback.
 */
export function priceCommand(cmd: UsageCommand, book: ActivePriceBook | null, settings: SettingsRecord): PricedUsage {
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
      occurredAt: cmd.occurredAt,
    },
    { creditUsdValue: settings.creditUsdValue },
  );
}

function commandHash(cmd: UsageCommand): string {
  return requestHash({ ...cmd, op: 'usage' });
}

/**
 * Charges one usage command inside a locked account transaction. `price` is called only when
 * the idempotency key is new (a retry returns the first event even if prices changed since).
 * Every refusal is thrown BEFORE the first write, so a caller may catch a LedgerError and keep
 * using the same transaction (recordUsageBatch relies on this).
 * @throws LedgerError IDEMPOTENCY_CONFLICT, NOT_FOUND (reservation), RESERVATION_NOT_ACTIVE,
 *   BUDGET_EXCEEDED (agent/user budget, charges without a reservation), INSUFFICIENT_CREDITS,
 *   BAD_USER_INPUT (from pricing).
 */
export async function applyCharge(
  atx: AccountTx,
  cmd: UsageCommand,
  price: () => { priced: PricedUsage; version: number },
): Promise<ChargeResult> {
  const hash = commandHash(cmd);
  const state = await atx.state({ reservationId: cmd.reservationId, agentId: cmd.agentId, userId: cmd.userId, usageIdempotencyKey: cmd.idempotencyKey });
  if (state.priorUsage) {
    if (state.priorUsage.requestHash !== hash) {
      throw new LedgerError('IDEMPOTENCY_CONFLICT', 'idempotencyKey was already used for a different usage event');
    }
    return { eventId: state.priorUsage.id, replayed: true };
  }

  let holdLeft = 0n;
  if (cmd.reservationId) {
    const r = state.reservation;
    if (!r) throw new LedgerError('NOT_FOUND', 'reservation not found');
    if (r.status !== 'ACTIVE' || r.expiresAt.getTime() <= atx.now.getTime()) {
      throw new LedgerError('RESERVATION_NOT_ACTIVE', `reservation is ${r.status === 'ACTIVE' ? 'EXPIRED' : r.status}`);
    }
    holdLeft = maxBig(r.amountMicroCredits - r.consumedMicroCredits, 0n);
  }

  const { priced, version } = price();
  const cost = priced.costMicroCredits;
  const { batches, reservedMicroCredits: reservedOthers } = state;
  if (state.hasBudget && !cmd.reservationId) await assertWithinBudgets(atx, cmd, cost);
  const spendable = batches.reduce((s, b) => s + b.remainingMicroCredits, 0n);

  let toDraw: bigint;
  let debtAdded = 0n;
  if (!cmd.reservationId) {
    const available = spendable - atx.debt - reservedOthers;
    if (cost > 0n && cost > available) {
      throw new LedgerError(
        'INSUFFICIENT_CREDITS',
        `insufficient credits: cost ${formatCredits(cost)}, available ${formatCredits(available)}`,
        { neededCredits: formatCredits(cost), availableCredits: formatCredits(available) },
      );
    }
    toDraw = cost;
  } else {
    const fromHold = minBig(cost, holdLeft);
    const availableOutsideHold = spendable - atx.debt - reservedOthers - holdLeft;
    const fromAvailable = minBig(cost - fromHold, maxBig(availableOutsideHold, 0n));
    toDraw = fromHold + fromAvailable;
    debtAdded = cost - toDraw;
  }
  const plan = planDrawdown(batches, toDraw, atx.now);
  debtAdded += plan.shortfallMicroCredits; // a hold whose batches expired or were voided meanwhile

  const lines: StoredCostLine[] = priced.lines.map((l) => ({
    item: l.item,
    quantity: l.quantity,
    unitPrice: l.unitPrice,
    amount: formatCredits(l.amountMicroCredits),
    exactAmount: l.exactAmount,
  }));
  const q = cmd.quantities;
  const { rows } = await atx.tx.query({
    name: 'cp-charge-insert',
    text: `WITH ev AS (
       INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, recorded_at, category, model, tier, sku,
                                 agent_id, user_id, task_id, conversation_id, message_id, input_tokens, output_tokens,
                                 reasoning_tokens, cache_read_tokens, cache_write_tokens, seconds, units, provider_cost_usd,
                                 byok, cost_micro_credits, debt_micro_credits, lines, reservation_id, price_book_version, metadata)
       VALUES (gen_random_uuid(), $1, $2, $3, COALESCE($4::timestamptz, $5::timestamptz), $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
               $20, $21, $22, $23, $24, $25, $26, $27, $28, $29)
       RETURNING id
     ), dd AS (
       INSERT INTO drawdowns (id, usage_event_id, batch_id, position, amount_micro_credits)
       SELECT gen_random_uuid(), ev.id, d.batch_id, d.ord - 1, d.amount
         FROM ev, unnest($30::uuid[], $31::bigint[]) WITH ORDINALITY AS d(batch_id, amount, ord)
     ), ub AS (
       UPDATE credit_batches b
          SET remaining_micro_credits = b.remaining_micro_credits - d.amount,
              status = CASE WHEN b.remaining_micro_credits - d.amount = 0 THEN 'EXHAUSTED'::"BatchStatus" ELSE b.status END,
              updated_at = $5
         FROM unnest($30::uuid[], $31::bigint[]) AS d(batch_id, amount)
        WHERE b.id = d.batch_id
     ), ur AS (
       UPDATE reservations SET consumed_micro_credits = consumed_micro_credits + $24::bigint WHERE id = $27::uuid
     )
     SELECT id FROM ev`,
    values: [
      atx.accountId,
      cmd.idempotencyKey,
      hash,
      cmd.occurredAt,
      atx.now,
      cmd.category,
      cmd.model,
      cmd.tier,
      cmd.sku,
      cmd.agentId,
      cmd.userId,
      cmd.taskId,
      cmd.conversationId,
      cmd.messageId,
      q.inputTokens,
      q.outputTokens,
      q.reasoningTokens,
      q.cacheReadTokens,
      q.cacheWriteTokens,
      q.seconds,
      q.units,
      cmd.providerCostUsd,
      cmd.byok,
      cost.toString(),
      debtAdded.toString(),
      JSON.stringify(lines),
      cmd.reservationId,
      version,
      cmd.metadata === null || cmd.metadata === undefined ? null : JSON.stringify(cmd.metadata),
      plan.parts.map((p) => p.batchId),
      plan.parts.map((p) => p.amountMicroCredits.toString()),
    ],
  });
  const eventId = rows[0].id as string;
  atx.debt += debtAdded;
  atx.addEntry({ type: 'CONSUME', amountMicroCredits: -cost, usageEventId: eventId, reservationId: cmd.reservationId, note: cmd.category });
  atx.publish('usage', { accountId: atx.accountId, usageEventId: eventId });
  return { eventId, replayed: false };
}

/**
 * Loads the pricing inputs and returns a pricing thunk for `cmd`.
 */
export async function pricerFor(ctx: ServiceContext, cmd: UsageCommand): Promise<() => { priced: PricedUsage; version: number }> {
  const [book, settings] = await Promise.all([ctx.pricing.priceBook(), ctx.pricing.settings()]);
  return () => ({ priced: priceCommand(cmd, book, settings), version: book?.version ?? 0 });
}

/**
 * Records one usage event (validated input): in one transaction of its own, or, with
 * `ctx.groupCommit`, in one transaction with the other charges of its account that are waiting
 * (src/services/group-commit.ts).
 * @throws LedgerError as applyCharge, plus NOT_FOUND for an unknown account.
 */
export async function recordUsage(ctx: ServiceContext, input: UsageInput): Promise<ChargeResult> {
  const cmd = validateUsageInput(input);
  const price = await pricerFor(ctx, cmd);
  if (ctx.groupCommit) return ctx.groupCommit.charge(cmd, price);
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, cmd.accountId, ctx.clock());
    const result = await applyCharge(atx, cmd, price);
    await atx.finish();
    return result;
  });
}

/** Outcome of one item of a batch: the event, or the error that refused it. */
export type BatchItemResult = { ok: true; result: ChargeResult } | { ok: false; error: unknown };

/**
 * Records many usage events; each succeeds or fails on its own.
 *
 * Items are grouped by account. Each group is ONE transaction (lock once, charge each item in
 * input order, write the ledger entries and the balance once, commit once), which is what makes
 * bulk ingestion cheaper than one transaction per event. This is safe because applyCharge
 * refuses (throws a LedgerError) only before it writes anything, so a refused item leaves no
 * trace in the group's transaction. If the group's transaction itself fails (an unexpected
 * database error), its items are retried one transaction each, so only the faulty item fails.
 * Different accounts run concurrently (at most `concurrency` groups at once). Results are in
 * input order.
 * @throws LedgerError BAD_USER_INPUT when there are more than `maxItems` inputs.
 */
export async function recordUsageBatch(
  ctx: ServiceContext,
  inputs: readonly UsageInput[],
  opts: { maxItems: number; concurrency?: number },
): Promise<BatchItemResult[]> {
  if (inputs.length > opts.maxItems) throw badInput('inputs', `at most ${opts.maxItems} items per batch`);
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
  const pricer = (cmd: UsageCommand) => () => ({ priced: priceCommand(cmd, book, settings), version: book?.version ?? 0 });

  const chargeGroup = async (accountId: string, items: { index: number; cmd: UsageCommand }[]) => {
    const local = new Map<number, BatchItemResult>();
    await withTransaction(ctx.pool, async (tx) => {
      local.clear(); // a retried transaction starts over
      const atx = await AccountTx.lock(tx, accountId, ctx.clock());
      for (const { index, cmd } of items) {
        try {
          local.set(index, { ok: true, result: await applyCharge(atx, cmd, pricer(cmd)) });
        } catch (error) {
          if (!(error instanceof LedgerError)) throw error;
          local.set(index, { ok: false, error });
        }
      }
      await atx.finish();
    });
    for (const [index, r] of local) results[index] = r;
  };

  const queue = [...groups.entries()];
  const workers = Array.from({ length: Math.min(opts.concurrency ?? 4, queue.length) }, async () => {
    for (let next = queue.shift(); next; next = queue.shift()) {
      const [accountId, items] = next;
      try {
        await chargeGroup(accountId, items);
      } catch (error) {
        if (error instanceof LedgerError) {
          for (const { index } of items) results[index] = { ok: false, error }; // e.g. NOT_FOUND account
          continue;
        }
        // Unexpected: isolate the faulty item(s) with one transaction per item.
        for (const { index } of items) {
          try {
            results[index] = { ok: true, result: await recordUsage(ctx, inputs[index]!) };
          } catch (itemError) {
            results[index] = { ok: false, error: itemError };
          }
        }
      }
    }
  });
  await Promise.all(workers);
  return results;
}
