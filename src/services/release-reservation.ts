/**
 * releaseReservation: gives a whole hold back (the work was cancelled). Releasing a released
 * hold returns it unchanged; a hold already past its expiry is closed as EXPIRED (what the
 * expiry sweep would do).
 */
import { withTransaction } from '../db/pg.js';
import { LedgerError } from '../ledger/errors.js';
import type { ServiceContext } from './context.js';
import { lockReservation, closeReservation } from './reservation-tx.js';

/**
 * Releases a reservation.
 * @returns the reservation id.
 * @throws LedgerError NOT_FOUND, RESERVATION_NOT_ACTIVE (already SETTLED).
 */
export async function releaseReservation(ctx: ServiceContext, reservationId: string): Promise<string> {
  const id = await withTransaction(ctx.pool, async (tx) => {
    const res = await lockReservation(tx, reservationId, ctx.clock());
    if (res.status === 'RELEASED' || res.status === 'EXPIRED') return reservationId;
    if (res.status === 'SETTLED') throw new LedgerError('RESERVATION_NOT_ACTIVE', 'reservation is already SETTLED');
    await closeReservation(res, res.holding ? 'RELEASED' : 'EXPIRED', res.holding ? 'released' : 'expired hold released');
    await res.atx.finish();
    return reservationId;
  });
  ctx.reservationOwners?.forget(reservationId);
  return id;
}
