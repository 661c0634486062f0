/**
 * reserveCredits: holds available credit for work in progress (authorize now, capture with
 * recordUsage/settleReservation later). Refused with INSUFFICIENT_CREDITS when available credit
 * does not cover the hold. Idempotent on (account, idempotencyKey). An unsettled hold stops
 * holding at expiresAt (reads treat it as released; the expiry sweep records it).
 */
import { scheduleExpiry } from './expire-due.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { formatCredits } from '../ledger/credits.js';
import { onAccount } from './account-op.js';
import type { ServiceContext } from './context.js';
import { requestHash } from './request-hash.js';
import { validateIdempotencyKey } from './usage-command.js';
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

/** Validates a TTL: an integer number of seconds in 1..MAX_RESERVATION_TTL_SECONDS. */
export function validateTtlSeconds(ttlSeconds: number): number {
  if (!Number.isSafeInteger(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > MAX_RESERVATION_TTL_SECONDS) {
    throw badInput('ttlSeconds', `must be an integer from 1 to ${MAX_RESERVATION_TTL_SECONDS}`);
  }
  return ttlSeconds;
}

/**
 * Places a hold.
 * @returns the reservation id and whether this call replayed an earlier one.
 * @throws LedgerError BAD_USER_INPUT, NOT_FOUND, IDEMPOTENCY_CONFLICT, BUDGET_EXCEEDED, INSUFFICIENT_CREDITS.
 */
export async function reserveCredits(ctx: ServiceContext, cmd: ReserveCommand): Promise<{ reservationId: string; replayed: boolean }> {
  validateIdempotencyKey(cmd.idempotencyKey);
  validateTtlSeconds(cmd.ttlSeconds);
  if (cmd.amountMicroCredits <= 0n) throw badInput('amount', 'must be greater than 0');
  const hash = requestHash({ ...cmd, op: 'reserve' });
  return onAccount(ctx, cmd.accountId, async (atx) => {
    const tx = atx.tx;
    const prior = await tx.query('SELECT id, request_hash FROM reservations WHERE account_id = $1 AND idempotency_key = $2', [
      cmd.accountId,
      cmd.idempotencyKey,
    ]);
    if (prior.rows[0]) {
      if (prior.rows[0].request_hash !== hash) throw new LedgerError('IDEMPOTENCY_CONFLICT', 'idempotencyKey was already used for a different reservation');
      return { reservationId: prior.rows[0].id as string, replayed: true };
    }
    const subjects = { agentId: cmd.agentId ?? null, userId: cmd.userId ?? null };
    const { batches, reservedMicroCredits, hasBudget } = await atx.state(subjects);
    if (hasBudget) await assertWithinBudgets(atx, subjects, cmd.amountMicroCredits);
    const spendable = batches.reduce((s, b) => s + b.remainingMicroCredits, 0n);
    const available = spendable - atx.debt - reservedMicroCredits;
    if (cmd.amountMicroCredits > available) {
      throw new LedgerError('INSUFFICIENT_CREDITS', `insufficient credits: hold ${formatCredits(cmd.amountMicroCredits)}, available ${formatCredits(available)}`, {
        neededCredits: formatCredits(cmd.amountMicroCredits),
        availableCredits: formatCredits(available),
      });
    }
    const { rows } = await tx.query(
      `INSERT INTO reservations (id, account_id, amount_micro_credits, status, expires_at, created_at, idempotency_key, request_hash, agent_id, user_id)
       VALUES (gen_random_uuid(), $1, $2, 'ACTIVE', $3, $4, $5, $6, $7, $8) RETURNING id`,
      [cmd.accountId, cmd.amountMicroCredits.toString(), new Date(atx.now.getTime() + cmd.ttlSeconds * 1000), atx.now, cmd.idempotencyKey, hash, cmd.agentId ?? null, cmd.userId ?? null],
    );
    const reservationId = rows[0].id as string;
    atx.addEntry({ type: 'RESERVE', amountMicroCredits: cmd.amountMicroCredits, reservationId });
    scheduleExpiry(atx, 'hold', reservationId, new Date(atx.now.getTime() + cmd.ttlSeconds * 1000));
    return { reservationId, replayed: false };
  }, { refusesBeforeWriting: true }); // every refusal above precedes the INSERT
}
