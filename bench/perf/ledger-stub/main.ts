/**
 * The ledger-stub server (bench/perf.ts rows 1c and 1d): the product's API process (src/main.ts,
 * same environment, same HTTP, GraphQL, auth, limits and input validation) whose `recordUsage`
 * and `recordUsageBatch` mutations call bench/perf/ledger-stub/record-usage.ts instead of the
 * charge services: no pricing, no database work, no outbox. What it answers per second is "the
 * GraphQL request around" a charge (issue #6, target (2b)) measured with the very requests the
 * (2b) and (3) rows send, instead of `{ __typename }`.
 *
 * Usage: node --import tsx bench/perf/ledger-stub/main.ts (started by bench/perf.ts through
 * demo/server-process.ts `serverEntry`).
 */
import { register } from 'node:module';

register('./hooks.mjs', import.meta.url, { data: { stubUrl: new URL('./record-usage.ts', import.meta.url).href } });
await import('../../../src/main.js');
