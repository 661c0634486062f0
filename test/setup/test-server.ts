/**
 * A real creditpool server (the same buildServer as production) on a free loopback port,
 * against the test database and the real Redis. For API tests over HTTP.
 */
import { randomUUID } from 'node:crypto';
import type { DestinationStream } from 'pino';
import { afterAll, beforeAll } from 'vitest';
import { createLogger } from '../../src/logging.js';
import { Redis } from 'ioredis';
import { parseEnv } from '../../src/config/env.js';
import { ledgerSessionLimits, withPlannerOptions } from '../../src/db/pg.js';
import pg from 'pg';
import { PrismaPg } from '@prisma/adapter-pg';
import { createPrismaClient } from '../../src/db/prisma.js';
import { PrismaClient } from '../../src/generated/prisma/client.js';
import { createAuthenticator } from '../../src/auth/authenticator.js';
import { buildServer } from '../../src/server.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { applyCharge, chargeAccounts } from '../../src/services/record-usage.js';
import { createPaymentProvider } from '../../src/payments/index.js';
import { createTestServices, type TestServices } from './services.js';
import { DepletionAlerts } from '../../src/services/depletion-alerts.js';
import { RefusalTopUps } from '../../src/services/refusal-top-ups.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from './env.js';

/** A running test server. */
export interface TestServer {
  url: string;
  adminKey: string;
  jwtSecret: string;
  services: TestServices;
  /** The server's HTTP server (its sockets carry the WebSockets and SSE streams too). */
  http: import('node:http').Server;
  /** POSTs a GraphQL operation with `token` (default: the admin key; null: no header). */
  gql<T = any>(query: string, variables?: Record<string, unknown>, token?: string | null): Promise<{ status: number; body: { data?: T; errors?: Array<{ message: string; extensions?: { code?: string } }> } }>;
  close(): Promise<void>;
}

/**
 * Options of {@link startTestServer} that are not environment variables.
 * - `logDestination`: see below.
 * - `onPrismaQuery`: called with the model and operation of every query the server's Prisma
 *   client (the GraphQL read layer) runs, before it runs; for tests that count the database work
 *   behind an answer (e.g. that another tenant's id costs what an id of nothing costs).
 */
export interface TestServerOptions {
  onPrismaQuery?: (model: string | undefined, operation: string) => void;
  /**
   * Called with the text and values of every SQL statement the server's Prisma client sends
   * (outside its transactions), before it is sent: for tests that replay a field's statements to
   * count the rows they read (test/api/pagination-cost-audit.test.ts). Given, the Prisma client
   * runs on a pg.Pool of its own made here with the production client's session settings
   * (db/pg.ts withPlannerOptions; plan_cache_mode=auto, unnamed statements); the client-side
   * limits of createPrismaClient do not apply to it.
   */
  onPrismaSql?: (text: string, values: readonly unknown[]) => void;
  /** Where the server's log lines go (the process's logger, src/logging.ts; LOG_LEVEL decides which), for tests that read the log; default stdout. */
  logDestination?: DestinationStream;
}

/**
 * A Prisma client on its own pool of 5 connections to `databaseUrl` whose pool.query tells
 * `observe` each statement's text and values first (@prisma/adapter-pg runs its queries outside
 * transactions with pool.query({ text, values, ... })). The pool is the caller's to end
 * (`onEnd` gets its end): Prisma's $disconnect leaves a pool it was given open, and its idle
 * connections then fail with an uncaught error when their database is dropped.
 */
function observedPrismaClient(databaseUrl: string, observe: (text: string, values: readonly unknown[]) => void, onEnd: (end: () => Promise<void>) => void): PrismaClient {
  const pool = new pg.Pool({ connectionString: withPlannerOptions(databaseUrl), max: 5 });
  onEnd(() => pool.end());
  const query = pool.query.bind(pool) as (...args: unknown[]) => unknown;
  (pool as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
    const q = args[0] as string | { text: string; values?: unknown[] };
    if (typeof q === 'string') observe(q, (args[1] as unknown[] | undefined) ?? []);
    else observe(q.text, q.values ?? []);
    return query(...args);
  };
  return new PrismaClient({ adapter: new PrismaPg(pool) });
}

/** Starts a server; call close() in afterAll. */
export async function startTestServer(overrides: Record<string, string> = {}, options: TestServerOptions = {}): Promise<TestServer> {
  const adminKey = 'test-admin-key-0123456789abcdef';
  const jwtSecret = 'test-jwt-secret-0123456789abcdef0123456789';
  const env = parseEnv({
    NODE_ENV: 'test',
    DATABASE_URL: TEST_DATABASE_URL,
    REDIS_URL: TEST_REDIS_URL,
    ADMIN_API_KEY: adminKey,
    JWT_SECRET: jwtSecret,
    HOST: '127.0.0.1',
    LOG_LEVEL: 'silent',
    // Each server counts rate-limit points under its own keys, so test files running in parallel
    // on the shared Redis never spend each other's budgets (tests that share one pass it).
    RATE_LIMIT_KEY_PREFIX: `creditpool-test:ratelimit:${randomUUID()}`,
    ...overrides,
  });
  const log = createLogger({ level: env.LOG_LEVEL, destination: options.logDestination });
  const services = createTestServices(20, env.DATABASE_URL, ledgerSessionLimits(env));
  services.payments = createPaymentProvider(env);
  services.depletionAlerts = new DepletionAlerts(); // as src/main.ts
  services.refusalTopUps = new RefusalTopUps();
  if (env.CHARGE_PATH === 'group') services.groupCommit = new GroupCommitter(services.pool, services.clock, chargeAccounts, applyCharge, { maxTransactions: env.GROUP_COMMIT_MAX_TRANSACTIONS, carryState: env.GROUP_COMMIT_CARRY_STATE });
  let endObservedPool = async (): Promise<void> => undefined;
  const prisma = options.onPrismaSql
    ? observedPrismaClient(env.DATABASE_URL, options.onPrismaSql, (end) => (endObservedPool = end))
    : createPrismaClient(env.DATABASE_URL, 5, ledgerSessionLimits(env));
  const onQuery = options.onPrismaQuery;
  // The extended client runs every query as the plain one does, after telling onQuery about it.
  const served = onQuery
    ? (prisma.$extends({
        query: {
          async $allOperations({ model, operation, args, query }) {
            onQuery(model, operation);
            return query(args);
          },
        },
      }) as unknown as typeof prisma)
    : prisma;
  const redis = new Redis(env.REDIS_URL, { maxRetriesPerRequest: 3 });
  const authenticator = createAuthenticator({ pool: services.pool, adminApiKey: adminKey, jwtSecret });
  const server = buildServer({ env, log, pool: services.pool, prisma: served, redis, services, authenticator });
  const port = await server.listen(0, '127.0.0.1');
  const url = `http://127.0.0.1:${port}/graphql`;
  return {
    url,
    http: server.http,
    adminKey,
    jwtSecret,
    services,
    async gql(query, variables = {}, token = adminKey) {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(token === null ? {} : { authorization: `Bearer ${token}` }) },
        body: JSON.stringify({ query, variables }),
      });
      return { status: res.status, body: (await res.json()) as any };
    },
    async close() {
      await server.close();
      await Promise.allSettled([services.close(), prisma.$disconnect().then(endObservedPool), redis.quit()]);
    },
  };
}

/**
 * Registers the vitest hooks of a test file's server: beforeAll starts it
 * ({@link startTestServer} with `overrides` and `options`); afterAll sets its services' clock
 * back to real time and closes it (nothing when beforeAll failed).
 * @returns the file's server, made at once: each member reads or calls that of the server
 * beforeAll started.
 * @throws Error (from a member) when used before beforeAll ran, e.g. at the top of the file.
 */
export function useTestServer(overrides: Record<string, string> = {}, options: TestServerOptions = {}): TestServer {
  let current: TestServer | undefined;
  beforeAll(async () => {
    current = await startTestServer(overrides, options);
  });
  afterAll(async () => {
    current?.services.setNow(null);
    await current?.close();
  });
  const started = (): TestServer => {
    if (!current) throw new Error('useTestServer: the server is started in beforeAll; use it inside a test or hook');
    return current;
  };
  return {
    get url() {
      return started().url;
    },
    get adminKey() {
      return started().adminKey;
    },
    get jwtSecret() {
      return started().jwtSecret;
    },
    get services() {
      return started().services;
    },
    get http() {
      return started().http;
    },
    gql: (query, variables, token) => started().gql(query, variables, token),
    close: () => started().close(),
  };
}
