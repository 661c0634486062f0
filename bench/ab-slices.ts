/**
 * A/B of the server's own cost per trivial request: several server processes started side by
 * side (each from its own checkout and database, with its own environment), then `{ __typename }`
 * at 8 connections (autocannon, keep-alive) in 2 s slices, round robin, the order reversed every
 * other round, so the machine's drift falls on every server alike. Prints per server the
 * requests/s and the server process's CPU per request (µs, from /proc: bench/perf/procstat.ts).
 *
 * Why: on this shared 2-core machine two perf runs minutes apart differ by ±20-30 %, so a change
 * of a few percent in what every request costs cannot be seen by comparing runs; slices of the
 * same minutes can (to about ±5 %, by repeating a pair).
 *
 * Usage (from a checkout; each `root` a checkout with node_modules and src/generated, each `db` a
 * database on DATABASE_URL's server that the server migrates at boot):
 *   npx tsx bench/ab-slices.ts '[{"label":"base","root":"/tmp/wt-base","db":"cp_ab_base","env":{}},
 *                                {"label":"head","root":"/work/main","db":"cp_ab_head","env":{"METRICS_ENABLED":"false"}}]' [rounds=15]
 */
import type { StartedServer } from '../demo/server-process.js';

/** One server of the comparison. */
interface AbConfig {
  label: string;
  /** Checkout the server is started from (its demo/server-process.ts and src/main.ts). */
  root: string;
  /** Database name on DATABASE_URL's server (the host part of DATABASE_URL is kept). */
  db: string;
  /** Extra environment of that server. */
  env: Record<string, string>;
}

const configs = JSON.parse(process.argv[2] ?? '[]') as AbConfig[];
const rounds = Number(process.argv[3] ?? 15);
if (configs.length < 2 || !Number.isInteger(rounds) || rounds < 1) {
  console.error('usage: npx tsx bench/ab-slices.ts \'[{"label","root","db","env"}, ...]\' [rounds]');
  process.exit(2);
}
const baseUrl = new URL(process.env.DATABASE_URL ?? 'postgresql://postgres@127.0.0.1:5432/postgres');
const servers: { c: AbConfig; srv: StartedServer }[] = [];
for (const c of configs) {
  const { startServer } = (await import(`${c.root}/demo/server-process.ts`)) as typeof import('../demo/server-process.js');
  const url = new URL(baseUrl);
  url.pathname = `/${c.db}`;
  process.env.DATABASE_URL = url.toString();
  servers.push({ c, srv: await startServer({ name: `ab-${c.label}`, workers: false, env: { LOG_LEVEL: 'warn', NODE_ENV: 'production', ...c.env } }) });
}
const { runAutocannon } = (await import(`${configs[0]!.root}/bench/perf/limits.ts`)) as typeof import('./perf/limits.js');
const totals = new Map<string, { units: number; seconds: number; cpuMs: number }>();
try {
  for (const s of servers) await runAutocannon(s.c.root, s.srv.graphqlUrl, s.srv.adminKey, 8, 2, s.srv.pids.server); // warm-up
  for (let r = 0; r < rounds; r++) {
    for (const s of r % 2 === 0 ? servers : [...servers].reverse()) {
      const res = await runAutocannon(s.c.root, s.srv.graphqlUrl, s.srv.adminKey, 8, 2, s.srv.pids.server);
      const t = totals.get(s.c.label) ?? { units: 0, seconds: 0, cpuMs: 0 };
      t.units += res.units;
      t.seconds += res.seconds;
      t.cpuMs += (res.cpu.server / 100) * res.cpu.seconds * 1000;
      totals.set(s.c.label, t);
    }
  }
  for (const [label, t] of totals) console.log(`${label}: ${Math.round(t.units / t.seconds)} req/s, server CPU ${((t.cpuMs / t.units) * 1000).toFixed(1)} us/request`);
} finally {
  for (const s of servers) await s.srv.stop();
}
