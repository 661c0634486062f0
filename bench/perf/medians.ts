/**
 * Medians over several runs of bench/perf.ts (issue #6 asks for medians of 3 runs on this noisy
 * machine): reads the given bench/results/perf-*.json files and prints, per scenario, the median
 * rate, p50, p95 and p99 and the server's RSS, each with the min..max of the runs, then the
 * issue's targets recomputed from the median rows, and the references (computeReferences).
 *
 * Usage: npx tsx bench/perf/medians.ts bench/results/perf-A.json bench/results/perf-B.json ...
 */
import { readFileSync } from 'node:fs';
import { computeReferences, computeTargets, type ScenarioRow } from '../perf.js';

/** The median of a non-empty list (mean of the middle two for an even count). */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/**
 * Builds one row per scenario id whose figures are the medians over `runs` (scenarios missing
 * from a run are taken over the runs that have them).
 */
export function medianRows(runs: readonly { scenarios: ScenarioRow[] }[]): { row: ScenarioRow; n: number; rateRange: [number, number] }[] {
  const ids: string[] = [];
  for (const r of runs) for (const s of r.scenarios) if (!ids.includes(s.id)) ids.push(s.id);
  return ids.map((id) => {
    const all = runs.map((r) => r.scenarios.find((s) => s.id === id)).filter((s): s is ScenarioRow => s !== undefined);
    const first = all[0]!;
    const m = (f: (s: ScenarioRow) => number) => Math.round(median(all.map(f)) * 100) / 100;
    const rates = all.map((s) => s.rate);
    return {
      n: all.length,
      rateRange: [Math.min(...rates), Math.max(...rates)],
      row: {
        ...first,
        rate: m((s) => s.rate),
        latencyMs: { p50: m((s) => s.latencyMs.p50), p95: m((s) => s.latencyMs.p95), p99: m((s) => s.latencyMs.p99), max: m((s) => s.latencyMs.max), mean: m((s) => s.latencyMs.mean) },
        errorCount: all.reduce((a, s) => a + s.errorCount, 0),
        rssMiB: all.every((s) => s.rssMiB === null) ? null : m((s) => s.rssMiB ?? 0),
        cpu: {
          ...first.cpu,
          server: Math.round(m((s) => s.cpu.server)),
          postgres: Math.round(m((s) => s.cpu.postgres)),
          bench: Math.round(m((s) => s.cpu.bench + s.cpu.tool)),
          tool: 0,
          other: Math.round(m((s) => s.cpu.other)),
          machineBusy: Math.round(m((s) => s.cpu.machineBusy)),
        },
      },
    };
  });
}

function main(files: string[]): number {
  if (files.length === 0) {
    console.error('usage: npx tsx bench/perf/medians.ts bench/results/perf-*.json');
    return 2;
  }
  const runs = files.map(
    (f) =>
      JSON.parse(readFileSync(f, 'utf8')) as {
        scenarios: ScenarioRow[];
        measuredAt: string;
        chargePath?: { declaredInEnv: boolean };
        ok: boolean;
        machine?: { gitHead?: string; gitHeadAtEnd?: string; codeKey?: string; codeKeyAtEnd?: string };
      },
  );
  console.log(`Medians of ${runs.length} run(s): ${runs.map((r, i) => `${files[i]} (${r.measuredAt}, code ${r.machine?.gitHead ?? '?'}${r.ok ? '' : ', CHECKS FAILED'})`).join(', ')}`);
  // Compare the code keys (trees of src/, workers/, prisma/ + uncommitted diff) when every run has them, else the commits.
  const byKey = runs.every((r) => r.machine?.codeKey);
  const versions = new Set(
    runs.flatMap((r) => (byKey ? [r.machine?.codeKey, r.machine?.codeKeyAtEnd ?? r.machine?.codeKey] : [r.machine?.gitHead, r.machine?.gitHeadAtEnd ?? r.machine?.gitHead])),
  );
  if (versions.size > 1) console.log(`WARNING: the runs measured different code (${[...versions].join(', ')}): medians mix versions.`);
  const rows = medianRows(runs);
  console.log('| # | scenario | path | c | rate (median) | min..max | unit | p50 ms | p95 ms | p99 ms | errors | RSS MiB | cpu srv/pg/load/oth | busy |');
  console.log('|---|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|');
  for (const { row: r, rateRange } of rows) {
    const f = (x: number) => (x >= 100 ? Math.round(x).toLocaleString('en-US') : x.toFixed(1));
    console.log(
      `| ${r.id} | ${r.scenario} | ${r.server} | ${r.concurrency} | ${f(r.rate)} | ${f(rateRange[0])}..${f(rateRange[1])} | ${r.unit} | ${r.latencyMs.p50.toFixed(1)} | ${r.latencyMs.p95.toFixed(1)} | ${r.latencyMs.p99.toFixed(1)} | ${r.errorCount} | ${r.rssMiB === null ? '-' : r.rssMiB.toFixed(0)} | ${r.cpu.server}/${r.cpu.postgres}/${r.cpu.bench}/${r.cpu.other} | ${r.cpu.machineBusy} |`,
    );
  }
  console.log('');
  console.log('Targets on the medians (ratio = measured / goal; >= 1.00 meets it):');
  for (const t of computeTargets(rows.map((r) => r.row), runs.every((r) => r.chargePath?.declaredInEnv !== false))) {
    console.log(`  ${t.met ? 'MET ' : 'MISS'}  ${t.ratio.toFixed(2).padStart(6)}  ${t.target}: ${t.detail}`);
  }
  const references = computeReferences(rows.map((r) => r.row));
  if (references.length) {
    console.log('');
    console.log('References on the medians, not targets (ratio = measured / reference):');
    for (const t of references) console.log(`  ${t.ratio.toFixed(2).padStart(6)}  ${t.target}: ${t.detail}`);
  }
  return 0;
}

process.exitCode = main(process.argv.slice(2));
