/**
 * Processor of the `expire-due` job: removes what is due on one account (batches past expiresAt,
 * holds past expiresAt) at the account's "now". Idempotent: nothing due, nothing done.
 */
import { z } from 'zod';
import type { Processor } from '../deps.js';
import { expireDue } from '../../src/services/expire-due.js';

/** Payload: the account. */
export const ExpireDuePayload = z.object({ accountId: z.string().uuid() });

/** Runs expireDue for the account. @throws ZodError for a malformed payload (not retried). */
export const processExpireDue: Processor = async (deps, job) => {
  const { accountId } = ExpireDuePayload.parse(job.data);
  return expireDue(deps.services, accountId);
};
