/**
 * releaseReservation: gives a whole hold back (the work was cancelled). Releasing a released
 * hold returns it unchanged; a hold already past its expiry is closed as EXPIRED (what the
 * expiry sweep would do). A plan roll that is due and has not run yet runs first (plans.ts
 * rollDuePeriodsFirst), as before a charge or a hold: a release is a balance change, whose alert
 * check (balances_changed) read the new period's credit without its allowance and raised the
 * period's 25 % and 15 % alerts the on-time account never had (reset-roll-audit.test.ts).
 */
import { withTransaction } from '../db/pg.js';
import { LedgerError } from '../ledger/errors.js';
import type { ServiceContext } from './context.js';
import { lockReservation, closeReservation, readReservation } from './reservation-tx.js';
import { rollDuePeriodsFirst } from './plans.js';

/**
 * Releases a reservation.
 * @returns the reservation id.
 * @throws LedgerError NOT_FOUND, RESERVATION_NOT_ACTIVE (already SETTLED).
 */
export async function releaseReservation(ctx: ServiceContext, reservationId: string): Promise<string> {
  const id = await withTransaction(ctx.pool, async (tx) => {
    let res = await lockReservation(tx, reservationId, ctx.clock());
    if (res.status === 'RELEASED' || res.status === 'EXPIRED') return reservationId;
    if (res.status === 'SETTLED') throw new LedgerError('RESERVATION_NOT_ACTIVE', 'reservation is already SETTLED');
    // A due plan roll first (module comment); its expiries may close this hold (past its expiry).
    if (await rollDuePeriodsFirst(res.atx)) res = await readReservation(res.atx, reservationId);
    if (res.status === 'ACTIVE') await closeReservation(res, res.holding ? 'RELEASED' : 'EXPIRED', res.holding ? 'released' : 'expired hold released');
    await res.atx.finish();
    return reservationId;
  });
  ctx.reservationOwners?.forget(reservationId);
  return id;
}
