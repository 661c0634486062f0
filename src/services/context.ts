/**
 * The explicit context every service takes (no globals): the ledger's pg pool, a clock, and the
 * in-force price book and settings.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import type { PricingState } from './pricing-state.js';
import type { PaymentProvider } from '../payments/provider.js';
import type { GroupCommitter } from './group-commit.js';
import type { ReservationOwners } from './reservation-owners.js';
import type { DepletionAlerts } from './depletion-alerts.js';
import type { RefusalTopUps } from './refusal-top-ups.js';
import type { AuditActor } from '../audit/audit-log.js';

/** Wall-clock source; tests may pass a fixed or controllable one. */
export type Clock = () => Date;

/** What a service needs to run. */
export interface ServiceContext {
  pool: pg.Pool;
  clock: Clock;
  pricing: PricingState;
  /**
   * Group commit of concurrent charges per account (CHARGE_PATH=group); absent: one transaction
   * per charge (CHARGE_PATH=naive).
   */
  groupCommit?: GroupCommitter;
  /** Charges payment methods (pack purchases, auto top-ups); absent where nothing is charged. */
  payments?: PaymentProvider;
  /**
   * The owners of the holds this process made (reserveCredits remembers, settleReservation reads
   * and forgets); absent: settleReservation always looks the owner up in the database.
   */
  reservationOwners?: ReservationOwners;
  /**
   * The (account, period) pairs whose depletion notice (the 0 % alert raised by a refusal for lack
   * of credit) this process has answered (depletion-alerts.ts), so that a flood of refusals costs
   * no statement; absent: every refusal checks (still one alert, by the unique key).
   */
  depletionAlerts?: DepletionAlerts;
  /**
   * The accounts whose refusals for lack of credit this process checked for an auto top-up to
   * start (refusal-top-ups.ts), so that a flood of refusals costs no statement; absent: every
   * refusal checks (still one top-up, by the one-pending index).
   */
  refusalTopUps?: RefusalTopUps;
  /**
   * Where services log what needs an operator's eye but is not an error of the request (e.g. a
   * charge's success that arrived after its payment was settled as not charged); absent: not logged.
   */
  log?: Pick<Logger, 'warn' | 'error'>;
  /**
   * Who is calling, for the audit trail (src/audit/audit-log.ts): set per GraphQL request from
   * its principal (src/server.ts) or by a CLI. Absent: the workers (`system`). Null: a caller that
   * may change nothing (an end user, anonymous); a service that would audit a change throws.
   * The charge path (metering) ignores it.
   */
  actor?: AuditActor | null;
}
