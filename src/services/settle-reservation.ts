/**
 * settleReservation: records the completed work against a hold and releases the unused rest,
 * in one transaction (account-op.ts: shared with other waiting charges under CHARGE_PATH=group).
 * Replaying a settle whose usage was all recorded returns the reservation.
 */
import { LedgerError, badInput } from '../ledger/errors.js';
import type { ServiceContext } from './context.js';
import { applyCharge, pricersFor, type HoldOpItem, type Pricer, type ReservationResult } from './record-usage.js';
import { SETTLE_NOTE, closeReservation, readReservation, reservationNotActive } from './reservation-tx.js';
import { AccountTx } from './account-tx.js';
import { onAccount } from './account-op.js';
import { validateUsageInput, type UsageCommand, type UsageInput } from './usage-command.js';

/** Most usage items in one settle. */
export const MAX_SETTLE_ITEMS = 100;

/**
 * Settles a reservation with its final usage.
 * @param usage the completed work; each item's reservationId must be absent or this one. Each
 *   item is the hold's agent's and user's (record-usage.ts chargeSubjects): without agentId /
 *   userId it is recorded with the hold's, and one the hold has none of is checked against its
 *   budget like a charge without a reservation.
 * @returns the reservation id, whether it replayed a settle already made (`replayed`), and its
 *   row as written when the settle was decided in memory (ReservationResult).
 * @throws LedgerError NOT_FOUND, RESERVATION_NOT_ACTIVE (already released, expired, or settled
 *   with other usage), BAD_USER_INPUT (also an item naming another agentId / userId than the
 *   hold's), BUDGET_EXCEEDED (an item's subject the hold has none of), IDEMPOTENCY_CONFLICT.
 */
export async function settleReservation(ctx: ServiceContext, reservationId: string, usage: readonly UsageInput[]): Promise<ReservationResult> {
  if (usage.length > MAX_SETTLE_ITEMS) throw badInput('usage', `at most ${MAX_SETTLE_ITEMS} items`);
  const cmds = usage.map((u, i) => {
    if (u.reservationId && u.reservationId !== reservationId) throw badInput(`usage[${i}].reservationId`, 'must be this reservation');
    return validateUsageInput({ ...u, reservationId });
  });
  const pricers = await pricersFor(ctx, cmds); // one price book version for every item
  // The hold's account: remembered when this process made the hold (a reservation's account never
  // changes; an unknown id is refused NOT_FOUND by the settle itself), else read.
  const accountId = ctx.reservationOwners?.ownerOf(reservationId) ?? (await AccountTx.ownerOf(ctx.pool, 'reservations', reservationId, 'reservation'));
  const result = await (ctx.groupCommit && cmds.length === 0
    ? // Without usage, a settle is decided in memory with the account's charges (chargeAccounts).
      ctx.groupCommit.holdOp(accountId, settleItem(reservationId))
    : // With one item, applyCharge's refusals precede its writes and nothing else refuses after.
      onAccount(ctx, accountId, (atx) => settleOnLockedAccount(atx, reservationId, cmds, pricers), { refusesBeforeWriting: cmds.length <= 1 }));
  ctx.reservationOwners?.forget(reservationId);
  return result;
}

/**
 * A settle without usage as an item of a charge group (record-usage.ts `chargeAccounts`):
 * decided there in memory, or by `alone` with statements of its own, whose refusals all precede
 * its one write.
 */
export function settleItem(reservationId: string): HoldOpItem<ReservationResult> {
  return { op: { kind: 'settle', reservationId }, alone: (atx) => settleOnLockedAccount(atx, reservationId, [], []) };
}

/**
 * The settle of `reservationId` on its locked account with the validated usage `cmds` (and
 * their pricing thunks), with statements of its own: read the hold, record the usage against it,
 * close it (release the unused rest).
 * @throws as settleReservation.
 */
async function settleOnLockedAccount(
  atx: AccountTx,
  reservationId: string,
  cmds: readonly UsageCommand[],
  pricers: readonly Pricer[],
): Promise<ReservationResult> {
  const tx = atx.tx;
  const res = await readReservation(atx, reservationId);
  for (const c of cmds) if (c.accountId !== res.atx.accountId) throw badInput('usage.accountId', "must be the reservation's account");
  if (res.status === 'SETTLED') {
    // A retry: every item must already be recorded with the same input.
    for (const c of cmds) {
      const { rows } = await tx.query('SELECT 1 FROM usage_events WHERE account_id = $1 AND idempotency_key = $2 AND reservation_id = $3', [
        res.atx.accountId,
        c.idempotencyKey,
        reservationId,
      ]);
      if (!rows[0]) throw new LedgerError('RESERVATION_NOT_ACTIVE', 'reservation is already SETTLED');
    }
    for (let i = 0; i < cmds.length; i++) await applyCharge(res.atx, cmds[i]!, pricers[i]!); // verifies same input (or conflict)
    return { reservationId, replayed: true };
  }
  if (!res.holding) throw reservationNotActive(res.status);
  for (let i = 0; i < cmds.length; i++) await applyCharge(res.atx, cmds[i]!, pricers[i]!);
  await closeReservation(res, 'SETTLED', SETTLE_NOTE);
  return { reservationId, replayed: false };
}
