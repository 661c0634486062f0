/**
 * Processor of the `resume-payment` job (issue #4): settles one purchase payment left PENDING
 * (services/resume-payment.ts). The `sweep-due` job adds it for PURCHASE payments PENDING longer
 * than PAYMENT_RESUME_AFTER_SECONDS. A payment still PENDING after the run (provider timeout)
 * fails the attempt, so BullMQ retries it with backoff (LEDGER_JOB_OPTIONS) and the sweep re-adds
 * it later; the payment id stays the idempotency key, so no retry charges twice.
 */
import { z } from 'zod';
import { resumePayment, type ResumePaymentResult } from '../../src/services/resume-payment.js';
import type { Processor } from '../deps.js';
import { servicesWithProvider } from '../deps.js';

/** Payload: the payment (and its account, for logs). */
export const ResumePaymentPayload = z.object({ paymentId: z.string().uuid(), accountId: z.string().uuid() });

/**
 * Resumes one payment.
 * @throws ZodError for a malformed payload (not retried); Error while the payment stays PENDING (retried).
 */
export const processResumePayment: Processor = async (deps, job): Promise<ResumePaymentResult> => {
  const { paymentId, accountId } = ResumePaymentPayload.parse(job.data);
  const result = await resumePayment(servicesWithProvider(deps), paymentId);
  if (result.status === 'PENDING') throw new Error(`payment ${paymentId} not settled (${result.reason ?? 'unknown'}); will retry`);
  deps.log.info({ paymentId, accountId, status: result.status, reason: result.reason }, 'pending payment resumed');
  return result;
};
