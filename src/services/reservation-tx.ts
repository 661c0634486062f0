/**
 * Shared steps of the reservation use cases (settle, release, extend): find the hold and lock
 * its account, and close it (release the unused rest).
 */
import type { Tx } from '../db/pg.js';
import { LedgerError } from '../ledger/errors.js';
import { toBigInt } from '../db/pg.js';
import { maxBig } from '../ledger/credits.js';
import { AccountTx } from './account-tx.js';

/** A reservation row with its account locked. */
export interface LockedReservation {
  atx: AccountTx;
  id: string;
  amountMicroCredits: bigint;
  consumedMicroCredits: bigint;
  status: 'ACTIVE' | 'SETTLED' | 'RELEASED' | 'EXPIRED';
  expiresAt: Date;
  /** ACTIVE and not yet past expiresAt. */
  holding: boolean;
}

/** ACTIVE and not past its expiresAt at `now`: a hold that still holds (an ACTIVE hold past it counts as EXPIRED). */
export function isHolding(hold: { status: string; expiresAt: Date }, now: Date): boolean {
  return hold.status === 'ACTIVE' && hold.expiresAt.getTime() > now.getTime();
}

/** The note of the RELEASE entry of a settle's unused rest. */
export const SETTLE_NOTE = 'settled: unused rest released';

/**
 * The refusal of work against a hold that no longer holds: RESERVATION_NOT_ACTIVE, naming its
 * status (EXPIRED for an ACTIVE hold past its expiresAt). One wording for captures, settles and
 * extensions.
 */
export function reservationNotActive(status: string): LedgerError {
  return new LedgerError('RESERVATION_NOT_ACTIVE', `reservation is ${status === 'ACTIVE' ? 'EXPIRED' : status}`);
}

/**
 * Finds reservation `reservationId`, locks its account and reads it.
 * @throws LedgerError NOT_FOUND ("reservation not found").
 */
export async function lockReservation(tx: Tx, reservationId: string, wallNow: Date): Promise<LockedReservation> {
  const atx = await AccountTx.lockOwner(tx, 'reservations', reservationId, 'reservation', wallNow);
  return readReservation(atx, reservationId);
}

/**
 * Reads reservation `reservationId` of the locked account `atx` (the lock keeps it stable).
 * @throws LedgerError NOT_FOUND ("reservation not found") when the account has no such reservation.
 */
export async function readReservation(atx: AccountTx, reservationId: string): Promise<LockedReservation> {
  const { rows } = await atx.tx.query(
    'SELECT amount_micro_credits, consumed_micro_credits, status, expires_at FROM reservations WHERE id = $1 AND account_id = $2',
    [reservationId, atx.accountId],
  );
  const r = rows[0];
  if (!r) throw new LedgerError('NOT_FOUND', 'reservation not found');
  const expiresAt = r.expires_at as Date;
  const status = r.status as LockedReservation['status'];
  return {
    atx,
    id: reservationId,
    amountMicroCredits: toBigInt(r.amount_micro_credits),
    consumedMicroCredits: toBigInt(r.consumed_micro_credits),
    status,
    expiresAt,
    holding: isHolding({ status, expiresAt }, atx.now),
  };
}

/**
 * Closes an ACTIVE hold with `status`, releasing its unused rest (RELEASE entry, negative
 * change of reserved). Re-reads `consumed` so usage charged in this transaction counts.
 */
export async function closeReservation(res: LockedReservation, status: 'SETTLED' | 'RELEASED' | 'EXPIRED', note: string): Promise<void> {
  const { atx } = res;
  const { rows } = await atx.tx.query(
    `UPDATE reservations SET status = $2::"ReservationStatus", closed_at = $3 WHERE id = $1
     RETURNING amount_micro_credits, consumed_micro_credits`,
    [res.id, status, atx.now],
  );
  const r = rows[0];
  const released = maxBig(toBigInt(r.amount_micro_credits) - toBigInt(r.consumed_micro_credits), 0n);
  if (released > 0n) atx.addEntry({ type: 'RELEASE', amountMicroCredits: -released, reservationId: res.id, note });
  else atx.touch();
}
