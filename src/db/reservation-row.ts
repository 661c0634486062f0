/**
 * A reservations row as `pg` returns it (snake_case columns; int8 as text, timestamptz as Date)
 * turned into the Prisma model `Reservation`, so the API can answer a hold or a settle from the
 * row its write returned instead of reading it again (as usage-event-row.ts does for charges).
 */
import type { Reservation, ReservationStatus } from '../generated/prisma/client.js';

/**
 * Maps a `RETURNING *` row of reservations to the Prisma model, with the account's test clock
 * (`account`: the Reservation type's status reads it) when the row carries it as
 * account_test_mode / account_test_clock_at.
 * @throws SyntaxError (from BigInt) when an amount column is missing, i.e. the row is not a whole reservations row.
 */
export function reservationFromRow(r: Record<string, unknown>): Reservation & { account?: { testMode: boolean; testClockAt: Date | null } } {
  return {
    ...('account_test_mode' in r ? { account: { testMode: r.account_test_mode as boolean, testClockAt: r.account_test_clock_at as Date | null } } : {}),
    id: r.id as string,
    accountId: r.account_id as string,
    amountMicroCredits: BigInt(r.amount_micro_credits as string),
    consumedMicroCredits: BigInt(r.consumed_micro_credits as string),
    status: r.status as ReservationStatus,
    expiresAt: r.expires_at as Date,
    createdAt: r.created_at as Date,
    closedAt: r.closed_at as Date | null,
    idempotencyKey: r.idempotency_key as string,
    requestHash: r.request_hash as string,
    agentId: r.agent_id as string | null,
    userId: r.user_id as string | null,
  };
}
