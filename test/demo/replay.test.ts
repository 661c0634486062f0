/**
 * The demo's replay (demo/replay.ts, what `npm run demo` runs) against a real server over HTTP:
 * the first 3,000 requests of the Azure trace with 4 operations in flight. It must pass every
 * check it prints (the API's totals by category, model and agent equal the client's own count;
 * FREE before PAID; the ledger invariant; a 0 % alert once credit ran out; the budgeted agent's
 * spending equals what the client counted for it and stays within its limit), refuse work
 * after the credit ran out (INSUFFICIENT_CREDITS) and refuse the budgeted agent's work past its
 * budget (BUDGET_EXCEEDED).
 *
 * The replay publishes the demo's price book; afterAll publishes the test price book again for
 * the test files after this one (files run one after another: vitest.config.ts).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { TEST_PRICE_BOOK } from '../setup/test-price-book.js';
import { createClient } from '../../src/client/graphql-client.js';
import { publishPriceBook } from '../../src/services/publish-price-book.js';
import { runReplay } from '../../demo/replay.js';

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer();
});

afterAll(async () => {
  await publishPriceBook(srv.services, TEST_PRICE_BOOK);
  await srv.close();
});

describe('the demo replay', () => {
  it('replays 3,000 trace requests with every check passing, refusals once credit ran out and the budgeted agent stopped at its budget', async () => {
    const lines: string[] = [];
    const report = await runReplay(createClient({ url: srv.url, token: srv.adminKey }), {
      trace: 'azure',
      limit: 3_000,
      concurrency: 4,
      progressMs: 600_000,
      log: (line) => lines.push(line),
    });
    expect(report.failures, lines.join('\n')).toEqual([]);
    expect(report.ok).toBe(true);
    expect(report.invariantHolds).toBe(true);
    expect(report.requests).toBe(3_000);
    expect(report.refusals).toBeGreaterThan(0);
    expect(report.overBudget).toBeGreaterThan(0);
    expect(lines.some((l) => /^Agent budget of \S+: spent .* refused with BUDGET_EXCEEDED: [1-9]/.test(l))).toBe(true);
  });
});
