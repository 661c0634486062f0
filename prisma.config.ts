/**
 * Prisma CLI configuration (Prisma 7 reads the datasource URL from here, no longer from
 * schema.prisma). Only the Prisma CLI uses it, e.g. `prisma migrate deploy` on a machine with
 * internet access. Offline, use `npm run db:generate`, `npm run db:migrate` and
 * `npm run db:diff`, which do not need it. DATABASE_URL may be unset for `prisma generate`.
 */
import { defineConfig } from 'prisma/config';

export default defineConfig({
  schema: 'prisma/schema.prisma',
  migrations: { path: 'prisma/migrations', seed: 'tsx prisma/seed.ts' },
  datasource: { url: process.env.DATABASE_URL },
});
