/**
 * A BullMQ QueueEvents that hears every event emitted after this call returns.
 *
 * QueueEvents reads the queue's events stream with XREAD from `$` (only entries added after that
 * XREAD is issued) and `waitUntilReady()` waits for the connection only, not for the first
 * XREAD: a job that fails (or completes) right after a test adds it can emit its event before the
 * reader is blocked on the stream, and a test waiting for that event waits forever. Starting from
 * the stream's last entry as read here (`lastEventId`) closes that gap.
 */
import { QueueEvents } from 'bullmq';
import { Redis } from 'ioredis';
import { TEST_REDIS_URL } from './env.js';

/**
 * Opens a QueueEvents on queue `queueName` under `prefix` (on a connection of its own; close()
 * the result) that emits every event added to the queue's events stream after it returns.
 */
export async function queueEventsFromNow(queueName: string, prefix: string): Promise<QueueEvents> {
  const connection = new Redis(TEST_REDIS_URL, { maxRetriesPerRequest: null });
  const [last] = await connection.xrevrange(`${prefix}:${queueName}:events`, '+', '-', 'COUNT', 1);
  const events = new QueueEvents(queueName, { connection, prefix, lastEventId: last?.[0] ?? '0-0' });
  await events.waitUntilReady();
  return events;
}
