/**
 * Who is calling: the authenticated identity behind one request (or one WebSocket connection).
 *
 * The contract README ("Credentials") names two kinds of callers:
 * - services holding an API key with scopes (created by an operator; the bootstrap admin key
 *   comes from ADMIN_API_KEY), and
 * - end users holding a JWT whose `sub` is their external id and whose optional `org` claim is
 *   their organization's external id. End users may only read their own accounts and never
 *   write, so they carry no service scopes at all.
 */

/**
 * Every service scope, in a stable order. The same list is enforced by the database CHECK
 * constraint `api_keys_scopes_known` (prisma/migrations/*_init/migration.sql).
 * - `admin`: everything (implies every other scope).
 * - `usage:write`: record/reserve/settle usage (metering services).
 * - `credits:write`: create accounts, grant, void and refund credits, packs, budgets, plans,
 *   test clocks (billing services).
 * - `read`: read any account, balance and history. Only `read` (or `admin`) reads an account:
 *   a key with only write scopes gets what its own mutations return (the usage event with its
 *   cost, lines and drawdown amounts, the reservation, the grant, the payment method, auto
 *   top-up and budget settings it saved, and of an Account only its identity: id, externalId,
 *   name, kind, testMode, createdAt) and nothing of an account's balance, batches, ledger, usage,
 *   alerts, payment method or settings. A query by id / externalId / node answers null like a
 *   missing account, taskCost / quote / usageRecorded NOT_FOUND, and an operation selecting
 *   account data (balanceChanged, creditAlerts, `recordUsage { account { balance { total } } }`)
 *   is refused with FORBIDDEN before it runs, changing nothing (src/graphql/access.ts,
 *   src/graphql/account-data-guard.ts).
 */
export const SCOPES = ['admin', 'usage:write', 'credits:write', 'read'] as const;

/** `keyId` and `name` of the principal authenticated by ADMIN_API_KEY (src/auth/authenticator.ts). */
export const BOOTSTRAP_ADMIN_NAME = 'bootstrap-admin';

/** One service scope (see {@link SCOPES}). */
export type Scope = (typeof SCOPES)[number];

/** True when `value` is one of the known {@link SCOPES} (exact, case-sensitive match). */
export function isScope(value: unknown): value is Scope {
  return typeof value === 'string' && (SCOPES as readonly string[]).includes(value);
}

/**
 * A service caller authenticated by an API key (or by the bootstrap ADMIN_API_KEY).
 * - `keyId`: the `api_keys.id` uuid, or `'bootstrap-admin'` for the environment key.
 * - `name`: the operator-chosen key name (for logs and audit), `'bootstrap-admin'` for the
 *   environment key.
 * - `scopes`: what the key may do; check it with {@link hasScope}, which applies "admin
 *   implies everything".
 * - `publicAudience`: true for keys that act for public visitors: expected refusals that would
 *   reveal billing details (INSUFFICIENT_CREDITS, BUDGET_EXCEEDED) are answered with a neutral
 *   UNAVAILABLE (issue #5).
 */
export interface ServicePrincipal {
  kind: 'service';
  keyId: string;
  name: string;
  scopes: ReadonlySet<Scope>;
  publicAudience?: boolean;
}

/**
 * An end user authenticated by a JWT.
 * - `userId`: the `sub` claim, i.e. the externalId of the user's USER account.
 * - `orgId`: the `org` claim (externalId of their ORGANIZATION account), or null if absent.
 * - `expiresAt`: the `exp` claim as a Date (second precision); every accepted token has one
 *   (src/auth/jwt.ts). Long-lived connections (subscriptions) close at this instant.
 */
export interface UserPrincipal {
  kind: 'user';
  userId: string;
  orgId: string | null;
  expiresAt: Date;
}

/** An authenticated caller; `null` is used for anonymous requests (no Authorization header). */
export type Principal = ServicePrincipal | UserPrincipal;

/**
 * Whether `principal` holds `scope`.
 * - Anonymous (`null`) holds nothing.
 * - End users hold no service scope (contract README: end users never write, and they read
 *   only their own accounts, which is an ownership check, not the `read` scope).
 * - A service key holding `admin` holds every scope.
 */
export function hasScope(principal: Principal | null, scope: Scope): boolean {
  if (principal === null || principal.kind !== 'service') return false;
  return principal.scopes.has('admin') || principal.scopes.has(scope);
}
