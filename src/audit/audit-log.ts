/**
 * The audit trail: one append-only `audit_events` row per operator change (who changed what),
 * written by the service, in the SAME transaction as the change, and only when something changed
 * (an idempotent replay, a no-op or a refusal writes none). Metering (recordUsage, batches,
 * reservations, quotes) is not audited: it is the product's traffic, kept in the ledger itself.
 *
 * Who: the credential behind the call ({@link AuditActor}), taken from the GraphQL context's
 * principal (src/server.ts puts it on the request's ServiceContext), the CLI, or the workers.
 * Read by operators through the `auditEvents` query (src/graphql/audit.ts; admin or read keys).
 */
import { hostname, userInfo } from 'node:os';
import type pg from 'pg';
import { BOOTSTRAP_ADMIN_NAME, type Principal } from '../auth/principal.js';
import type { ServiceContext } from '../services/context.js';

/**
 * Every action the trail records (the `action` column), one per operator mutation:
 * - accounts and credit: `account.created`, `grant.created`, `grant.voided`, `usage.refunded`,
 *   `promo_code.redeemed`, `referral.redeemed`, `test_clock.advanced`;
 * - configuration (admin): `price_book.published`, `settings.updated`, `plan.created`,
 *   `promo_code.created`, `credit_pack.created`;
 * - per account: `plan.subscribed`, `plan.cancelled`, `budget.set` (agent or user; a null limit
 *   removes it), `auto_top_up.updated`, `payment_method.attached`, `credit_pack.purchased` (the
 *   purchase request; its grant follows when the payment succeeds);
 * - credentials (CLI): `api_key.created`, `api_key.revoked`.
 */
export const AUDIT_ACTIONS = [
  'account.created',
  'grant.created',
  'grant.voided',
  'usage.refunded',
  'promo_code.redeemed',
  'referral.redeemed',
  'test_clock.advanced',
  'price_book.published',
  'settings.updated',
  'plan.created',
  'promo_code.created',
  'credit_pack.created',
  'plan.subscribed',
  'plan.cancelled',
  'budget.set',
  'auto_top_up.updated',
  'payment_method.attached',
  'credit_pack.purchased',
  'api_key.created',
  'api_key.revoked',
] as const;

/** One of {@link AUDIT_ACTIONS}. */
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

/**
 * What kind of credential acted (the `actor_kind` column; CHECK `audit_events_actor_kind_known`):
 * `api_key` (a key of `api_keys`), `admin_env` (the ADMIN_API_KEY bootstrap key), `system` (the
 * workers: rolls, top-ups, expiries; and the Stripe webhook endpoint, {@link stripeWebhookActor})
 * or `cli` (scripts run by an operator on the host).
 */
export type AuditActorKind = 'api_key' | 'admin_env' | 'system' | 'cli';

/**
 * Who made a change.
 * - `keyId`: the `api_keys.id` for kind `api_key`, else null (CHECK `audit_events_actor_key_id_for_api_keys`).
 * - `name`: the key's name, `bootstrap-admin`, the worker or the CLI user.
 * - `requestId`: the request's id (x-request-id or generated) for GraphQL calls, else null.
 */
export interface AuditActor {
  kind: AuditActorKind;
  keyId: string | null;
  name: string;
  requestId: string | null;
}

/** The actor of changes made with no caller: the workers (and services called without an actor). */
export const SYSTEM_ACTOR: AuditActor = { kind: 'system', keyId: null, name: 'workers', requestId: null };

/** The name of {@link stripeWebhookActor}'s actor (the `actor_name` column). */
export const STRIPE_WEBHOOK_ACTOR_NAME = 'stripe-webhook';

/**
 * The actor of what the Stripe webhook endpoint changes (src/http/stripe-webhook.ts: the refunds,
 * disputes and won disputes of payments, services/payment-reversals.ts): kind `system` (no
 * credential: Stripe's signature is checked instead), named `stripe-webhook`, with the webhook
 * request's id (`requestId`, logged with the event id), so an operator reading the trail sees that
 * the payment provider's event did it, and can find that event in the logs.
 */
export function stripeWebhookActor(requestId: string): AuditActor {
  return { kind: 'system', keyId: null, name: STRIPE_WEBHOOK_ACTOR_NAME, requestId };
}

/**
 * The actor of an operator's command run on a host (scripts/*.ts): kind `cli`, named
 * `<command> by <OS user>@<host>` (the OS user is `unknown` where it cannot be read).
 */
export function cliActor(command: string): AuditActor {
  let user = 'unknown';
  try {
    user = userInfo().username;
  } catch {
    // no passwd entry for the uid (some containers)
  }
  return { kind: 'cli', keyId: null, name: `${command} by ${user}@${hostname()}`, requestId: null };
}

/**
 * The actor of a GraphQL request.
 * @returns the service key's actor (`admin_env` for the bootstrap key, else `api_key` with its
 *   id and name), or null for an end user or an anonymous caller: they may change nothing, and
 *   a service that would audit a change for them throws (see {@link actorOf}).
 */
export function actorFromPrincipal(principal: Principal | null, requestId: string): AuditActor | null {
  if (principal === null || principal.kind !== 'service') return null;
  if (principal.keyId === BOOTSTRAP_ADMIN_NAME) return { kind: 'admin_env', keyId: null, name: BOOTSTRAP_ADMIN_NAME, requestId };
  return { kind: 'api_key', keyId: principal.keyId, name: principal.name, requestId };
}

/**
 * The actor a service records: `ctx.actor`, or {@link SYSTEM_ACTOR} when the context carries none
 * (workers, scripts that set none).
 * @throws Error when `ctx.actor` is null (a caller that may not change anything reached a
 *   change: a bug; the transaction rolls back and the request answers INTERNAL_SERVER_ERROR).
 */
export function actorOf(ctx: Pick<ServiceContext, 'actor'>): AuditActor {
  if (ctx.actor === null) throw new Error('audit: a change was attempted by a caller without an actor (end user or anonymous)');
  return ctx.actor ?? SYSTEM_ACTOR;
}

/** A JSON value of `details` (no bigint: amounts go in as decimal credit strings, formatCredits). */
export type AuditDetail = string | number | boolean | null | AuditDetail[] | { [key: string]: AuditDetail | undefined };

/**
 * One change to record.
 * - `accountId`: the account it concerns (null for platform-wide configuration).
 * - `subjectType` / `subjectId`: the object it made or changed (`grant` and its id, `price_book`
 *   and its version, ...).
 * - `details`: the input that matters; never a secret, token or payment credential.
 */
export interface AuditEventInput {
  action: AuditAction;
  accountId?: string | null;
  subjectType?: string | null;
  subjectId?: string | null;
  details?: { [key: string]: AuditDetail | undefined };
}

/**
 * Writes one audit row with `db` (the change's own transaction client, so it commits or rolls
 * back with the change). `created_at` is the database's transaction time (real time, not a
 * test clock's).
 * @throws whatever PostgreSQL throws (the caller's transaction then rolls back).
 */
export async function recordAuditEvent(db: Pick<pg.ClientBase, 'query'>, actor: AuditActor, event: AuditEventInput): Promise<void> {
  await db.query(
    `INSERT INTO audit_events (id, actor_kind, actor_key_id, actor_name, action, account_id, subject_type, subject_id, request_id, details)
     VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6, $7, $8, $9)`,
    [
      actor.kind,
      actor.keyId,
      actor.name,
      event.action,
      event.accountId ?? null,
      event.subjectType ?? null,
      event.subjectId ?? null,
      actor.requestId,
      JSON.stringify(event.details ?? {}),
    ],
  );
}
