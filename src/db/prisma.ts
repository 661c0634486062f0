/**
 * The Prisma client (Prisma 7, `prisma-client` generator, driver adapter @prisma/adapter-pg).
 * Used for reads and the GraphQL layer's selections; money-moving writes use src/db/pg.ts.
 */
import { PrismaPg } from '@prisma/adapter-pg';
import { PrismaClient } from '../generated/prisma/client.js';
import { TCP_KEEPALIVE_INITIAL_DELAY_MS, withPlannerOptions, type LedgerSessionLimits } from './pg.js';

/**
 * Creates a Prisma client on `databaseUrl` with at most `max` connections and the client-side
 * `limits` of db/pg.ts (the processes pass `ledgerSessionLimits(env)`; 0 or absent = none):
 * - `connectTimeoutMs` (PG_CONNECT_TIMEOUT_MS, pg-pool `connectionTimeoutMillis`): a query waits
 *   at most this long for a connection (a new one, or a free one of a busy pool);
 * - `queryTimeoutMs` (PG_QUERY_TIMEOUT_MS, node-postgres `query_timeout`): a query unanswered
 *   this long fails. The adapter runs its queries with `pool.query`, which releases the
 *   connection with the error, so pg-pool closes it and the next query gets a new one.
 * Either failure is a connection error that the API answers as UNAVAILABLE (db/pg.ts
 * `isDatabaseUnavailable`). Its connections use TCP keepalive as the ledger pool's do
 * ({@link TCP_KEEPALIVE_INITIAL_DELAY_MS}), and the ledger pool's planner cost
 * (db/pg.ts withPlannerOptions: random_page_cost 1.1, unless the URL sets its own).
 */
export function createPrismaClient(databaseUrl: string, max = 10, limits: Pick<LedgerSessionLimits, 'connectTimeoutMs' | 'queryTimeoutMs'> = {}): PrismaClient {
  return new PrismaClient({
    adapter: new PrismaPg({
      connectionString: withPlannerOptions(databaseUrl),
      max,
      keepAlive: true,
      keepAliveInitialDelayMillis: TCP_KEEPALIVE_INITIAL_DELAY_MS,
      ...(limits.connectTimeoutMs ? { connectionTimeoutMillis: limits.connectTimeoutMs } : {}),
      ...(limits.queryTimeoutMs ? { query_timeout: limits.queryTimeoutMs } : {}),
    }),
  });
}

/** The generated Prisma client class (re-exported for typing). */
export type { PrismaClient };
