/**
 * The Prisma client (Prisma 7, `prisma-client` generator, driver adapter @prisma/adapter-pg).
 * Used for reads and the GraphQL layer's selections; money-moving writes use src/db/pg.ts.
 */
import { PrismaPg } from '@prisma/adapter-pg';
import { PrismaClient } from '../generated/prisma/client.js';

/** Creates a Prisma client on `databaseUrl` with at most `max` connections. */
export function createPrismaClient(databaseUrl: string, max = 10): PrismaClient {
  return new PrismaClient({ adapter: new PrismaPg({ connectionString: databaseUrl, max }) });
}

/** The generated Prisma client class (re-exported for typing). */
export type { PrismaClient };
