/**
 * The audit trail's read path (src/audit/audit-log.ts writes it): `Query.auditEvents`, a Relay
 * connection of `AuditEvent`, newest first, for operators only: a service key with `admin` or
 * `read` (the keys that read every account). End users, write-only keys and anonymous callers are
 * refused before it runs (FORBIDDEN / UNAUTHENTICATED), as they are for other operator data.
 */
import { builder } from './builder.js';
import { assertRowCursors, decodeId, toGlobalId } from './ids.js';
import type { Prisma } from '../generated/prisma/client.js';

/** Most rows one page of auditEvents serves (as the account connections' pages). */
export const AUDIT_EVENTS_MAX_PAGE = 500;

const AuditActorKindEnum = builder.enumType('AuditActorKind', {
  description: 'What kind of credential made a change.',
  values: {
    API_KEY: { value: 'api_key', description: 'A service API key (actorKeyId names it).' },
    ADMIN_ENV: { value: 'admin_env', description: 'The ADMIN_API_KEY bootstrap key.' },
    SYSTEM: {
      value: 'system',
      description: "The workers (rolls, top-ups, expiries; actorName workers), the Stripe webhook endpoint (a payment's refunds and disputes; actorName stripe-webhook, requestId the webhook request's), or a service called without a caller.",
    },
    CLI: { value: 'cli', description: 'An operator command run on a host (apikey:create, seed).' },
  } as const,
});

const AuditEventRef = builder.prismaObject('AuditEvent', {
  description: 'One operator change, recorded in the transaction of the change itself (README "Audit trail").',
  fields: (t) => ({
    id: t.exposeID('id', { description: 'The row id (a uuid).' }),
    createdAt: t.expose('createdAt', { type: 'DateTime', description: 'When the change committed (its transaction start, real time, never a test clock).' }),
    actorKind: t.field({ type: AuditActorKindEnum, resolve: (e) => e.actorKind as 'api_key' | 'admin_env' | 'system' | 'cli' }),
    actorKeyId: t.exposeID('actorKeyId', { nullable: true, description: 'The API key id (as printed by apikey:create), for API_KEY only.' }),
    actorName: t.exposeString('actorName', { description: 'The key name, bootstrap-admin, workers, stripe-webhook, or the CLI command and OS user.' }),
    action: t.exposeString('action', { description: 'What was done: account.created, grant.created, grant.voided, usage.refunded, settings.updated, price_book.published, ... (README "Audit trail").' }),
    accountId: t.id({ nullable: true, description: 'The account it concerns (null for platform-wide configuration).', resolve: (e) => (e.accountId ? toGlobalId('Account', e.accountId) : null) }),
    subjectType: t.exposeString('subjectType', { nullable: true }),
    subjectId: t.exposeString('subjectId', { nullable: true, description: 'The database id (or price book version, promo code) of what was made or changed.' }),
    requestId: t.exposeString('requestId', { nullable: true, description: "The GraphQL request's id (x-request-id), or the Stripe webhook request's, to find it in the logs." }),
    details: t.field({ type: 'JSON', description: 'The input that mattered; amounts as decimal credit strings; never secrets or tokens.', resolve: (e) => e.details }),
  }),
});

builder.queryFields((t) => ({
  auditEvents: t.prismaConnection(
    {
      type: AuditEventRef,
      cursor: 'id',
      maxSize: AUDIT_EVENTS_MAX_PAGE,
      description: `Who changed what, newest first (operators: a service key with admin or read). At most ${AUDIT_EVENTS_MAX_PAGE} per page.`,
      authScopes: { admin: true, read: true },
      args: { accountId: t.arg.id({ required: false, description: 'Only the changes of this account.' }) },
      resolve: (query, _root, args, ctx) => {
        assertRowCursors(args);
        const where: Prisma.AuditEventWhereInput = args.accountId != null ? { accountId: decodeId(String(args.accountId), 'Account', 'account') } : {};
        return ctx.prisma.auditEvent.findMany({ ...query, where, orderBy: { seq: 'desc' } });
      },
    },
    { name: 'AuditEventConnection' },
    { name: 'AuditEventEdge' },
  ),
}));
