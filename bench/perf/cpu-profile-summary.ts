/**
 * Summarises a V8 CPU profile (`.cpuprofile`, written by `node --cpu-prof`; servers started by
 * the benches write one per process into CPU_PROFILE_DIR): self time by package (or source file,
 * or native function) and by function, as percent of all samples (idle included); with
 * `--inclusive`, also total time (a frame and everything it called; each sample counts once per
 * package or function on its stack), which says what a whole step costs (GraphQL execution, the
 * charge path, node-postgres' parsing); and, with `--callers NAME`, the call chains above a
 * function (e.g. `writev`: who writes to sockets).
 *
 * Usage: npx tsx bench/perf/cpu-profile-summary.ts FILE.cpuprofile [--top 25] [--inclusive] [--callers writev]
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

/** One node of a V8 CPU profile (the fields this script reads). */
interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

/** Where a frame's code lives: an npm package, a project file, a Node module, or the native name. */
function owner(frame: ProfileNode['callFrame']): string {
  const url = frame.url;
  const pkg = url.match(/node_modules\/((?:@[^/]+\/)?[^/]+)/);
  if (pkg) return pkg[1]!;
  for (const dir of ['/src/', '/workers/', '/demo/', '/bench/']) if (url.includes(dir)) return dir.slice(1) + url.split(dir)[1];
  if (url.startsWith('node:')) return url;
  return frame.functionName || url || '(unknown)';
}

/** A frame's key in the by-function tables: its name and where it is defined. */
function functionKey(frame: ProfileNode['callFrame']): string {
  return `${frame.functionName || '(anonymous)'}  ${owner(frame)}:${frame.lineNumber + 1}`;
}

const { values, positionals } = parseArgs({ allowPositionals: true, options: { top: { type: 'string', default: '25' }, inclusive: { type: 'boolean', default: false }, callers: { type: 'string' } } });
if (positionals.length !== 1) {
  console.error('usage: npx tsx bench/perf/cpu-profile-summary.ts FILE.cpuprofile [--top 25] [--inclusive] [--callers writev]');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(positionals[0]!, 'utf8')) as { nodes: ProfileNode[]; samples: number[] };
const nodes = new Map(profile.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const total = profile.samples.length;
const add = (m: Map<string, number>, k: string) => m.set(k, (m.get(k) ?? 0) + 1);
const byOwner = new Map<string, number>();
const byFunction = new Map<string, number>();
const chains = new Map<string, number>();
const totalByOwner = new Map<string, number>();
const totalByFunction = new Map<string, number>();
for (const id of profile.samples) {
  const frame = nodes.get(id)!.callFrame;
  if (values.inclusive) {
    const owners = new Set<string>();
    const functions = new Set<string>();
    for (let p: number | undefined = id; p !== undefined; p = parent.get(p)) {
      const f = nodes.get(p)!.callFrame;
      if (f.functionName === '(root)') continue;
      owners.add(owner(f));
      functions.add(functionKey(f));
    }
    for (const o of owners) add(totalByOwner, o);
    for (const f of functions) add(totalByFunction, f);
  }
  add(byOwner, owner(frame));
  add(byFunction, functionKey(frame));
  if (values.callers && frame.functionName === values.callers) {
    const chain: string[] = [];
    for (let p = parent.get(id); p !== undefined && chain.length < 8; p = parent.get(p)) {
      const f = nodes.get(p)!.callFrame;
      chain.push(`${f.functionName || '(anonymous)'} (${owner(f)})`);
    }
    add(chains, chain.join(' < '));
  }
}
const top = Number(values.top);
const print = (title: string, m: Map<string, number>) => {
  console.log(`-- ${title} --`);
  for (const [k, c] of [...m].sort((a, b) => b[1] - a[1]).slice(0, top)) console.log(`${((100 * c) / total).toFixed(1).padStart(5)} %  ${k}`);
};
console.log(`${total} samples`);
print('self time by package / file', byOwner);
print('self time by function', byFunction);
if (values.inclusive) {
  print('total time by package / file', totalByOwner);
  print('total time by function', totalByFunction);
}
if (values.callers) print(`call chains above ${values.callers}`, chains);
