/**
 * The pure part of the demo replay: which trace requests are sent how, as which model, agent,
 * user and task, and how an amount is shown. Deterministic; no I/O besides reading the traces.
 */
import { join } from 'node:path';
import { formatCredits } from '../src/ledger/credits.js';
import { loadAzureTrace, loadMooncakeTrace, mergeTraces, type TraceRequest } from '../src/trace/load.js';
import type { RecordUsageInput } from '../src/generated/graphql.js';
import { CHAT_MODEL, CODE_MODEL, KIMI_MODEL } from './price-book.js';
import { ROOT } from './server-process.js';

/** Which traces to replay: the two Azure 2023 files merged by time, or Mooncake (Kimi). */
export type TraceChoice = 'azure' | 'mooncake';

/** How one trace request is sent. */
export type SendMode = 'batch' | 'single' | 'retry' | 'reservation';

/** One trace request with everything the replay decided about it (deterministic). */
export interface PlannedRequest extends TraceRequest {
  /** 0-based position in the replay order. */
  index: number;
  /** Source trace name (conv, code, mooncake) and 0-based row in its file. */
  trace: string;
  row: number;
  model: string;
  agentId: string;
  userId: string;
  /** One of a few tasks; the extra tool-call / web-search events always use it. */
  taskId: string;
  /** The LLM call's own task: `stream-<index>` for a reservation run (its cost is read back with taskCost), else taskId. */
  llmTaskId: string;
  mode: SendMode;
  /** Also emit a FLAT tool_call event next to the LLM call. */
  toolCall: boolean;
  /** Also emit a FREE web_search event next to the LLM call. */
  webSearch: boolean;
}

const CONV_AGENTS = ['support-agent', 'research-agent', 'planner-agent'] as const;
const CODE_AGENTS = ['coding-agent', 'review-agent'] as const;
const ALL_AGENTS = [...CONV_AGENTS, ...CODE_AGENTS] as const;
const USERS = ['user-ada', 'user-grace', 'user-linus', 'user-margaret'] as const;
const TASKS = 6;

/** A 32-bit integer hash (murmur3 finalizer): spreads consecutive rows evenly and deterministically. */
export function mix32(n: number): number {
  let h = n >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

function pick<T>(xs: readonly T[], n: number): T {
  return xs[n % xs.length] as T;
}

/**
 * Loads the chosen traces and plans every request: model by trace (conv -> CHAT_MODEL,
 * code -> CODE_MODEL, mooncake -> KIMI_MODEL), agent/user/task by a hash of (trace, row),
 * send mode by position (1 in 50 under a reservation, 1 in 200 retried with the same key,
 * 1 in 10 through single recordUsage, the rest through recordUsageBatch), plus a tool call
 * for 1 in 7 and a web search for 1 in 13.
 *
 * @param trace which traces
 * @param limit keep only the first `limit` requests in time order (default: all)
 * @returns the plan, in replay order
 */
export function planReplay(trace: TraceChoice, limit?: number): PlannedRequest[] {
  const dir = join(ROOT, 'data/traces');
  const merged =
    trace === 'azure'
      ? mergeTraces({
          conv: loadAzureTrace(join(dir, 'AzureLLMInferenceTrace_conv.csv')),
          code: loadAzureTrace(join(dir, 'AzureLLMInferenceTrace_code.csv')),
        })
      : mergeTraces({ mooncake: loadMooncakeTrace(join(dir, 'conversation_trace.jsonl')) });
  const rows = limit !== undefined ? merged.slice(0, limit) : merged;
  return rows.map((r, index) => {
    const salt = r.trace === 'conv' ? 1 : r.trace === 'code' ? 2 : 3;
    const h = mix32(salt * 1_000_003 + r.row);
    const agents = r.trace === 'code' ? CODE_AGENTS : r.trace === 'conv' ? CONV_AGENTS : ALL_AGENTS;
    const mode: SendMode = index % 50 === 25 ? 'reservation' : index % 200 === 100 ? 'retry' : index % 10 === 5 ? 'single' : 'batch';
    return {
      occurredAt: r.occurredAt,
      inputTokens: r.inputTokens,
      outputTokens: r.outputTokens,
      cacheReadTokens: r.cacheReadTokens,
      index,
      trace: r.trace,
      row: r.row,
      model: r.trace === 'conv' ? CHAT_MODEL : r.trace === 'code' ? CODE_MODEL : KIMI_MODEL,
      agentId: pick(agents, h),
      userId: pick(USERS, h >>> 8),
      taskId: `task-${((h >>> 16) % TASKS) + 1}`,
      llmTaskId: mode === 'reservation' ? `stream-${index}` : `task-${((h >>> 16) % TASKS) + 1}`,
      mode,
      toolCall: index % 7 === 3,
      webSearch: index % 13 === 6,
    };
  });
}

/**
 * The API quantities of an LLM call. The traces count cache reads inside the input (as the
 * providers report prompt tokens); the API's inputTokens is the UNCACHED input only, with
 * cache reads in cacheReadTokens (src/pricing/price-book.ts), so the cached part moves over.
 * @param p the request
 * @param outputTokens output tokens to bill in this part (all of them for a whole call)
 */
export function llmQuantities(p: TraceRequest, outputTokens: number): RecordUsageInput['quantities'] {
  return {
    inputTokens: p.inputTokens - p.cacheReadTokens,
    outputTokens,
    ...(p.cacheReadTokens > 0 ? { cacheReadTokens: p.cacheReadTokens } : {}),
  };
}

/** Groups thousands and keeps every credit digit: 1234.5 -> "1,234.5". */
export function showCredits(micro: bigint): string {
  const text = formatCredits(micro);
  const [int, frac] = text.split('.') as [string, string | undefined];
  const neg = int.startsWith('-');
  const digits = neg ? int.slice(1) : int;
  const grouped = digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return `${neg ? '-' : ''}${grouped}${frac ? `.${frac}` : ''}`;
}
