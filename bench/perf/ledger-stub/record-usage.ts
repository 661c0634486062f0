/**
 * The charge services as the ledger-stub server (bench/perf/ledger-stub/main.ts) sees them: every
 * export of src/services/record-usage.ts the GraphQL resolvers import (`recordUsage`,
 * `recordUsageBatch` with the same signatures, `assertBatchSize` as is), with
 * the same input validation (`validateUsageInput`, and the batch's item limit), and then no
 * ledger work: no pricing, no transaction, nothing written. Each accepted event is answered
 * with a usage_events row built from its command by the real builder (`usageEventRow`; a fresh
 * id, cost 0), which the resolvers turn into the API's UsageEvent as they do a real one.
 */
import { randomUUID } from 'node:crypto';
import { validateUsageInput, type UsageCommand, type UsageInput } from '../../../src/services/usage-command.js';
import { assertBatchSize, usageEventRow, type BatchItemResult, type ChargeResult } from '../../../src/services/record-usage.js';

/** The batch cap check the resolver calls before it decodes the items (the real one: it does no ledger work). */
export { assertBatchSize };
import type { ServiceContext } from '../../../src/services/context.js';

/** Rows handed out so far (their `seq`). */
let seq = 0n;

/** A usage_events row for `cmd`, as the charge insert's would be (the same builder), cost 0. */
function stubRow(cmd: UsageCommand): Record<string, unknown> {
  const q = cmd.quantities;
  return usageEventRow(cmd, {
    id: randomUUID(),
    seq: String(++seq),
    accountId: cmd.accountId,
    requestHash: '',
    now: new Date(),
    seconds: q.seconds,
    units: q.units,
    providerCostUsd: cmd.providerCostUsd,
    costMicroCredits: '0',
    debtMicroCredits: '0',
    lines: [],
    priceBookVersion: 0,
    metadata: cmd.metadata ?? null,
  });
}

/** The stub's answer to one input: validated as the real services validate it, then a row without ledger work. */
function answer(input: UsageInput): ChargeResult {
  const row = stubRow(validateUsageInput(input));
  return { eventId: row.id as string, replayed: false, row };
}

/**
 * Validates `input` as the real `recordUsage` does and answers without ledger work.
 * @returns a new event's id and row (never a replay).
 * @throws LedgerError BAD_USER_INPUT for invalid input (validateUsageInput).
 */
export async function recordUsage(_ctx: ServiceContext, input: UsageInput): Promise<ChargeResult> {
  return answer(input);
}

/**
 * Validates each input as the real `recordUsageBatch` does and answers each without ledger work.
 * @returns one result per input, in order (a refused input as `{ ok: false, error }`).
 * @throws LedgerError BAD_USER_INPUT when there are more than `opts.maxItems` inputs.
 */
export async function recordUsageBatch(_ctx: ServiceContext, inputs: readonly UsageInput[], opts: { maxItems: number; concurrency?: number }): Promise<BatchItemResult[]> {
  assertBatchSize(inputs.length, opts.maxItems);
  return inputs.map((input): BatchItemResult => {
    try {
      return { ok: true, result: answer(input) };
    } catch (error) {
      return { ok: false, error };
    }
  });
}
