/**
 * What pricing one usage event costs the server's CPU, without any I/O: every request of the
 * real Azure LLM inference trace 2023 (data/traces/, CC BY 4.0; as the demo plans them: chat and
 * code models, per-token prices of the demo price book) priced with `priceUsage`, several passes.
 * Prints microseconds per event (best pass and median pass). Pure and single-threaded, so it is
 * far less noisy than the HTTP benches; use it to compare two versions of the pricing code.
 *
 * Usage: npx tsx bench/perf/pricing-cost.ts [--passes 7]
 */
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { planReplay, llmQuantities } from '../../demo/plan.js';
import { demoPriceBook } from '../../demo/price-book.js';
import { priceUsage, validatePriceBook } from '../../src/pricing/price-book.js';

const { values } = parseArgs({ options: { passes: { type: 'string', default: '7' } } });
const passes = Number(values.passes);
if (!Number.isInteger(passes) || passes < 1 || passes > 100) throw new Error('--passes must be an integer in 1..100');

const book = validatePriceBook(demoPriceBook('pricing-cost'));
const trace = planReplay('azure');
const usages = trace.map((p) => ({
  category: 'llm',
  model: p.model,
  quantities: llmQuantities(p, p.outputTokens),
  occurredAt: new Date(Date.UTC(2026, 11, 4, 12, 0, 0)),
}));
let checksum = 0n;
const perEventUs: number[] = [];
for (let pass = 0; pass < passes; pass++) {
  const t0 = performance.now();
  for (const u of usages) checksum += priceUsage(book, u, { creditUsdValue: '0.01' }).costMicroCredits;
  perEventUs.push(((performance.now() - t0) * 1000) / usages.length);
}
const sorted = [...perEventUs].sort((a, b) => a - b);
console.log(
  `priceUsage over ${usages.length.toLocaleString('en-US')} trace events × ${passes} passes: best ${sorted[0]!.toFixed(2)} µs/event, ` +
    `median ${sorted[Math.floor(sorted.length / 2)]!.toFixed(2)} µs/event (checksum ${checksum} micro-credits)`,
);
