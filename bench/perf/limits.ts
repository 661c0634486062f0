/**
 * The limits of the perf bench (issue #6, scenario 1):
 *   (a) pgbench on a scratch database of the same PostgreSQL server: per transaction ONE
 *       statement (a CTE) that updates one account row and inserts one event row, on one hot row
 *       or on random rows of 10,000;
 *   (b) autocannon against the creditpool server answering `{ __typename }` over POST /graphql
 *       with keep-alive connections (the cost of HTTP + GraphQL + auth with no database work).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { latencyStats, round, type LoadResult } from './load.js';
import { withCpu, type CpuUsage } from './procstat.js';
import { dropDatabase, recreateDatabase, withDatabase } from './scratch-db.js';

/** Scratch database of the pgbench runs (dropped and re-created by each run). */
export const PGBENCH_DATABASE = 'creditpool_bench_perf_pgbench';

/** Rows of the scratch `acct` table. */
export const PGBENCH_ACCOUNTS = 10_000;

/** The pgbench custom script: one statement per transaction, `:naccounts` 1 = one hot row. */
export const PGBENCH_SCRIPT = `\\set aid random(1, :naccounts)
\\set amt random(1000, 100000)
WITH u AS (UPDATE acct SET balance = balance - :amt, version = version + 1 WHERE id = :aid RETURNING id) INSERT INTO ev (acct_id, amount) SELECT id, :amt FROM u;
`;

/** One pgbench or autocannon run. */
export interface LimitRun extends LoadResult {
  cpu: CpuUsage;
  /** The command line that was run (credentials left out). */
  command: string;
}


/** Path of the pgbench binary: PATH first, then the PostgreSQL 15 / newest installed bin dir. */
export function findPgbench(): string | null {
  for (const dir of (process.env.PATH ?? '').split(':')) if (dir && existsSync(join(dir, 'pgbench'))) return join(dir, 'pgbench');
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return null;
  const versions = readdirSync(base).sort((a, b) => Number(b) - Number(a));
  for (const v of ['15', ...versions]) if (existsSync(join(base, v, 'bin/pgbench'))) return join(base, v, 'bin/pgbench');
  return null;
}

/** Drops and re-creates the pgbench scratch database with its two tables. */
export async function preparePgbenchDatabase(serverUrl: string): Promise<void> {
  const c = new pg.Client({ connectionString: await recreateDatabase(serverUrl, PGBENCH_DATABASE) });
  await c.connect();
  try {
    await c.query('CREATE TABLE acct (id int PRIMARY KEY, balance bigint NOT NULL, version bigint NOT NULL DEFAULT 0)');
    await c.query(`INSERT INTO acct SELECT g, 1000000000000, 0 FROM generate_series(1, ${PGBENCH_ACCOUNTS}) g`);
    await c.query('CREATE TABLE ev (id bigserial PRIMARY KEY, acct_id int NOT NULL, amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())');
    await c.query('VACUUM ANALYZE acct');
  } finally {
    await c.end();
  }
}

/** Drops the pgbench scratch database. */
export async function dropPgbenchDatabase(serverUrl: string): Promise<void> {
  await dropDatabase(serverUrl, PGBENCH_DATABASE);
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv, onSpawn: (pid: number | null) => void): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    onSpawn(child.pid ?? null);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * Runs pgbench with the custom script: `-c clients -j 2 -T seconds -n -f script.sql -M prepared`,
 * with per-transaction logging (-l) for latency percentiles.
 * @param rows 1 for the hot row, {@link PGBENCH_ACCOUNTS} for random rows
 * @throws Error when pgbench fails
 */
export async function runPgbench(pgbench: string, serverUrl: string, rows: number, clients: number, seconds: number): Promise<LimitRun> {
  const dir = mkdtempSync(join(tmpdir(), 'perf-pgbench-'));
  try {
    const script = join(dir, 'script.sql');
    writeFileSync(script, PGBENCH_SCRIPT);
    const u = new URL(serverUrl);
    const args = [
      '-h', u.hostname, '-p', u.port || '5432', '-U', decodeURIComponent(u.username || 'postgres'),
      '-c', String(clients), '-j', '2', '-T', String(seconds), '-n', '-f', script, '-M', 'prepared',
      '-D', `naccounts=${rows}`, '-l', `--log-prefix=${join(dir, 'log')}`, PGBENCH_DATABASE,
    ];
    const env = { ...process.env, ...(u.password ? { PGPASSWORD: decodeURIComponent(u.password) } : {}) };
    const { result: out, cpu } = await withCpu(null, (sampler) => run(pgbench, args, env, (pid) => sampler.setTool(pid)));
    if (out.code !== 0) throw new Error(`pgbench exited ${out.code}: ${out.stderr.slice(-2000)}`);
    const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(out.stdout)?.[1] ?? NaN);
    const processed = Number(/number of transactions actually processed: (\d+)/.exec(out.stdout)?.[1] ?? 0);
    const failed = Number(/number of failed transactions: (\d+)/.exec(out.stdout)?.[1] ?? 0);
    const latencies: number[] = [];
    for (const f of readdirSync(dir)) {
      if (!f.startsWith('log')) continue;
      for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) {
        const us = Number(line.split(' ')[2]);
        if (Number.isFinite(us) && line) latencies.push(us / 1000);
      }
    }
    return {
      concurrency: clients,
      seconds,
      ops: processed,
      units: processed,
      unitsPerSecond: round(tps, 1),
      latencyMs: latencyStats(latencies),
      errors: failed ? { FAILED_TX: failed } : {},
      errorCount: failed,
      cpu,
      command: `pgbench ${args.map((a) => (a.startsWith('--log-prefix') ? '-l' : a.includes(dir) ? 'script.sql' : a)).join(' ')}`,
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Runs autocannon (node_modules/autocannon, a child process so it has its own event loop)
 * against `graphqlUrl` with `{ __typename }` at `connections` keep-alive connections.
 * @throws Error when autocannon is not installed or fails
 */
export async function runAutocannon(root: string, graphqlUrl: string, token: string, connections: number, seconds: number, serverPid: number): Promise<LimitRun> {
  const bin = join(root, 'node_modules/autocannon/autocannon.js');
  if (!existsSync(bin)) throw new Error('autocannon is not installed (npm install)');
  const body = JSON.stringify({ query: '{ __typename }' });
  const args = [
    bin, '-c', String(connections), '-d', String(seconds), '-m', 'POST', '-j', '-n',
    '-H', 'content-type=application/json', '-H', `authorization=Bearer ${token}`, '-b', body, graphqlUrl,
  ];
  const { result: out, cpu } = await withCpu(serverPid, (sampler) => run(process.execPath, args, process.env, (pid) => sampler.setTool(pid)));
  if (out.code !== 0) throw new Error(`autocannon exited ${out.code}: ${out.stderr.slice(-2000)}`);
  const r = JSON.parse(out.stdout) as {
    requests: { average: number; total: number };
    latency: { p50: number; p90: number; p97_5: number; p99: number; max: number; average: number };
    errors: number;
    timeouts: number;
    non2xx: number;
    '2xx': number;
    duration: number;
  };
  const errors: Record<string, number> = {};
  if (r.errors) errors.NETWORK_ERROR = r.errors;
  if (r.timeouts) errors.TIMEOUT = r.timeouts;
  if (r.non2xx) errors.NON_2XX = r.non2xx;
  const ok = r['2xx'];
  return {
    concurrency: connections,
    seconds: round(r.duration, 2),
    ops: r.requests.total,
    units: ok,
    unitsPerSecond: round(ok / r.duration, 1),
    // autocannon reports p50/p90/p97.5/p99; p95 is not among them (p97.5 shown instead).
    latencyMs: { p50: r.latency.p50, p95: r.latency.p97_5, p99: r.latency.p99, max: r.latency.max, mean: r.latency.average },
    errors,
    errorCount: (r.errors ?? 0) + (r.timeouts ?? 0) + (r.non2xx ?? 0),
    cpu,
    command: `autocannon -c ${connections} -d ${seconds} -m POST -H content-type=application/json -H 'authorization=Bearer <admin key>' -b '${body}' ${graphqlUrl}`,
  };
}
