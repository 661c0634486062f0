/**
 * The validated form of RecordUsageInput (contract) and its validation. Validation is pure and
 * runs before any transaction, so bad input changes nothing.
 */
import { singleLine } from '../ledger/text-input.js';
import { badInput } from '../ledger/errors.js';
import { parseExactDecimal, formatExactDecimal } from '../ledger/credits.js';

/** Measured quantities of one usage event. Decimals are canonical strings. */
export interface UsageQuantities {
  inputTokens: number | null;
  outputTokens: number | null;
  reasoningTokens: number | null;
  cacheReadTokens: number | null;
  cacheWriteTokens: number | null;
  /** Seconds of runtime/voice, non-negative decimal, <= 9 fractional digits. */
  seconds: string | null;
  /** Units (images, calls, tasks), non-negative decimal, <= 9 fractional digits. */
  units: string | null;
}

/** A validated usage record request. */
export interface UsageCommand {
  accountId: string;
  idempotencyKey: string;
  category: string;
  model: string | null;
  tier: string | null;
  sku: string | null;
  quantities: UsageQuantities;
  /** Provider-reported cost in USD, canonical decimal (<= 12 fractional digits). */
  providerCostUsd: string | null;
  byok: boolean;
  agentId: string | null;
  userId: string | null;
  taskId: string | null;
  conversationId: string | null;
  messageId: string | null;
  reservationId: string | null;
  occurredAt: Date | null;
  metadata: unknown;
}

/** Loose input as it arrives from GraphQL (after scalar parsing) or other callers. */
export interface UsageInput {
  accountId: string;
  idempotencyKey: string;
  category: string;
  model?: string | null;
  tier?: string | null;
  sku?: string | null;
  quantities?: {
    inputTokens?: number | null;
    outputTokens?: number | null;
    reasoningTokens?: number | null;
    cacheReadTokens?: number | null;
    cacheWriteTokens?: number | null;
    seconds?: unknown;
    units?: unknown;
  } | null;
  providerCostUsd?: unknown;
  byok?: boolean | null;
  agentId?: string | null;
  userId?: string | null;
  taskId?: string | null;
  conversationId?: string | null;
  messageId?: string | null;
  reservationId?: string | null;
  occurredAt?: Date | null;
  metadata?: unknown;
}

const MAX_ID_LENGTH = 200;
const MAX_METADATA_BYTES = 8192;
/**
 * Deepest nesting of arrays and objects a JSON input (metadata) may have. Metadata is labels,
 * not documents; the bound keeps recursive walks over it (request-hash.ts `canonical`,
 * JSON.stringify) far from the stack limit: 3,000 nested arrays fit in 8 KB.
 */
export const MAX_JSON_DEPTH = 32;
/** Largest token count per quantities field (README "Limits"); more is BAD_USER_INPUT naming the range. */
export const MAX_TOKENS = 1_000_000_000;

/**
 * Validates an idempotency key: 1..200 characters, none a control character or line break
 * (ledger/text-input.ts `singleLine`).
 * @throws LedgerError BAD_USER_INPUT naming `field`.
 */
export function validateIdempotencyKey(key: string, field = 'idempotencyKey'): string {
  if (typeof key !== 'string' || key.length === 0 || key.length > MAX_ID_LENGTH) throw badInput(field, 'must be 1 to 200 printable characters');
  return singleLine(key, field);
}

/**
 * Validates an optional label (model, tier, sku, agentId, userId, taskId, ...): null when absent,
 * else 1..200 characters, none a control character or line break (ledger/text-input.ts `singleLine`).
 * @throws LedgerError BAD_USER_INPUT naming `field` when empty, longer than 200 characters or
 *   holding a control character or line break.
 */
export function optionalLabel(value: string | null | undefined, field: string): string | null {
  if (value === null || value === undefined) return null;
  if (value.length === 0 || value.length > MAX_ID_LENGTH) throw badInput(field, 'must be 1 to 200 characters');
  return singleLine(value, field);
}

/**
 * Validates a JSON input value (metadata): at most MAX_JSON_DEPTH levels of arrays and objects,
 * and every number finite (a JSON number like 1e400 parses to Infinity, which JSON.stringify
 * and PostgreSQL's jsonb would silently turn into null). Returns `value` unchanged.
 * @throws LedgerError BAD_USER_INPUT naming `field` otherwise.
 */
export function validateJsonValue(value: unknown, field: string): unknown {
  const walk = (v: unknown, depth: number): void => {
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) throw badInput(field, 'numbers must be finite (JSON numbers beyond ±1.8e308 are not)');
    } else if (v !== null && typeof v === 'object') {
      if (depth >= MAX_JSON_DEPTH) throw badInput(field, `must nest arrays and objects at most ${MAX_JSON_DEPTH} levels deep`);
      for (const item of Array.isArray(v) ? v : Object.values(v)) walk(item, depth + 1);
    }
  };
  walk(value, 0);
  return value;
}

function tokens(value: number | null | undefined, field: string): number | null {
  if (value === null || value === undefined) return null;
  if (!Number.isSafeInteger(value) || value < 0 || value > MAX_TOKENS) throw badInput(field, `must be an integer from 0 to ${MAX_TOKENS}`);
  return value;
}

function nonNegativeDecimal(value: unknown, field: string, maxScale: number): string | null {
  if (value === null || value === undefined) return null;
  const d = parseExactDecimal(value, field, maxScale);
  if (d.units < 0n) throw badInput(field, 'must not be negative');
  if (d.units >= 10n ** BigInt(18 + d.scale)) throw badInput(field, 'is out of range');
  return formatExactDecimal(d);
}

/**
 * Validates a usage input into a UsageCommand.
 * @throws LedgerError BAD_USER_INPUT naming the first invalid field.
 */
export function validateUsageInput(input: UsageInput): UsageCommand {
  const q = input.quantities ?? {};
  if (typeof input.category !== 'string' || input.category.length === 0 || input.category.length > MAX_ID_LENGTH) {
    throw badInput('category', 'must be 1 to 200 characters');
  }
  singleLine(input.category, 'category');
  let metadata: unknown = input.metadata ?? null;
  if (metadata !== null) {
    validateJsonValue(metadata, 'metadata');
    const size = Buffer.byteLength(JSON.stringify(metadata) ?? '');
    if (size > MAX_METADATA_BYTES) throw badInput('metadata', `must be at most ${MAX_METADATA_BYTES} bytes of JSON`);
  }
  if (input.occurredAt && Number.isNaN(input.occurredAt.getTime())) throw badInput('occurredAt', 'is not a valid date');
  return {
    accountId: input.accountId,
    idempotencyKey: validateIdempotencyKey(input.idempotencyKey),
    category: input.category,
    model: optionalLabel(input.model, 'model'),
    tier: optionalLabel(input.tier, 'tier'),
    sku: optionalLabel(input.sku, 'sku'),
    quantities: {
      inputTokens: tokens(q.inputTokens, 'quantities.inputTokens'),
      outputTokens: tokens(q.outputTokens, 'quantities.outputTokens'),
      reasoningTokens: tokens(q.reasoningTokens, 'quantities.reasoningTokens'),
      cacheReadTokens: tokens(q.cacheReadTokens, 'quantities.cacheReadTokens'),
      cacheWriteTokens: tokens(q.cacheWriteTokens, 'quantities.cacheWriteTokens'),
      seconds: nonNegativeDecimal(q.seconds, 'quantities.seconds', 9),
      units: nonNegativeDecimal(q.units, 'quantities.units', 9),
    },
    providerCostUsd: nonNegativeDecimal(input.providerCostUsd, 'providerCostUsd', 12),
    byok: input.byok ?? false,
    agentId: optionalLabel(input.agentId, 'agentId'),
    userId: optionalLabel(input.userId, 'userId'),
    taskId: optionalLabel(input.taskId, 'taskId'),
    conversationId: optionalLabel(input.conversationId, 'conversationId'),
    messageId: optionalLabel(input.messageId, 'messageId'),
    reservationId: input.reservationId ?? null,
    occurredAt: input.occurredAt ?? null,
    metadata,
  };
}
