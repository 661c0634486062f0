/**
 * An account's "now": the one rule every read of an account that depends on the time follows
 * (Balance, statement, usage reports' defaults, budgets' spending, batch and hold statuses, the
 * subscription's current period, top-ups used this period), in SQL and in TypeScript.
 *
 * The rule (README "Which instant an event belongs to"): a test-mode account's test clock; else
 * the reading server's wall clock, but never before the account's last committed change
 * (balances.updated_at). The writes date every change at that same instant (AccountTx.now, the
 * charge path's twin of this rule), so balances.updated_at only grows; a reader whose clock runs
 * behind the server that last changed the account (clock skew between servers) would otherwise
 * see a batch or hold that change already treated as expired as ACTIVE, or name the billing
 * period before the one that change was counted in.
 */

/** What {@link accountNowAt} needs of an account: its test clock and its last committed change. */
export interface AccountClockFields {
  testMode: boolean;
  /** The test clock's instant (null off a test clock). */
  testClockAt: Date | null;
  /** balances.updated_at: when the account last changed (null: no balance row read). */
  lastChangeAt: Date | null;
}

/**
 * The account's now, from its row and its balance row as read: `testClockAt` for a test-mode
 * account with a test clock, else the later of `wallNow` and `lastChangeAt`. The TypeScript twin
 * of {@link accountNowSql} for reads through Prisma (GraphQL batch and hold statuses and filters).
 */
export function accountNowAt(account: AccountClockFields, wallNow: Date): Date {
  if (account.testMode && account.testClockAt) return account.testClockAt;
  return account.lastChangeAt && account.lastChangeAt.getTime() > wallNow.getTime() ? account.lastChangeAt : wallNow;
}

/**
 * SQL expression (timestamptz) of the account's now, for a statement that reads the account's
 * row as `account` and its balances row as `balance` (aliases), `wallNowSql` being the reader's
 * wall clock (a parameter, e.g. `$2`): the same rule as {@link accountNowAt}. Joining the balances
 * row costs no round trip; every read of an account that depends on the time uses this.
 */
export function accountNowSql(account: string, balance: string, wallNowSql: string): string {
  return `CASE WHEN ${account}.test_mode AND ${account}.test_clock_at IS NOT NULL THEN ${account}.test_clock_at ELSE GREATEST(${wallNowSql}::timestamptz, ${balance}.updated_at) END`;
}
