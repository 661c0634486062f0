/**
 * The Pothos schema builder: plugins and their options only (types live in ./types).
 * Plugins: scope-auth (who may call what), prisma (types from Prisma models with selections
 * planned from the query), relay (global ids, nodes, connections).
 */
import SchemaBuilder from '@pothos/core';
import ScopeAuthPlugin from '@pothos/plugin-scope-auth';
import PrismaPlugin from '@pothos/plugin-prisma';
import RelayPlugin from '@pothos/plugin-relay';
import type PrismaTypes from '../generated/pothos-types.js';
import { getDatamodel } from '../generated/pothos-types.js';
import type { GraphQLContext } from './context.js';
import { hasScope } from '../auth/principal.js';
import { codedError } from './errors.js';
import { canReadAccountData } from './access.js';

/**
 * Items a connection serves when called without `first` / `last` (the prisma plugin's
 * defaultConnectionSize; Pothos' own default, kept explicit so the cost estimate in
 * ./cost-limit.ts counts the page it will actually serve).
 */
export const DEFAULT_CONNECTION_SIZE = 20;

/** Named auth scopes usable in `authScopes` options. */
export interface AuthScopes {
  /** Any valid credential. */
  authenticated: boolean;
  admin: boolean;
  usageWrite: boolean;
  creditsWrite: boolean;
  /** Service key with the read scope. */
  read: boolean;
  /**
   * May see account-wide data of an account it reached (canReadAccountData in ./access.ts): an
   * end user or a key with `read`. Types holding such data require it; see ./account-data-guard.ts.
   */
  accountData: boolean;
  /** An end user (JWT). */
  user: boolean;
}

/** The builder every type module registers into. */
export const builder = new SchemaBuilder<{
  Context: GraphQLContext;
  PrismaTypes: PrismaTypes;
  AuthScopes: AuthScopes;
  DefaultFieldNullability: false;
  DefaultEdgesNullability: false;
  DefaultNodeNullability: false;
  Scalars: {
    Credits: { Input: bigint; Output: bigint };
    Decimal: { Input: string; Output: string };
    DateTime: { Input: Date; Output: Date };
    BigInt: { Input: bigint; Output: bigint };
    JSON: { Input: unknown; Output: unknown };
    ID: { Input: string; Output: string | number | bigint };
  };
}>({
  plugins: [ScopeAuthPlugin, PrismaPlugin, RelayPlugin],
  defaultFieldNullability: false,
  scopeAuth: {
    authScopes: (ctx) => ({
      authenticated: ctx.principal !== null,
      admin: hasScope(ctx.principal, 'admin'),
      usageWrite: hasScope(ctx.principal, 'usage:write'),
      creditsWrite: hasScope(ctx.principal, 'credits:write'),
      read: hasScope(ctx.principal, 'read'),
      accountData: canReadAccountData(ctx.principal),
      user: ctx.principal?.kind === 'user',
    }),
    unauthorizedError: (_parent, ctx) =>
      ctx.principal
        ? codedError('FORBIDDEN', 'This credential may not do that.')
        : codedError('UNAUTHENTICATED', 'Send Authorization: Bearer <API key or user token>.'),
  },
  prisma: {
    client: (ctx) => ctx.prisma,
    dmmf: getDatamodel(),
    exposeDescriptions: false,
    filterConnectionTotalCount: true,
    defaultConnectionSize: DEFAULT_CONNECTION_SIZE,
    onUnusedQuery: null,
  },
  relay: {
    nodeQueryOptions: false,
    nodesQueryOptions: false,
    clientMutationId: 'omit',
    cursorType: 'String',
  },
});
