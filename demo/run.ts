/**
 * `npm run demo`: starts the creditpool API and its workers on a free loopback port, replays a
 * real LLM request trace through the GraphQL API (demo/replay.ts), prints the summary and
 * stops the server. Exit status 0 when every check passed (ledger invariant, client totals ==
 * API totals), 1 otherwise.
 *
 * Usage: tsx demo/run.ts [--limit N] [--trace azure|mooncake] [--concurrency N] [--keep]
 *   --keep  leave the server running afterwards and print its URL and admin key.
 * Environment: DATABASE_URL, REDIS_URL (default 127.0.0.1), ADMIN_API_KEY (generated if unset).
 */
import { parseArgs } from 'node:util';
import { ensureCodegen, startServer, type StartedServer } from './server-process.js';
import type { LiveBar } from './live-bar.js';

function usage(message: string): never {
  console.error(`${message}\nusage: tsx demo/run.ts [--limit N] [--trace azure|mooncake] [--concurrency N] [--keep]`);
  process.exit(2);
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      limit: { type: 'string' },
      trace: { type: 'string', default: 'azure' },
      concurrency: { type: 'string', default: '4' },
      keep: { type: 'boolean', default: false },
    },
  });
  const trace = values.trace;
  if (trace !== 'azure' && trace !== 'mooncake') usage(`--trace must be azure or mooncake, not ${trace}`);
  const limit = values.limit === undefined ? undefined : Number(values.limit);
  if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) usage(`--limit must be a positive integer`);
  const concurrency = Number(values.concurrency);
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 256) usage('--concurrency must be an integer in 1..256');

  await ensureCodegen();
  const { runReplay } = await import('./replay.js');
  const { openLiveBar } = await import('./live-bar.js');
  const { createClient } = await import('../src/client/graphql-client.js');

  console.log('Starting the creditpool server and workers (logs in .data/logs/demo-*.log) ...');
  const t0 = Date.now();
  let server: StartedServer | undefined;
  const onSignal = (sig: NodeJS.Signals) => {
    console.error(`\n${sig}: stopping the server`);
    void (server?.stop(5_000) ?? Promise.resolve()).finally(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    server = await startServer({ name: 'demo', detached: values.keep });
    console.log(`Server ready at ${server.graphqlUrl} after ${((Date.now() - t0) / 1000).toFixed(1)} s.`);
    const client = createClient({ url: server.graphqlUrl, token: server.adminKey });
    let bar: LiveBar | null = null;
    const report = await runReplay(client, {
      trace,
      limit,
      concurrency,
      // A live credit bar (WebSocket subscription) watches the account during the whole replay.
      onAccountCreated: async (accountId) => {
        bar = await openLiveBar(server!.graphqlUrl, server!.adminKey, accountId);
      },
      onFinalBalance: async (balance) => {
        if (!bar) return { lines: [], failures: ['the live credit bar never subscribed'] };
        const failures: string[] = [];
        try {
          await bar.waitForVersion(balance.version);
        } catch (e) {
          failures.push((e as Error).message);
        }
        const r = bar.report();
        await bar.close();
        if (r.gaps > 0 || r.backwards > 0) failures.push(`live credit bar: ${r.gaps} version gaps, ${r.backwards} out of order`);
        if (r.lastVersion !== balance.version || r.lastAvailable !== balance.available) {
          failures.push(`live credit bar ended at version ${r.lastVersion} (${r.lastAvailable}), the API says ${balance.version} (${balance.available})`);
        }
        const lat = r.latencyMs ? `; latency from the charge's commit timestamp to receipt p50 ${r.latencyMs.p50} ms, p99 ${r.latencyMs.p99} ms, max ${r.latencyMs.max} ms` : '';
        return {
          lines: [
            `Live credit bar (balanceChanged over WebSocket, subscribed before the first charge): ${r.updates.toLocaleString('en-US')} updates, ` +
              `${r.gaps} gaps, ${r.backwards} out of order; last = version ${r.lastVersion}, available ${r.lastAvailable} ` +
              `(${r.lastVersion === balance.version && r.lastAvailable === balance.available ? 'equals' : 'DIFFERS FROM'} the API)${lat}.`,
          ],
          failures,
        };
      },
    });
    if (values.keep) {
      server.detach();
      console.log('');
      console.log(`--keep: the server keeps running at ${server.graphqlUrl}`);
      console.log(`  admin key: ${server.adminKey}`);
      console.log(`  demo account id: ${report.accountId}`);
      console.log(`  stop it with: kill ${server.pids.server}${server.pids.workers ? ` ${server.pids.workers}` : ''}`);
    }
    return report.ok ? 0 : 1;
  } catch (e) {
    console.error(`demo failed: ${(e as Error).message}`);
    return 1;
  } finally {
    if (server && !values.keep) await server.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
