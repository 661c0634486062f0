/**
 * Queue and job names shared by producers and workers. The same name runs through every room:
 * service -> processor workers/processors/<job>.ts -> job <job>.
 */

/** The maintenance queue: periodic checks of the ledger. */
export const MAINTENANCE_QUEUE = 'maintenance';

/** Job: reconcile the ledger of recently changed accounts (see services/reconcile-ledger.ts). */
export const RECONCILE_LEDGER_JOB = 'reconcile-ledger';

/** Every how many milliseconds the reconcile job is scheduled. */
export const RECONCILE_EVERY_MS = 60_000;
