/**
 * extendReservation: the heartbeat of a long job; pushes an ACTIVE hold's expiry to
 * now + ttlSeconds. The balance does not change, so its version does not either.
 */
import { withTransaction } from '../db/pg.js';
import type { ServiceContext } from './context.js';
import { lockReservation, reservationNotActive } from './reservation-tx.js';
import { scheduleExpiry } from './expire-due.js';
import { validateTtlSeconds } from './reserve-credits.js';

/**
 * Extends a reservation.
 * @returns the reservation id.
 * @throws LedgerError NOT_FOUND, BAD_USER_INPUT (ttlSeconds), RESERVATION_NOT_ACTIVE (closed or expired).
 */
export async function extendReservation(ctx: ServiceContext, reservationId: string, ttlSeconds: number): Promise<string> {
  validateTtlSeconds(ttlSeconds);
  return withTransaction(ctx.pool, async (tx) => {
    const res = await lockReservation(tx, reservationId, ctx.clock());
    if (!res.holding) throw reservationNotActive(res.status);
    const expiresAt = new Date(res.atx.now.getTime() + ttlSeconds * 1000);
    await tx.query('UPDATE reservations SET expires_at = $2 WHERE id = $1', [reservationId, expiresAt]);
    scheduleExpiry(res.atx, 'hold', reservationId, expiresAt);
    await res.atx.finish(); // no balance change: writes only the job's outbox row
    return reservationId;
  });
}
