// The cost of an active AsyncLocalStorage on Node 20: the same promise-heavy loop (200,000
// iterations of 6 async calls and their awaits, ~2.4 million promises) with and without one
// entered. Run each mode in its own process (the promise hook stays on once enabled):
//   node bench/experiments/als-promise-hook.mjs none; node bench/experiments/als-promise-hook.mjs als
// Measured on 2026-12-05 (Node 20.20): 63-68 ms of CPU without, 226-243 ms with.
import { AsyncLocalStorage } from 'node:async_hooks';
const als = new AsyncLocalStorage();
async function leaf(i) { return i + 1; }
async function mid(i) { let s = 0; for (let k = 0; k < 5; k++) s += await leaf(k); return s + i; }
async function work(n) { let t = 0; for (let i = 0; i < n; i++) t += await mid(i); return t; }
async function measure(label) {
  const t0 = process.cpuUsage(); const w0 = performance.now();
  await work(200000);
  const c = process.cpuUsage(t0); console.log(label, ((performance.now() - w0)).toFixed(0), 'ms wall', ((c.user + c.system) / 1000).toFixed(0), 'ms cpu');
}
const mode = process.argv[2];
await measure('warm');
if (mode === 'als') await als.run({ id: 1 }, () => measure('with ALS'));
else await measure('without ALS');
