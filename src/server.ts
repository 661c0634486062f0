/**
 * buildServer(): graphql-yoga over Node's http server, with /healthz and /readyz.
 * GraphiQL is served at GET /graphql (off in production). Limits (depth, aliases, tokens, cost)
 * come from graphql-armor; introspection and field suggestions are off in production; every
 * unexpected error is masked to the client and logged with the request id.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { randomUUID } from 'node:crypto';
import { AsyncLocalStorage } from 'node:async_hooks';
import { createYoga, type Plugin } from 'graphql-yoga';
import { GraphQLError, NoSchemaIntrospectionCustomRule } from 'graphql';
import { EnvelopArmorPlugin } from '@escape.tech/graphql-armor';
import type pg from 'pg';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { schema } from './graphql/schema.js';
import type { GraphQLContext } from './graphql/context.js';
import { maskError } from './graphql/errors.js';
import type { Env } from './config/env.js';
import type { ServiceContext } from './services/context.js';
import type { PrismaClient } from './db/prisma.js';
import type { Authenticator } from './auth/authenticator.js';
import { LedgerError } from './ledger/errors.js';

/** What the server needs, created by the process entry (src/main.ts) or a test. */
export interface ServerDeps {
  env: Env;
  log: Logger;
  pool: pg.Pool;
  prisma: PrismaClient;
  redis: Redis;
  services: ServiceContext;
  authenticator: Authenticator;
}

/** A built, not yet listening, server. */
export interface CreditpoolServer {
  http: Server;
  /** Starts listening; resolves with the bound port. */
  listen(port: number, host?: string): Promise<number>;
  /** Stops accepting connections and closes open ones. */
  close(): Promise<void>;
}

const REQUEST_ID_RE = /^[A-Za-z0-9._:-]{1,100}$/;

/** The id of the HTTP request being served (x-request-id when valid, else a new uuid). */
const requestScope = new AsyncLocalStorage<{ requestId: string; publicAudience: boolean }>();

function disableIntrospection(): Plugin {
  return {
    onValidate({ addValidationRule }) {
      addValidationRule(NoSchemaIntrospectionCustomRule);
    },
  };
}

/** Validation failures are malformed input: the contract's code for them is BAD_USER_INPUT. */
function validationErrorsAreBadInput(): Plugin {
  return {
    onValidate() {
      return ({ valid, result }) => {
        if (valid) return;
        for (const error of result) {
          const ext = ((error as { extensions: Record<string, unknown> }).extensions ??= {});
          ext.code = 'BAD_USER_INPUT';
        }
      };
    },
  };
}

/** Builds the HTTP server with the GraphQL endpoint at /graphql. */
export function buildServer(deps: ServerDeps): CreditpoolServer {
  const { env, log } = deps;
  const production = env.NODE_ENV === 'production';

  const yoga = createYoga<{ req: IncomingMessage; res: ServerResponse }, GraphQLContext>({
    schema,
    graphqlEndpoint: '/graphql',
    graphiql: !production,
    landingPage: false,
    logging: false,
    context: async ({ request }): Promise<GraphQLContext> => {
      const requestId = requestScope.getStore()?.requestId ?? randomUUID();
      let principal;
      try {
        principal = await deps.authenticator.authenticate(request.headers.get('authorization'));
      } catch (err) {
        if (err instanceof LedgerError) {
          throw new GraphQLError(err.message, { extensions: { code: err.code, http: { status: err.code === 'UNAUTHENTICATED' ? 401 : 503 } } });
        }
        throw err;
      }
      const flagged = request.headers.get('x-creditpool-audience')?.toLowerCase() === 'public';
      const publicAudience = flagged || (principal?.kind === 'service' && principal.publicAudience === true);
      const scope = requestScope.getStore();
      if (scope) scope.publicAudience = publicAudience;
      return {
        principal,
        publicAudience,
        requestId,
        services: deps.services,
        prisma: deps.prisma,
        env,
        log: log.child({ requestId }),
        readableAccounts: new Map(),
      };
    },
    maskedErrors: {
      maskError: (error, _message, _isDev) => {
        const scope = requestScope.getStore();
        const requestId = scope?.requestId ?? randomUUID();
        return maskError(error, requestId, (err) => log.error({ err, requestId }, 'unexpected error while executing GraphQL'), {
          publicAudience: scope?.publicAudience ?? false,
          onNeutralized: (err) => log.info({ requestId, code: err.code, reason: err.message, details: err.details }, 'billing refusal shown to a public visitor as UNAVAILABLE'),
        });
      },
    },
    plugins: [
      EnvelopArmorPlugin({
        maxDepth: { n: env.GRAPHQL_MAX_DEPTH },
        maxAliases: { n: env.GRAPHQL_MAX_ALIASES },
        maxTokens: { n: env.GRAPHQL_MAX_TOKENS },
        costLimit: { maxCost: env.GRAPHQL_MAX_COST },
        maxDirectives: { n: 50 },
        blockFieldSuggestion: { enabled: production },
      }),
      ...(production ? [disableIntrospection()] : []),
      validationErrorsAreBadInput(),
    ],
  });

  const ready = async (): Promise<{ ok: boolean; postgres: boolean; redis: boolean }> => {
    const [postgres, redis] = await Promise.all([
      deps.pool.query('SELECT 1').then(() => true, () => false),
      deps.redis.ping().then((r) => r === 'PONG', () => false),
    ]);
    return { ok: postgres && redis, postgres, redis };
  };

  const http = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
      return;
    }
    if (path === '/readyz') {
      ready().then(
        (r) => res.writeHead(r.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(r)),
        () => res.writeHead(503).end('{"ok":false}'),
      );
      return;
    }
    const given = req.headers['x-request-id'];
    const requestId = typeof given === 'string' && REQUEST_ID_RE.test(given) ? given : randomUUID();
    res.setHeader('x-request-id', requestId);
    requestScope.run({ requestId, publicAudience: false }, () => void yoga(req, res, { req, res }));
  });
  http.keepAliveTimeout = 65_000;

  return {
    http,
    listen: (port, host = env.HOST) =>
      new Promise((resolve, reject) => {
        http.once('error', reject);
        http.listen(port, host, () => {
          const address = http.address();
          resolve(typeof address === 'object' && address ? address.port : port);
        });
      }),
    close: () =>
      new Promise((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      }),
  };
}
