/**
 * Scenario 5 of the perf bench: a long usage history on ONE account, generated with SQL (not
 * through the API) in chunks with generate_series, then read through the API.
 *
 * Rows satisfy every CHECK of usage_events (non-negative tokens and costs, debt 0, keys of 1..200
 * characters) and its foreign keys (the account, the price book in force). Token counts cycle
 * through the real Azure 2023 trace (conv -> gpt-4o-mini, code -> codestral-latest) and are
 * priced like the demo price book (catalog price + 20 %); 1 in 8 events is a FLAT tool call and
 * 1 in 13 a FREE web search, like the demo replay. occurred_at grows with the row number, evenly
 * from the account's (back-dated) billing anchor to now, so ids, seq, idempotency keys and times
 * are all ascending and every index grows at its right edge (as months of live ingestion would
 * leave it). No ledger entries or drawdowns are written: the account's balance row stays as the
 * API created it (total = batches - debt = ledger sum = 0), which keeps the ledger invariant.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { round } from './load.js';

/** Rows per INSERT statement (one transaction each). */
export const HISTORY_CHUNK_ROWS = 250_000;

/** Token counts of one trace request and the model it is billed as. */
export interface TraceTokens {
  model: string;
  inputTokens: number;
  outputTokens: number;
}

/** Per-model catalog prices in micro-credits per token, markup included (demo price book: +20 %, 1 credit = $0.01). */
const MICRO_PER_TOKEN: Record<string, { input: number; output: number }> = {
  // gpt-4o-mini: $0.15 / $0.60 per Mtok -> 15 / 60 micro-credits per token, x 1.2.
  'gpt-4o-mini': { input: 18, output: 72 },
  // codestral-latest: $0.30 / $0.90 per Mtok, x 1.2.
  'codestral-latest': { input: 36, output: 108 },
};

/** What generation did. */
export interface HistoryGeneration {
  events: number;
  chunks: number;
  insertSeconds: number;
  vacuumAnalyzeSeconds: number;
  seconds: number;
  rowsPerSecond: number;
  from: string;
  to: string;
  tableSizeMiB: number;
  indexesSizeMiB: number;
}

/**
 * The billing anchor that makes the current period start ~`periodDays` days before `now` while
 * the account is about a year old: 12 months before now, shifted forward by (31 - periodDays)
 * days. With periodDays 30 the current period holds about a month of events.
 */
export function historyAnchor(now: Date, periodDays = 30): Date {
  const a = new Date(Date.UTC(now.getUTCFullYear() - 1, now.getUTCMonth(), now.getUTCDate(), now.getUTCHours(), now.getUTCMinutes(), now.getUTCSeconds()));
  return new Date(a.getTime() + (31 - periodDays) * 86_400_000);
}

/**
 * Inserts `events` usage events for `accountId` (see the module comment), back-dates the
 * account's created_at and billing_anchor_at to `anchor`, then VACUUM ANALYZEs usage_events.
 * @param log progress lines
 */
export async function generateHistory(
  client: pg.Client,
  accountId: string,
  events: number,
  trace: readonly TraceTokens[],
  anchor: Date,
  now: Date,
  log: (line: string) => void,
): Promise<HistoryGeneration> {
  const t0 = performance.now();
  const { rows: pb } = await client.query('SELECT max(version) AS v FROM price_books');
  const priceBook = pb[0]?.v as number | null;
  if (priceBook == null) throw new Error('no price book in the bench database');
  await client.query('UPDATE accounts SET created_at = $2, billing_anchor_at = $2 WHERE id = $1', [accountId, anchor]);

  // The trace's token counts and their prices, as a temporary lookup table.
  await client.query('DROP TABLE IF EXISTS perf_trace; CREATE TEMP TABLE perf_trace (i int PRIMARY KEY, model text NOT NULL, input_tokens int NOT NULL, output_tokens int NOT NULL, cost bigint NOT NULL)');
  const usable = trace.filter((t) => MICRO_PER_TOKEN[t.model]);
  if (usable.length === 0) throw new Error('no trace request with a known model');
  for (let i = 0; i < usable.length; i += 5_000) {
    const part = usable.slice(i, i + 5_000);
    await client.query(
      `INSERT INTO perf_trace (i, model, input_tokens, output_tokens, cost)
       SELECT * FROM unnest($1::int[], $2::text[], $3::int[], $4::int[], $5::bigint[])`,
      [
        part.map((_, k) => i + k),
        part.map((t) => t.model),
        part.map((t) => t.inputTokens),
        part.map((t) => t.outputTokens),
        part.map((t) => {
          const p = MICRO_PER_TOKEN[t.model]!;
          return String(t.inputTokens * p.input + t.outputTokens * p.output);
        }),
      ],
    );
  }
  await client.query('ANALYZE perf_trace');

  const spanMs = now.getTime() - anchor.getTime() - 60_000;
  const tInsert = performance.now();
  let chunks = 0;
  for (let lo = 1; lo <= events; lo += HISTORY_CHUNK_ROWS) {
    const hi = Math.min(events, lo + HISTORY_CHUNK_ROWS - 1);
    const tc = performance.now();
    // n: global row number. kind: 0 = llm, 1 = tool_call (1 in 8), 2 = web_search (1 in 13).
    await client.query(
      `INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, recorded_at, category, model, tier,
                                 agent_id, user_id, task_id, input_tokens, output_tokens, cost_micro_credits, lines, price_book_version)
       SELECT ('b' || lpad(to_hex(g.n), 31, '0'))::uuid,
              $1::uuid,
              'hist-' || lpad(g.n::text, 10, '0'),
              md5(g.n::text),
              g.at,
              g.at + interval '40 milliseconds',
              CASE g.kind WHEN 0 THEN 'llm' WHEN 1 THEN 'tool_call' ELSE 'web_search' END,
              CASE g.kind WHEN 0 THEN t.model END,
              CASE WHEN g.kind = 0 AND t.input_tokens > 8000 THEN 'long-context' END,
              (ARRAY['support-agent','research-agent','planner-agent','coding-agent','review-agent'])[1 + (g.h % 5)::int],
              (ARRAY['user-ada','user-grace','user-linus','user-margaret'])[1 + ((g.h / 5) % 4)::int],
              'task-' || (1 + (g.h / 20) % 6),
              CASE g.kind WHEN 0 THEN t.input_tokens END,
              CASE g.kind WHEN 0 THEN t.output_tokens END,
              CASE g.kind WHEN 0 THEN t.cost WHEN 1 THEN 50000 ELSE 0 END,
              CASE g.kind
                WHEN 0 THEN jsonb_build_array(
                  jsonb_build_object('item', 'input_tokens', 'quantity', t.input_tokens::text),
                  jsonb_build_object('item', 'output_tokens', 'quantity', t.output_tokens::text),
                  jsonb_build_object('item', 'markup', 'amount', (t.cost / 6)::text))
                WHEN 1 THEN '[{"item": "request", "amount": "0.05", "quantity": "1", "unitPrice": "0.05", "exactAmount": "0.05"}]'::jsonb
                ELSE '[{"item": "request", "amount": "0", "quantity": "1", "unitPrice": "0", "exactAmount": "0"}]'::jsonb
              END,
              $2::int
         FROM (SELECT n,
                      $3::timestamptz + (n - 1) * ($4::float8 / $5::float8) * interval '1 millisecond' AS at,
                      CASE WHEN n % 8 = 3 THEN 1 WHEN n % 13 = 6 THEN 2 ELSE 0 END AS kind,
                      (n * 2654435761::bigint) % 4294967296 AS h
                 FROM generate_series($6::bigint, $7::bigint) AS n) g
         JOIN perf_trace t ON t.i = g.n % $8::int`,
      [accountId, priceBook, anchor, spanMs, events, lo, hi, usable.length],
    );
    chunks++;
    if (chunks === 1 || hi === events || chunks % 8 === 0) {
      const done = hi;
      const rate = done / ((performance.now() - tInsert) / 1000);
      log(`  history: ${done.toLocaleString('en-US')} / ${events.toLocaleString('en-US')} events (${Math.round(rate).toLocaleString('en-US')} rows/s, last chunk ${((performance.now() - tc) / 1000).toFixed(1)} s)`);
    }
  }
  const insertSeconds = (performance.now() - tInsert) / 1000;
  const tVac = performance.now();
  await client.query('VACUUM ANALYZE usage_events');
  const vacuumAnalyzeSeconds = (performance.now() - tVac) / 1000;
  const { rows: sz } = await client.query(`SELECT pg_relation_size('usage_events') AS t, pg_indexes_size('usage_events') AS i`);
  const seconds = (performance.now() - t0) / 1000;
  return {
    events,
    chunks,
    insertSeconds: round(insertSeconds, 1),
    vacuumAnalyzeSeconds: round(vacuumAnalyzeSeconds, 1),
    seconds: round(seconds, 1),
    rowsPerSecond: Math.round(events / insertSeconds),
    from: anchor.toISOString(),
    to: new Date(anchor.getTime() + spanMs).toISOString(),
    tableSizeMiB: Math.round(Number(sz[0]?.t ?? 0) / 2 ** 20),
    indexesSizeMiB: Math.round(Number(sz[0]?.i ?? 0) / 2 ** 20),
  };
}
