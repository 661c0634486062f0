/**
 * Processor of the `prune-webhook-log` maintenance job: deletes, in bounded batches, the webhook
 * delivery log's events raised and last attempted more than WEBHOOK_LOG_RETENTION_DAYS ago
 * (src/services/webhook-retention.ts pruneWebhookLog, which says why no reader of the log is
 * misled). Scheduled hourly by workers/start.ts while WEBHOOK_LOG_RETENTION_DAYS > 0.
 */
import type pg from 'pg';
import type { Logger } from 'pino';
import { pruneWebhookLog, type WebhookLogPrune } from '../../src/services/webhook-retention.js';

/**
 * Runs one prune; logs what it deleted (info) when it deleted anything.
 * @param retentionDays WEBHOOK_LOG_RETENTION_DAYS (0: nothing is done).
 * @returns what pruneWebhookLog did (the job's result as BullMQ stores it).
 * @throws the database error (the job fails; batches already committed stay done and the next
 *   scheduled run goes on).
 */
export async function processPruneWebhookLog(pool: pg.Pool, log: Logger, retentionDays: number): Promise<WebhookLogPrune> {
  const prune = await pruneWebhookLog(pool, { retentionDays });
  if (prune.rows > 0) log.info({ events: prune.events, rows: prune.rows, batches: prune.batches, cutoff: prune.cutoff }, 'prune-webhook-log: deleted the delivery attempts of events older than WEBHOOK_LOG_RETENTION_DAYS');
  return prune;
}
