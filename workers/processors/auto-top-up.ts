/**
 * Processor of the `auto-top-up` job (issue #4): charges the pack of one PENDING top-up and grants
 * it (source AUTO_TOP_UP); see services/auto-top-up.ts. A top-up left PENDING (a failed charge
 * with attempts left, a provider timeout) makes the attempt fail, so BullMQ retries it with
 * backoff (LEDGER_JOB_OPTIONS); the same payment key is reused, so a retry never charges twice.
 */
import { z } from 'zod';
import { runAutoTopUp, type TopUpRunResult } from '../../src/services/auto-top-up.js';
import { servicesWithProvider, type Processor } from '../deps.js';

/** Payload: the top-up (and its account, for logs). */
export const AutoTopUpPayload = z.object({ topUpId: z.string().uuid(), accountId: z.string().uuid() });

/**
 * Runs one top-up.
 * @throws ZodError for a malformed payload (not retried); Error while the top-up stays PENDING (retried).
 */
export const processAutoTopUp: Processor = async (deps, job): Promise<TopUpRunResult> => {
  const { topUpId, accountId } = AutoTopUpPayload.parse(job.data);
  const result = await runAutoTopUp(servicesWithProvider(deps), { topUpId, accountId }, { attemptsMade: job.attemptsMade, attempts: job.attempts });
  if (result.status === 'PENDING') throw new Error(`auto top-up ${topUpId} not done (${result.reason ?? 'unknown'}); will retry`);
  deps.log.info({ topUpId, status: result.status, reason: result.reason }, 'auto top-up finished');
  return result;
};
