/**
 * `npm run bench`: throughput and latency of the charge hot path over GraphQL.
 *
 * Starts its own server (same as the demo: free loopback port, logs in .data/logs/bench-*.log)
 * against DATABASE_URL / REDIS_URL, publishes the demo price book, creates accounts with ample
 * PAID credit, then for each account setting (1 hot account, 1000 accounts) the chosen scenarios
 * (--scenarios, default single,batch):
 *   - single: recordUsage with N concurrent clients for S seconds: events/s, p50/p99/max latency;
 *   - batch: recordUsageBatch (100 events per call): events/s, p50/p99/max latency per batch;
 *   - job: N concurrent jobs, each reserveCredits -> recordUsage x3 against the hold (partial
 *     captures) -> settleReservation, as perf.ts scenario 4: events/s counts the 5 requests of a
 *     job, latency is per job. Alone (`--scenarios job`) it is what a CPU profile of the job path
 *     runs (CPU_PROFILE_DIR, see bench/README.md).
 * Token counts come from the real Azure 2023 trace (conv -> chat model, code -> code model).
 * Bounded: every scenario stops after --seconds or --max-ops operations, whichever is first.
 *
 * With --agent-budgets every agent of the trace gets a budget on every account (far above what it
 * spends), so every charge is checked against its agent's spending of the period and the accounts
 * charge with statements of their own instead of being decided in memory with their group.
 *
 * Usage: tsx bench/record-usage.ts [--concurrency 32] [--seconds 10] [--accounts 1|1000|N]
 *          [--batch-concurrency 4] [--batch-size 100] [--max-ops 1000000] [--scenarios single,batch,job]
 *          [--agent-budgets]
 * Environment: SERVER_NODE_ENV (default production) and SERVER_NODE_OPTIONS (node flags of the
 * server process only, e.g. `--max-semi-space-size=64`, for an A/B of runtime flags).
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { ensureCodegen, startServer, type StartedServer } from '../demo/server-process.js';
import { readThreadSched, schedWindow, type ThreadSchedWindow } from './perf/sched-stat.js';

interface Scenario {
  name: string;
  accounts: number;
  concurrency: number;
  ops: number;
  events: number;
  errors: Map<string, number>;
  seconds: number;
  latenciesMs: number[];
  kind: ScenarioKind;
  /** How the server's main thread shared the CPUs during the scenario (null without /proc). */
  serverThread?: ThreadSchedWindow | null;
}

/** What one scenario sends: single charges, batches of charges, or jobs (hold, 3 captures, settle). */
type ScenarioKind = 'single' | 'batch' | 'job';
const SCENARIO_KINDS: readonly ScenarioKind[] = ['single', 'batch', 'job'];

/** Nearest-rank percentile of an ascending-sorted array (ms); 0 for an empty one. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1] as number;
}

function usage(message: string): never {
  console.error(`${message}\nusage: tsx bench/record-usage.ts [--concurrency 32] [--seconds 10] [--accounts 1|1000] [--batch-concurrency 4] [--batch-size 100] [--max-ops N] [--scenarios single,batch,job] [--agent-budgets]`);
  process.exit(2);
}

function intOption(value: string | undefined, name: string, min: number, max: number): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) usage(`--${name} must be an integer in ${min}..${max}`);
  return n;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      concurrency: { type: 'string', default: '32' },
      seconds: { type: 'string', default: '10' },
      accounts: { type: 'string' },
      'batch-concurrency': { type: 'string', default: '4' },
      'batch-size': { type: 'string', default: '100' },
      'max-ops': { type: 'string', default: '1000000' },
      scenarios: { type: 'string', default: 'single,batch' },
      'agent-budgets': { type: 'boolean', default: false },
    },
  });
  const concurrency = intOption(values.concurrency, 'concurrency', 1, 512);
  const seconds = intOption(values.seconds, 'seconds', 1, 600);
  const accountSettings = values.accounts === undefined ? [1, 1000] : [intOption(values.accounts, 'accounts', 1, 10_000)];
  const batchConcurrency = intOption(values['batch-concurrency'], 'batch-concurrency', 1, 128);
  const batchSize = intOption(values['batch-size'], 'batch-size', 1, 1000);
  const maxOps = intOption(values['max-ops'], 'max-ops', 1, 10_000_000);
  const kinds = values.scenarios!.split(',').map((k) => k.trim());
  for (const k of kinds) if (!SCENARIO_KINDS.includes(k as ScenarioKind)) usage(`--scenarios takes a comma-separated list of ${SCENARIO_KINDS.join(', ')}`);

  await ensureCodegen();
  const gql = await import('../src/generated/graphql.js');
  const { createClient, errorCode } = await import('../src/client/graphql-client.js');
  const { planReplay } = await import('../demo/plan.js');
  const { demoPriceBook } = await import('../demo/price-book.js');

  console.log('Starting the creditpool server and workers (logs in .data/logs/bench-*.log) ...');
  let server: StartedServer | undefined;
  const onSignal = () => void (server?.stop(5_000) ?? Promise.resolve()).finally(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // As deployed and as bench/perf.ts runs it: NODE_ENV=production (SERVER_NODE_ENV=development
    // repeats the runs before 2026-12-05, which inherited the caller's unset NODE_ENV).
    // SERVER_NODE_OPTIONS: node flags for the server process only (A/B of e.g. --max-semi-space-size).
    const serverNodeOptions: Record<string, string> = process.env.SERVER_NODE_OPTIONS ? { NODE_OPTIONS: process.env.SERVER_NODE_OPTIONS } : {};
    server = await startServer({ name: 'bench', env: { NODE_ENV: process.env.SERVER_NODE_ENV ?? 'production', ...serverNodeOptions } });
    console.log(`Server ready at ${server.graphqlUrl} (loopback; the load generator shares this machine).`);
    const client = createClient({ url: server.graphqlUrl, token: server.adminKey });
    const runId = `bench-${Date.now().toString(36)}-${process.pid}`;
    await client.request(gql.PublishPriceBookDocument, { input: demoPriceBook(`creditpool bench ${runId}`) });

    const trace = planReplay('azure');
    console.log(`Token counts: ${trace.length.toLocaleString('en-US')} real requests of the Azure LLM inference trace 2023 (CC BY 4.0), cycled.`);

    // Accounts with ample credit, created with bounded parallelism.
    const maxAccounts = Math.max(...accountSettings);
    const accountIds: string[] = [];
    const tCreate = performance.now();
    let nextAccount = 0;
    await Promise.all(
      Array.from({ length: Math.min(16, maxAccounts) }, async () => {
        while (nextAccount < maxAccounts) {
          const i = nextAccount++;
          const a = await client.request(gql.CreateAccountDocument, { input: { externalId: `${runId}-acct-${i}`, name: `bench account ${i}`, kind: 'ORGANIZATION', welcomeBonus: false } });
          await client.request(gql.GrantCreditsDocument, {
            input: { accountId: a.createAccount.id, amount: '100000000', type: 'PAID', source: 'PURCHASE', idempotencyKey: `${runId}-grant-${i}` },
          });
          accountIds[i] = a.createAccount.id;
        }
      }),
    );
    console.log(`Created ${maxAccounts.toLocaleString('en-US')} account(s) with 100,000,000 PAID credits each in ${((performance.now() - tCreate) / 1000).toFixed(1)} s.`);
    if (values['agent-budgets']) {
      // Every agent of the trace gets a budget (far above what it spends) on every account, so
      // every charge is checked against its agent's spending of the period.
      const { parse } = await import('graphql');
      const setBudget = parse('mutation($a: ID!, $g: String!, $l: Credits) { setAgentBudget(accountId: $a, agentId: $g, limit: $l) { agentId } }') as never;
      const agents = [...new Set(trace.map((p) => p.agentId))];
      for (const accountId of accountIds) for (const agentId of agents) await client.request(setBudget, { a: accountId, g: agentId, l: '1000000000' } as never);
      console.log(`Set a budget of 1,000,000,000 credits for each of ${agents.length} agents on every account (--agent-budgets).`);
    }

    let seq = 0;
    const inputFor = (accounts: number, tag: string) => {
      const n = seq++;
      const p = trace[n % trace.length]!;
      return {
        accountId: accountIds[n % accounts]!,
        idempotencyKey: `${runId}:${tag}:${n}`,
        category: 'llm',
        model: p.model,
        agentId: p.agentId,
        userId: p.userId,
        taskId: p.taskId,
        quantities: { inputTokens: p.inputTokens, outputTokens: p.outputTokens },
      };
    };

    // Warm-up (JIT, connection pools, prepared statements): not measured.
    await Promise.all(Array.from({ length: 8 }, async () => {
      for (let k = 0; k < 25; k++) await client.requestRaw(gql.RecordUsageLeanDocument, { input: inputFor(1, 'warmup') });
    }));

    const run = async (name: string, accounts: number, conc: number, kind: ScenarioKind): Promise<Scenario> => {
      const s: Scenario = { name, accounts, concurrency: conc, ops: 0, events: 0, errors: new Map(), seconds: 0, latenciesMs: [], kind };
      const note = (code: string) => s.errors.set(code, (s.errors.get(code) ?? 0) + 1);
      const t0 = performance.now();
      const deadline = t0 + seconds * 1000;
      const schedBefore = readThreadSched(server!.pids.server);
      let started = 0;
      await Promise.all(
        Array.from({ length: conc }, async () => {
          while (performance.now() < deadline && started < maxOps) {
            started++;
            const tag = `${name}-${accounts}`;
            const t = performance.now();
            try {
              if (kind === 'job') {
                const base = inputFor(accounts, tag);
                const hold = await client.request(gql.ReserveCreditsDocument, {
                  input: { accountId: base.accountId, amount: '1', ttlSeconds: 300, idempotencyKey: `${base.idempotencyKey}:hold` },
                });
                const reservationId = hold.reserveCredits.id;
                const out1 = Math.floor(base.quantities.outputTokens / 3);
                const out2 = Math.floor(base.quantities.outputTokens / 3);
                const parts = [
                  { ...base, idempotencyKey: `${base.idempotencyKey}:part1`, reservationId, quantities: { ...base.quantities, outputTokens: out1 } },
                  { ...base, idempotencyKey: `${base.idempotencyKey}:part2`, reservationId, quantities: { outputTokens: out2 } },
                  { ...base, idempotencyKey: `${base.idempotencyKey}:part3`, reservationId, quantities: { outputTokens: base.quantities.outputTokens - out1 - out2 } },
                ];
                for (const input of parts) await client.request(gql.RecordUsageLeanDocument, { input });
                const settled = await client.request(gql.SettleReservationDocument, { input: { reservationId, usage: [] } });
                if (settled.settleReservation.status !== 'SETTLED') note(`SETTLE_${settled.settleReservation.status}`);
                else s.events += 5;
              } else if (kind === 'batch') {
                const inputs = Array.from({ length: batchSize }, () => inputFor(accounts, tag));
                const r = await client.request(gql.RecordUsageBatchLeanDocument, { inputs });
                for (const item of r.recordUsageBatch) {
                  if (item.event) s.events++;
                  else note(item.errorCode ?? 'NO_CODE');
                }
              } else {
                await client.request(gql.RecordUsageLeanDocument, { input: inputFor(accounts, tag) });
                s.events++;
              }
              s.latenciesMs.push(performance.now() - t);
              s.ops++;
            } catch (e) {
              note(errorCode(e) ?? 'CLIENT');
            }
          }
        }),
      );
      s.seconds = (performance.now() - t0) / 1000;
      s.serverThread = schedWindow(schedBefore, readThreadSched(server!.pids.server));
      s.latenciesMs.sort((a, b) => a - b);
      const errs = [...s.errors].map(([c, n]) => `${c} x${n}`).join(', ') || 'none';
      console.log(
        `  ${name.padEnd(16)} accounts=${String(accounts).padEnd(5)} conc=${String(conc).padEnd(3)} ${Math.round(s.events / s.seconds).toLocaleString('en-US').padStart(7)} events/s  ` +
          `p50 ${percentile(s.latenciesMs, 50).toFixed(1)} ms  p99 ${percentile(s.latenciesMs, 99).toFixed(1)} ms  errors: ${errs}`,
      );
      const w = s.serverThread;
      if (w) {
        console.log(
          `  ${''.padEnd(16)} server's JavaScript thread: on a CPU ${w.runningPercent} %, waiting for a CPU ${w.waitingPercent} %, blocked ${w.blockedPercent} %; ` +
            `preempted ${w.involuntaryPerSecond.toLocaleString('en-US')}/s, blocked ${w.voluntaryPerSecond.toLocaleString('en-US')}/s`,
        );
      }
      return s;
    };

    console.log(`Measuring (${seconds} s per scenario, at most ${maxOps.toLocaleString('en-US')} operations each) ...`);
    const results: Scenario[] = [];
    for (const accounts of accountSettings) {
      if (kinds.includes('single')) results.push(await run('recordUsage', accounts, concurrency, 'single'));
      if (kinds.includes('batch')) results.push(await run(`recordUsageBatch`, accounts, batchConcurrency, 'batch'));
      if (kinds.includes('job')) results.push(await run('job', accounts, concurrency, 'job'));
    }

    // The hot account must still reconcile after all that.
    const rec = await client.request(gql.AccountSummaryDocument, { id: accountIds[0]!, ledgerFirst: 1 });
    const r = rec.account?.reconciliation;

    console.log('');
    console.log(`recordUsage / recordUsageBatch over GraphQL, loopback, ${seconds} s per scenario (latency = one HTTP round trip; per batch of ${batchSize} for recordUsageBatch; per job of 5 requests for job)`);
    const header = ['operation', 'accounts', 'clients', 'ops', 'events', 'events/s', 'p50 ms', 'p99 ms', 'max ms', 'errors'];
    const rows = results.map((s) => [
      s.kind === 'batch' ? `recordUsageBatch(${batchSize})` : s.kind === 'job' ? 'job (5 requests)' : 'recordUsage',
      s.accounts.toLocaleString('en-US'),
      String(s.concurrency),
      s.ops.toLocaleString('en-US'),
      s.events.toLocaleString('en-US'),
      Math.round(s.events / s.seconds).toLocaleString('en-US'),
      percentile(s.latenciesMs, 50).toFixed(1),
      percentile(s.latenciesMs, 99).toFixed(1),
      (s.latenciesMs.at(-1) ?? 0).toFixed(1),
      String([...s.errors.values()].reduce((a, b) => a + b, 0)),
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
    const line = (cells: string[]) => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
    console.log(line(header));
    console.log('|' + widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|');
    for (const row of rows) console.log(line(row));
    console.log(`hot account ledger invariant holds: ${r?.consistent ? 'yes' : 'no'} (total ${r?.total}, ledger sum ${r?.ledgerSum})`);
    const errors = results.reduce((a, s) => a + [...s.errors.values()].reduce((x, y) => x + y, 0), 0);
    return r?.consistent && errors === 0 ? 0 : 1;
  } catch (e) {
    console.error(`bench failed: ${(e as Error).message}`);
    return 1;
  } finally {
    await server?.stop();
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
