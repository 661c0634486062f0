/**
 * Server CPU per request, sequential (one client, no contention): starts server processes in
 * production mode against a fresh database (`creditpool_bench_srvcpu`, dropped at the end) and sends `--requests` recordUsage calls (one hot
 * account, or spread over `--accounts`) and `{ __typename }` calls one at a time, reading the
 * server process's CPU (/proc/<pid>/stat) around each block. `--variants A=ENV=1,B=` starts one
 * server per variant (environment `KEY:VALUE;KEY2:VALUE2`), alternating blocks `--rounds` times
 * after a warm-up round, so two settings compare on the same minutes; it prints the server's CPU
 * per request of each block (10 ms ticks over 2,000+ requests).
 *
 *   bash scripts/with-services.sh npx tsx bench/experiments/server-cpu-per-request.ts --variants group=CHARGE_PATH:group,naive=CHARGE_PATH:naive
 *
 * It measured the AsyncLocalStorage that src/server.ts used to enter per HTTP request (a
 * temporary switch, `CREDITPOOL_EXPERIMENT_NO_ALS:1`, skipped it; see bench/README.md).
 */
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';
import { DEFAULT_DATABASE_URL, startServer, type StartedServer } from '../../demo/server-process.js';
import { planReplay, llmQuantities } from '../../demo/plan.js';
import { demoPriceBook } from '../../demo/price-book.js';
import { applyMigrations } from '../../src/db/migrate.js';
import { createPerfClient } from '../perf/http.js';
import { CLK_TCK, cpuTicksOf } from '../perf/procstat.js';
import { dropDatabase, recreateDatabase } from '../perf/scratch-db.js';

const { values } = parseArgs({ options: { requests: { type: 'string', default: '2000' }, rounds: { type: 'string', default: '3' }, accounts: { type: 'string', default: '200' }, variants: { type: 'string', default: 'base=' } } });
const requests = Number(values.requests);
const rounds = Number(values.rounds);
const nAccounts = Number(values.accounts);
const variants = values.variants!.split(',').map((v) => {
  const [label, ...rest] = v.split('=');
  const envText = rest.join('=');
  const env: Record<string, string> = {};
  if (envText) for (const kv of envText.split(';')) env[kv.split(':')[0]!] = kv.split(':').slice(1).join(':');
  return { label: label!, env };
});

const base = process.env.DATABASE_URL || DEFAULT_DATABASE_URL;
const dbName = 'creditpool_bench_srvcpu';
const url = await recreateDatabase(base, dbName);
await applyMigrations(url);
const adminKey = `cp_admin_${randomBytes(16).toString('hex')}`;

const servers: { label: string; s: StartedServer }[] = [];
for (const v of variants) {
  const s = await startServer({ name: `srvcpu-${v.label}`, workers: false, env: { NODE_ENV: 'production', DATABASE_URL: url, ADMIN_API_KEY: adminKey, LOG_LEVEL: 'warn', RUN_WORKERS: 'false', MIGRATE_ON_BOOT: 'false', CHARGE_PATH: 'group', ...v.env } });
  servers.push({ label: v.label, s });
}
const trace = planReplay('azure');
try {
  const c0 = createPerfClient(servers[0]!.s.graphqlUrl, adminKey, 1);
  const pb = await c0.gql(`mutation($input: PriceBookInput!) { publishPriceBook(input: $input) { version } }`, { input: demoPriceBook('srvcpu') });
  if (pb.errorCode) throw new Error(pb.errors[0]?.message);
  const accounts: string[] = [];
  for (let i = 0; i < nAccounts; i++) {
    const r = await c0.gql<{ createAccount: { id: string } }>(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, { input: { externalId: `srvcpu-${i}`, name: `a${i}`, kind: 'ORGANIZATION', welcomeBonus: false } });
    const id = r.data!.createAccount.id;
    await c0.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, { input: { accountId: id, amount: '100000000', type: 'PAID', source: 'PURCHASE', idempotencyKey: `g-${i}` } });
    accounts.push(id);
  }
  c0.close();
  let seq = 0;
  const results: Record<string, Record<string, number[]>> = {};
  for (let round = 0; round <= rounds; round++) {
    for (const { label, s } of servers) {
      const c = createPerfClient(s.graphqlUrl, adminKey, 1);
      for (const kind of ['typename', 'recordUsage'] as const) {
        const n = round === 0 ? 300 : requests; // round 0 warms up
        const t0 = cpuTicksOf(s.pids.server)!;
        const w0 = performance.now();
        for (let i = 0; i < n; i++) {
          if (kind === 'typename') {
            await c.gql('{ __typename }');
          } else {
            const p = trace[seq % trace.length]!;
            const r = await c.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id cost } }`, {
              input: { accountId: accounts[seq % accounts.length], idempotencyKey: `k-${seq}`, category: 'llm', model: p.model, agentId: p.agentId, userId: p.userId, taskId: p.taskId, quantities: llmQuantities(p, p.outputTokens) },
            });
            seq++;
            if (r.errorCode) throw new Error(`${r.errorCode} ${r.errors[0]?.message}`);
          }
        }
        const cpuMs = ((cpuTicksOf(s.pids.server)! - t0) * 1000) / CLK_TCK / n;
        const wallMs = (performance.now() - w0) / n;
        if (round > 0) {
          ((results[label] ??= {})[kind] ??= []).push(cpuMs);
          console.log(`round ${round} ${label.padEnd(8)} ${kind.padEnd(12)} server CPU ${cpuMs.toFixed(3)} ms/request, wall ${wallMs.toFixed(3)} ms`);
        }
      }
      c.close();
    }
  }
  for (const [label, kinds] of Object.entries(results)) for (const [kind, xs] of Object.entries(kinds)) console.log(`${label.padEnd(8)} ${kind.padEnd(12)} server CPU ms/request: ${xs.map((x) => x.toFixed(3)).join(' / ')}`);
} finally {
  for (const { s } of servers) await s.stop();
  await dropDatabase(base, dbName);
}
