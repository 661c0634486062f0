/**
 * Who may read which account (contract README, credentials; scopes in src/auth/principal.ts):
 * - a service key with the `read` scope (or `admin`, which implies it) reads every account;
 * - an end user reads only the USER account whose externalId is its `sub` and the ORGANIZATION
 *   account whose externalId is its `org`;
 * - a service key without `read` (only `usage:write` / `credits:write`) reads no account: it gets
 *   the objects its own mutations return (see {@link canReadAccountData} and
 *   ./account-data-guard.ts), never an account's balance, batches, ledger, usage or settings.
 * An account the caller may not read answers exactly like a missing one (NOT_FOUND / null), so
 * ids of other tenants leak nothing.
 */
import { LedgerError } from '../ledger/errors.js';
import { hasScope, type Principal } from '../auth/principal.js';
import type { Prisma } from '../generated/prisma/client.js';
import type { GraphQLContext } from './context.js';
import { readAccountClock } from '../services/read-balance.js';

/**
 * True when `principal` may see account-wide data (balance, batches, ledger, usage, alerts,
 * payment method, auto top-up, budgets, subscription) of an account it has reached: an end user
 * (every entry point that reaches an account checks it is theirs, {@link canReadAccount}) or a
 * service key with the `read` scope. A key with only write scopes may not (issue: write-only keys
 * read every account); anonymous callers may not. A pure scope check: no database read.
 */
export function canReadAccountData(principal: Principal | null): boolean {
  if (!principal) return false;
  return principal.kind === 'user' || hasScope(principal, 'read');
}

/** True when the caller may read the account with database id `accountId`. */
export async function canReadAccount(ctx: GraphQLContext, accountId: string): Promise<boolean> {
  const p = ctx.principal;
  if (!p) return false;
  if (p.kind === 'service') return hasScope(p, 'read');
  const memo = ctx.readableAccounts.get(accountId);
  if (memo !== undefined) return memo;
  // The rule is readableAccountWhere's, stated once.
  const readable = readableAccountWhere(p)!;
  const ok = (await ctx.prisma.account.findFirst({ where: { id: accountId, AND: [readable] }, select: { id: true } })) !== null;
  ctx.readableAccounts.set(accountId, ok);
  return ok;
}

/**
 * The accounts `principal` may read, as a Prisma filter to put in the same query that loads a row
 * by id or external id (README "Who may do what"):
 * - `{}`: every account (a service key with `read`);
 * - an end user: its USER account (externalId = `sub`) or its ORGANIZATION account (externalId =
 *   `org`);
 * - null: none (anonymous callers, service keys without `read`): answer as for a missing row
 *   without reading anything.
 * Loading the row and checking it in two queries cost another tenant's id one lookup more than an
 * id of nothing, a difference an end user could time to learn that a guessed external id, or an
 * id it held, exists (about 0.8 ms in 3-4 ms over loopback HTTP); with the filter both take the
 * one query (test/api/tenancy-audit.test.ts). A pure function of the principal: no database read.
 */
export function readableAccountWhere(principal: Principal | null): Prisma.AccountWhereInput | null {
  if (!principal) return null;
  if (principal.kind === 'service') return hasScope(principal, 'read') ? {} : null;
  return {
    OR: [{ kind: 'USER', externalId: principal.userId }, ...(principal.orgId !== null ? [{ kind: 'ORGANIZATION' as const, externalId: principal.orgId }] : [])],
  };
}

/**
 * The filter of rows that belong to an account `principal` may read ({@link readableAccountWhere}),
 * for a model with an `account` relation (usage events, grants, batches, ledger entries, holds,
 * alerts): `{}` for every row, null for none.
 */
export function ownedByReadableAccountWhere(principal: Principal | null): { account?: Prisma.AccountWhereInput } | null {
  const accounts = readableAccountWhere(principal);
  if (accounts === null) return null;
  return Object.keys(accounts).length === 0 ? {} : { account: accounts };
}

/**
 * Throws NOT_FOUND unless the caller may read the account and it exists. For an end user the
 * access check already found the row; a service key's check is a scope check only, so the
 * account is looked up then: a missing account answers as a foreign one does (ids.ts).
 * @throws LedgerError UNAUTHENTICATED without credentials, NOT_FOUND otherwise.
 */
export async function assertAccountReadable(ctx: GraphQLContext, accountId: string, what = 'account'): Promise<void> {
  await assertCanReadAccount(ctx, accountId, what);
  if (ctx.principal?.kind === 'user') return;
  if (!(await ctx.prisma.account.findUnique({ where: { id: accountId }, select: { id: true } }))) throw new LedgerError('NOT_FOUND', `${what} not found`);
}

/**
 * Throws NOT_FOUND unless the caller may read the account.
 * @throws LedgerError UNAUTHENTICATED without credentials, NOT_FOUND otherwise.
 */
export async function assertCanReadAccount(ctx: GraphQLContext, accountId: string, what = 'account'): Promise<void> {
  if (!ctx.principal) throw new LedgerError('UNAUTHENTICATED', 'Send Authorization: Bearer <API key or user token>.');
  if (!(await canReadAccount(ctx, accountId))) throw new LedgerError('NOT_FOUND', `${what} not found`);
}

/** The reads of {@link readOnceInFlight} in flight, per request context and key. */
const readsInFlight = new WeakMap<GraphQLContext, Map<string, Promise<unknown>>>();

/**
 * `read()`, or the promise of the same `key`'s read of this request that is still in flight: the
 * resolvers of one list's rows run in the same tick, so they share one read. Nothing is kept once
 * it settles, so a later event of a subscription (same context) reads anew.
 * Why not a Prisma relation of each row: Prisma loads a to-one relation of N rows with
 * `WHERE id IN ($1, ..., $N)`, the same id once per row, and the planner takes it for N different
 * rows; for the account of an account's N rows, above ~1 in 40 accounts that is a sequential
 * scan of accounts (test/api/neighbour-growth-pages-audit.test.ts: see accountNowOf and
 * UsageEvent.account).
 * @throws what `read` throws (to every caller that shares it).
 */
export function readOnceInFlight<T>(ctx: GraphQLContext, key: string, read: () => Promise<T>): Promise<T> {
  let inFlight = readsInFlight.get(ctx);
  if (!inFlight) readsInFlight.set(ctx, (inFlight = new Map()));
  const pending = inFlight.get(key);
  if (pending) return pending as Promise<T>;
  const reads = inFlight;
  const started = read();
  reads.set(key, started);
  const forget = () => reads.delete(key);
  started.then(forget, forget);
  return started;
}

/**
 * The now of account `accountId` (services/read-balance.ts readAccountClock: its test clock,
 * else this server's clock but never before its last committed change; the rule and the
 * statement the Account fields read it with), for a status resolver of one of its rows (a
 * batch, a hold). Read once for every resolver that asks while the read is in flight
 * ({@link readOnceInFlight}).
 * Not a Prisma relation of the row: Prisma loads a to-one relation of N rows with
 * `WHERE id IN ($1, ..., $N)`, the same account id once per row, and the planner takes it for N
 * accounts: grants(first: 300) { batch { status } } read every row of accounts by a sequential
 * scan (3,002 rows in a database of 3,000 accounts, 5,002 in one of 5,000; now 2), as did
 * Account.reservations of 120 holds (3,002; now 2) and
 * ledger(first: 200) { batch { status } reservation { status } } (3,003 and 5,003; now 2)
 * (test/api/neighbour-growth-pages-audit.test.ts, "...: one account's rows of accounts and
 * balances, in every phase").
 * @returns this server's clock when the account is gone.
 * @throws what the read throws, but NOT_FOUND.
 */
export async function accountNowOf(ctx: GraphQLContext, accountId: string): Promise<Date> {
  try {
    const clock = await readOnceInFlight(ctx, `clock:${accountId}`, () => readAccountClock(ctx.services.pool, accountId, ctx.services.clock()));
    return clock.now;
  } catch (error) {
    if (error instanceof LedgerError && error.code === 'NOT_FOUND') return ctx.services.clock();
    throw error;
  }
}
