/**
 * reserveCredits: holds available credit for work in progress (authorize now, capture with
 * recordUsage/settleReservation later). Refused with INSUFFICIENT_CREDITS when available credit
 * does not cover the hold. Idempotent on (account, idempotencyKey). An unsettled hold stops
 * holding at expiresAt (reads treat it as released; the expiry sweep records it).
 */
import { rollDuePeriodsFirst } from './plans.js';
import { scheduleExpiry } from './expire-due.js';
import { badInput } from '../ledger/errors.js';
import { idempotencyConflict } from '../ledger/refusals.js';
import { afterCreditRefusals, creditRefusal } from './depletion-alerts.js';
import { onAccount } from './account-op.js';
import type { ServiceContext } from './context.js';
import type { AccountTx } from './account-tx.js';
import type { HoldOpItem, ReservationResult } from './record-usage.js';
import { requestHash } from './request-hash.js';
import { optionalLabel, validateIdempotencyKey } from './usage-command.js';
import { assertWithinBudgets } from './spending-budgets.js';

/** Longest hold or extension: 7 days. */
export const MAX_RESERVATION_TTL_SECONDS = 7 * 86_400;

/** A validated hold request. */
export interface ReserveCommand {
  accountId: string;
  amountMicroCredits: bigint;
  ttlSeconds: number;
  idempotencyKey: string;
  /** The agent / end user the hold is for; it counts against their budgets while it holds. */
  agentId?: string | null;
  userId?: string | null;
}

/**
 * Validates a hold's TTL (reserveCredits, extendReservation): an integer number of seconds in
 * 1..MAX_RESERVATION_TTL_SECONDS (7 days).
 * @returns the TTL unchanged, in seconds.
 * @throws LedgerError BAD_USER_INPUT (field ttlSeconds) when it is not a safe integer in that range.
 */
export function validateTtlSeconds(ttlSeconds: number): number {
  if (!Number.isSafeInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > MAX_RESERVATION_TTL_SECONDS) {
    throw badInput('ttlSeconds', `must be an integer from 1 to ${MAX_RESERVATION_TTL_SECONDS}`);
  }
  return ttlSeconds;
}

/**
 * A validated hold as an item of a charge group (record-usage.ts `chargeAccounts`): decided there
 * in memory with the account's charges, or, on the account-by-account path, by its `alone`
 * function with statements of its own (every refusal of which precedes its INSERT).
 */
export function holdItem(cmd: ReserveCommand): HoldOpItem<ReservationResult & { replayed: boolean }> {
  const hash = requestHash({ ...cmd, op: 'reserve' });
  return { op: { kind: 'reserve', cmd, hash }, alone: (atx) => holdOnLockedAccount(atx, cmd, hash) };
}

/**
 * Places a hold.
 * @returns the reservation id, whether this call replayed an earlier one, and the row as written
 *   when the hold was decided in memory (ReservationResult).
 * @throws LedgerError BAD_USER_INPUT (idempotency key, TTL, amount <= 0, an agentId / userId that
 *   is empty or longer than 200 characters), NOT_FOUND, IDEMPOTENCY_CONFLICT, BUDGET_EXCEEDED,
 *   INSUFFICIENT_CREDITS (after raising the period's depletion notice: depletion-alerts.ts).
 */
export async function reserveCredits(ctx: ServiceContext, input: ReserveCommand): Promise<ReservationResult & { replayed: boolean }> {
  validateIdempotencyKey(input.idempotencyKey);
  validateTtlSeconds(input.ttlSeconds);
  if (input.amountMicroCredits <= 0n) throw badInput('amount', 'must be greater than 0');
  // The same rule as recordUsage's agentId / userId (usage-command.ts): 1..200 characters.
  const cmd: ReserveCommand = { ...input, agentId: optionalLabel(input.agentId, 'agentId'), userId: optionalLabel(input.userId, 'userId') };
  const item = holdItem(cmd);
  let result: ReservationResult & { replayed: boolean };
  try {
    result = await (ctx.groupCommit ? ctx.groupCommit.holdOp(cmd.accountId, item) : onAccount(ctx, cmd.accountId, item.alone));
  } catch (error) {
    await afterCreditRefusals(ctx, [error]); // the depletion notice of a refusal for lack of credit
    throw error;
  }
  ctx.reservationOwners?.remember(result.reservationId, cmd.accountId);
  return result;
}

/**
 * The hold of `cmd` on its locked account, with statements of its own: the idempotency lookup,
 * the account state, budgets, then the INSERT (every refusal precedes it).
 * @throws LedgerError IDEMPOTENCY_CONFLICT, BUDGET_EXCEEDED, INSUFFICIENT_CREDITS.
 */
async function holdOnLockedAccount(atx: AccountTx, cmd: ReserveCommand, hash: string): Promise<{ reservationId: string; replayed: boolean }> {
  const tx = atx.tx;
  const prior = await tx.query('SELECT id, request_hash FROM reservations WHERE account_id = $1 AND idempotency_key = $2', [
    cmd.accountId,
    cmd.idempotencyKey,
  ]);
  if (prior.rows[0]) {
    if (prior.rows[0].request_hash !== hash) throw idempotencyConflict('reservation');
    return { reservationId: prior.rows[0].id as string, replayed: true };
  }
  const subjects = { agentId: cmd.agentId ?? null, userId: cmd.userId ?? null };
  await rollDuePeriodsFirst(atx); // the plan's period that began and has not rolled yet (plans.ts)
  const { spendableMicroCredits: spendable, reservedMicroCredits, hasBudget } = await atx.state(subjects);
  if (hasBudget) await assertWithinBudgets(atx, subjects, cmd.amountMicroCredits);
  const available = spendable - atx.debt - reservedMicroCredits;
  if (cmd.amountMicroCredits > available) throw creditRefusal(atx, 'hold', cmd.amountMicroCredits, available);
  const expiresAt = new Date(atx.now.getTime() + cmd.ttlSeconds * 1000);
  const { rows } = await tx.query(
    `INSERT INTO reservations (id, account_id, amount_micro_credits, status, expires_at, created_at, idempotency_key, request_hash, agent_id, user_id)
     VALUES (gen_random_uuid(), $1, $2, 'ACTIVE', $3, $4, $5, $6, $7, $8) RETURNING id`,
    [cmd.accountId, cmd.amountMicroCredits.toString(), expiresAt, atx.now, cmd.idempotencyKey, hash, cmd.agentId ?? null, cmd.userId ?? null],
  );
  const reservationId = rows[0].id as string;
  atx.addEntry({ type: 'RESERVE', amountMicroCredits: cmd.amountMicroCredits, reservationId });
  scheduleExpiry(atx, 'hold', reservationId, expiresAt);
  return { reservationId, replayed: false };
}
