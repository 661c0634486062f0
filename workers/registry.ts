/**
 * Which processor runs which job of the ledger-jobs queue (src/queues/names.ts).
 */
import type { LedgerJobName } from '../src/queues/names.js';
import type { Processor } from './deps.js';
import { processExpireDue } from './processors/expire-due.js';
import { processRollPeriod } from './processors/roll-period.js';
import { processAutoTopUp } from './processors/auto-top-up.js';
import { processDeliverWebhook } from './processors/deliver-webhook.js';
import { processResumePayment } from './processors/resume-payment.js';

/** Processor per ledger job name. */
export const LEDGER_PROCESSORS: Record<LedgerJobName, Processor> = {
  'expire-due': processExpireDue,
  'roll-period': processRollPeriod,
  'auto-top-up': processAutoTopUp,
  'deliver-webhook': processDeliverWebhook,
  'resume-payment': processResumePayment,
};
