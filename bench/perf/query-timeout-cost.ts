/**
 * What node-postgres' `query_timeout` (PG_QUERY_TIMEOUT_MS: one timer per statement) costs the
 * ledger pool: 20,000 prepared `SELECT $1` statements, 4 pipelined at a time on one connection,
 * with and without the client-side timeouts, alternating 3 times. Prints wall time and this
 * process's CPU (user + system) per statement, in microseconds.
 *
 * Usage: bash scripts/with-services.sh npx tsx bench/perf/query-timeout-cost.ts
 */
import { createPgPool, type LedgerSessionLimits } from '../../src/db/pg.js';

const DATABASE_URL = process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/creditpool';
const STATEMENTS = 20_000;

async function run(label: string, limits: LedgerSessionLimits): Promise<void> {
  const pool = createPgPool(DATABASE_URL, 1, limits);
  const client = await pool.connect();
  const select = (n: number) => client.query({ name: 'timeout-cost', text: 'SELECT $1::int AS n', values: [n] });
  try {
    for (let i = 0; i < 2_000; i++) await select(i); // warm-up: JIT, the prepared statement
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    for (let i = 0; i < STATEMENTS; i += 4) await Promise.all([select(i), select(i + 1), select(i + 2), select(i + 3)]);
    const wallMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    console.log(`${label}  wall ${((wallMs * 1000) / STATEMENTS).toFixed(1)} us/statement  node CPU ${((cpu.user + cpu.system) / STATEMENTS).toFixed(1)} us/statement`);
  } finally {
    client.release();
    await pool.end();
  }
}

for (let round = 0; round < 3; round++) {
  await run('without timeouts', {});
  await run('with timeouts   ', { queryTimeoutMs: 45_000, connectTimeoutMs: 10_000 });
}
