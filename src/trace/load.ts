/**
 * Parsers for the real LLM request traces in `data/traces/` (see its README for sources,
 * licenses and formats). Pure apart from reading the file; no network, no clock.
 */
import { readFileSync } from 'node:fs';

/** One LLM request of a trace. Token counts are non-negative integers (tokens). */
export interface TraceRequest {
  /** Arrival time of the request (UTC, millisecond resolution). */
  occurredAt: Date;
  /** Prompt/context tokens, cache reads included (tokens). */
  inputTokens: number;
  /** Generated tokens (tokens). */
  outputTokens: number;
  /** Part of inputTokens served from a prefix cache (tokens); always <= inputTokens. */
  cacheReadTokens: number;
}

/** Tokens per Mooncake prefix-cache block (one `hash_ids` entry per block). */
export const MOONCAKE_BLOCK_TOKENS = 512;

/**
 * The calendar instant the Mooncake trace's millisecond offsets are anchored to. The trace
 * gives no date; this fixed one keeps replays deterministic.
 */
export const MOONCAKE_TRACE_START = new Date('2025-01-01T00:00:00.000Z');

const AZURE_HEADER = 'TIMESTAMP,ContextTokens,GeneratedTokens';
const AZURE_TIMESTAMP = /^(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,7}))?$/;

function parseNonNegativeInt(text: string, what: string, where: string): number {
  if (!/^\d+$/.test(text)) throw new Error(`${where}: ${what} is not a non-negative integer: ${JSON.stringify(text)}`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new Error(`${where}: ${what} is too large: ${text}`);
  return n;
}

/**
 * Parses an Azure trace timestamp `YYYY-MM-DD HH:MM:SS.fffffff` (no zone given; read as UTC)
 * into a Date. Fractional digits beyond milliseconds are truncated (Date holds ms).
 *
 * @throws Error when the text is not in that format or names an impossible date.
 */
export function parseAzureTimestamp(text: string): Date {
  const m = AZURE_TIMESTAMP.exec(text);
  if (!m) throw new Error(`bad Azure timestamp: ${JSON.stringify(text)}`);
  const [, y, mo, d, h, mi, s, frac = ''] = m;
  const ms = Number((frac + '000').slice(0, 3));
  const t = Date.UTC(Number(y), Number(mo) - 1, Number(d), Number(h), Number(mi), Number(s), ms);
  const date = new Date(t);
  if (
    Number.isNaN(t) ||
    date.getUTCFullYear() !== Number(y) ||
    date.getUTCMonth() !== Number(mo) - 1 ||
    date.getUTCDate() !== Number(d) ||
    date.getUTCHours() !== Number(h) ||
    date.getUTCMinutes() !== Number(mi) ||
    date.getUTCSeconds() !== Number(s)
  ) {
    throw new Error(`impossible Azure timestamp: ${JSON.stringify(text)}`);
  }
  return date;
}

/**
 * Loads an Azure LLM inference trace 2023 CSV (`TIMESTAMP,ContextTokens,GeneratedTokens`).
 *
 * Handles CRLF or LF line endings and a last line without terminator; timestamps have up to
 * 7 fractional digits and are read as UTC. The Azure trace has no cache information, so
 * `cacheReadTokens` is 0.
 *
 * @param path file path of the CSV
 * @returns the requests in file order (the files are sorted by time)
 * @throws Error naming the line when the header or a row is malformed
 */
export function loadAzureTrace(path: string): TraceRequest[] {
  const text = readFileSync(path, 'utf8');
  const lines = text.split(/\r?\n/);
  if (lines.length > 0 && lines[lines.length - 1] === '') lines.pop();
  const header = lines[0]?.replace(/^\uFEFF/, '');
  if (header !== AZURE_HEADER) {
    throw new Error(`${path}:1: expected header ${AZURE_HEADER}, got ${JSON.stringify(header)}`);
  }
  const out: TraceRequest[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = lines[i] as string;
    const where = `${path}:${i + 1}`;
    const cols = line.split(',');
    if (cols.length !== 3) throw new Error(`${where}: expected 3 columns, got ${cols.length}`);
    const [ts, ctx, gen] = cols as [string, string, string];
    let occurredAt: Date;
    try {
      occurredAt = parseAzureTimestamp(ts);
    } catch (e) {
      throw new Error(`${where}: ${(e as Error).message}`);
    }
    out.push({
      occurredAt,
      inputTokens: parseNonNegativeInt(ctx, 'ContextTokens', where),
      outputTokens: parseNonNegativeInt(gen, 'GeneratedTokens', where),
      cacheReadTokens: 0,
    });
  }
  return out;
}

/** Options of {@link loadMooncakeTrace}. */
export interface MooncakeOptions {
  /** Instant that offset 0 maps to; default {@link MOONCAKE_TRACE_START}. */
  start?: Date;
}

/**
 * Loads the Mooncake FAST'25 JSONL trace (`timestamp` ms offset, `input_length`,
 * `output_length`, `hash_ids`).
 *
 * `occurredAt` = start + timestamp ms. `cacheReadTokens` = the number of leading `hash_ids`
 * that already appeared in an earlier request (file order), x 512 tokens, capped at
 * `input_length`: the prefix a KV cache would have served.
 *
 * @param path file path of the JSONL file
 * @param options the anchor date of offset 0
 * @returns the requests in file order
 * @throws Error naming the line when a line is not valid JSON or misses a field
 */
export function loadMooncakeTrace(path: string, options: MooncakeOptions = {}): TraceRequest[] {
  const startMs = (options.start ?? MOONCAKE_TRACE_START).getTime();
  const text = readFileSync(path, 'utf8');
  const seen = new Set<number>();
  const out: TraceRequest[] = [];
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] as string).trim();
    if (line === '') continue;
    const where = `${path}:${i + 1}`;
    let row: unknown;
    try {
      row = JSON.parse(line);
    } catch (e) {
      throw new Error(`${where}: invalid JSON: ${(e as Error).message}`);
    }
    const r = row as { timestamp?: unknown; input_length?: unknown; output_length?: unknown; hash_ids?: unknown };
    const isInt = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
    if (!isInt(r.timestamp) || !isInt(r.input_length) || !isInt(r.output_length) || !Array.isArray(r.hash_ids) || !r.hash_ids.every(isInt)) {
      throw new Error(`${where}: expected non-negative integers timestamp, input_length, output_length and an integer array hash_ids`);
    }
    const hashIds = r.hash_ids as number[];
    let leading = 0;
    while (leading < hashIds.length && seen.has(hashIds[leading] as number)) leading++;
    for (const h of hashIds) seen.add(h);
    out.push({
      occurredAt: new Date(startMs + r.timestamp),
      inputTokens: r.input_length,
      outputTokens: r.output_length,
      cacheReadTokens: Math.min(leading * MOONCAKE_BLOCK_TOKENS, r.input_length),
    });
  }
  return out;
}

/**
 * Merges several traces into one list sorted by `occurredAt`, each request tagged with the
 * name of its trace and its 0-based row index in that trace. Stable: equal times keep the
 * order of `traces`, then file order.
 *
 * @param traces name -> requests (each already sorted or not; the result is sorted)
 * @returns tagged requests in time order
 */
export function mergeTraces<N extends string>(
  traces: Record<N, TraceRequest[]>,
): Array<TraceRequest & { trace: N; row: number }> {
  const all: Array<TraceRequest & { trace: N; row: number }> = [];
  for (const name of Object.keys(traces) as N[]) {
    traces[name].forEach((r, row) => all.push({ ...r, trace: name, row }));
  }
  // Array.prototype.sort is stable (ES2019).
  return all.sort((a, b) => a.occurredAt.getTime() - b.occurredAt.getTime());
}
