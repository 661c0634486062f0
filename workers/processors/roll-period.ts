/**
 * Processor of the `roll-period` job: rolls the account's plan into every billing period that
 * has started (RESET/ROLLOVER, then the period's grant). Idempotent on the period start.
 */
import { z } from 'zod';
import type { Processor } from '../deps.js';
import { rollBillingPeriods } from '../../src/services/plans.js';

/** Payload: the account. */
export const RollPeriodPayload = z.object({ accountId: z.string().uuid() });

/** Rolls the account's plan. @throws ZodError for a malformed payload (not retried). */
export const processRollPeriod: Processor = async (deps, job) => {
  const { accountId } = RollPeriodPayload.parse(job.data);
  return rollBillingPeriods(deps.services, accountId);
};
