/**
 * Billing periods. Without a plan the period is the calendar month counted from the account's
 * creation (contract: Balance.periodStart): a period starts on the creation day-of-month at the
 * creation time of day (UTC); when a month is shorter, the period starts on its last day.
 */

/** A half-open interval [start, end). */
export interface Period {
  start: Date;
  end: Date;
}

/**
 * The UTC instant of calendar date `year`-`month`-`day` (month 0-based, day may be 0: the
 * previous month's last day) at the time of day of `timeOf`. Built with setUTCFullYear, not
 * Date.UTC, which reads years 0..99 as 1900..1999: an anchor in year 0050 (a test clock may start
 * at any DateTime from 0001-01-01) had its periods in 1949..1950, while PostgreSQL's
 * billing_period named the right ones.
 */
function utcAt(year: number, month: number, day: number, timeOf: Date): Date {
  const d = new Date(0);
  d.setUTCFullYear(year, month, day);
  d.setUTCHours(timeOf.getUTCHours(), timeOf.getUTCMinutes(), timeOf.getUTCSeconds(), timeOf.getUTCMilliseconds());
  return d;
}

/** The anchor shifted by `months` calendar months (UTC), clamped to the target month's end. */
export function addMonthsClamped(anchor: Date, months: number): Date {
  const y = anchor.getUTCFullYear();
  const m = anchor.getUTCMonth() + months;
  const targetYear = y + Math.floor(m / 12);
  const targetMonth = ((m % 12) + 12) % 12;
  const lastDay = utcAt(targetYear, targetMonth + 1, 0, new Date(0)).getUTCDate();
  const day = Math.min(anchor.getUTCDate(), lastDay);
  return utcAt(targetYear, targetMonth, day, anchor);
}

/**
 * The monthly period anchored at `anchor` that contains `now` (start <= now < end).
 * Before the anchor, the first period is returned.
 */
export function monthlyPeriodAt(anchor: Date, now: Date): Period {
  if (now.getTime() < anchor.getTime()) return { start: anchor, end: addMonthsClamped(anchor, 1) };
  return periodOfGridAt(anchor, now);
}

/**
 * The period of the monthly grid anchored at `anchor` that contains `at` (start <= at < end),
 * also before the anchor (counted backwards: anchor - 1 month, - 2 months, ..., clamped to a
 * shorter month's end like {@link addMonthsClamped}); from the anchor on it is
 * {@link monthlyPeriodAt}. Statements of periods before the anchor use it.
 */
export function periodOfGridAt(anchor: Date, at: Date): Period {
  let months = (at.getUTCFullYear() - anchor.getUTCFullYear()) * 12 + (at.getUTCMonth() - anchor.getUTCMonth());
  let start = addMonthsClamped(anchor, months);
  // The grid's start in `at`'s calendar month, or (when it lies after `at`) the previous one.
  if (start.getTime() > at.getTime()) start = addMonthsClamped(anchor, --months);
  return { start, end: addMonthsClamped(anchor, months + 1) };
}

/**
 * percentRemaining (contract Balance): 100 * available / periodCredits clamped to [0, 100];
 * 0 when periodCredits is 0. Computed on exact integers; the result (a display value, not
 * money) is rounded to 2 decimals.
 */
export function percentRemaining(availableMicroCredits: bigint, periodMicroCredits: bigint): number {
  if (periodMicroCredits <= 0n || availableMicroCredits <= 0n) return 0;
  if (availableMicroCredits >= periodMicroCredits) return 100;
  const basisPoints = (availableMicroCredits * 10_000n) / periodMicroCredits; // floor: never overstate
  return Number(basisPoints) / 100;
}
