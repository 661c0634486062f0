/**
 * A usage_events row as `pg` returns it (snake_case columns; int8 as text, numeric as text,
 * json parsed, timestamptz as Date) turned into the Prisma model `UsageEvent`, so the API can
 * answer a charge from the row its INSERT returned instead of reading it again.
 */
import { Prisma, type UsageEvent } from '../generated/prisma/client.js';

const decimal = (v: unknown): Prisma.Decimal | null => (v === null || v === undefined ? null : new Prisma.Decimal(v as string));
const bigint = (v: unknown): bigint => BigInt(v as string);

/**
 * Maps a `SELECT *` / `RETURNING *` row of usage_events to the Prisma model.
 * @throws SyntaxError (from BigInt) when a bigint column is missing, i.e. the row is not a whole usage_events row.
 */
export function usageEventFromRow(r: Record<string, unknown>): UsageEvent {
  return {
    id: r.id as string,
    seq: bigint(r.seq),
    accountId: r.account_id as string,
    idempotencyKey: r.idempotency_key as string,
    requestHash: r.request_hash as string,
    occurredAt: r.occurred_at as Date,
    recordedAt: r.recorded_at as Date,
    category: r.category as string,
    model: r.model as string | null,
    tier: r.tier as string | null,
    sku: r.sku as string | null,
    agentId: r.agent_id as string | null,
    userId: r.user_id as string | null,
    taskId: r.task_id as string | null,
    conversationId: r.conversation_id as string | null,
    messageId: r.message_id as string | null,
    inputTokens: r.input_tokens as number | null,
    outputTokens: r.output_tokens as number | null,
    reasoningTokens: r.reasoning_tokens as number | null,
    cacheReadTokens: r.cache_read_tokens as number | null,
    cacheWriteTokens: r.cache_write_tokens as number | null,
    seconds: decimal(r.seconds),
    units: decimal(r.units),
    providerCostUsd: decimal(r.provider_cost_usd),
    byok: r.byok as boolean,
    costMicroCredits: bigint(r.cost_micro_credits),
    debtMicroCredits: bigint(r.debt_micro_credits),
    lines: r.lines as Prisma.JsonValue,
    reservationId: r.reservation_id as string | null,
    priceBookVersion: r.price_book_version as number,
    refundedAt: r.refunded_at as Date | null,
    refundReason: r.refund_reason as string | null,
    metadata: r.metadata as Prisma.JsonValue,
  };
}
