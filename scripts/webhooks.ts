/**
 * CLI: lists webhook events the receiver never acknowledged and sends them again
 * (src/services/webhook-redelivery.ts). The environment is read and validated like the server's
 * (src/config/env.ts: DATABASE_URL, REDIS_URL, QUEUE_PREFIX and their defaults); an invalid one
 * exits 1 listing every problem.
 *
 * Usage (or: npm run webhooks -- <command> ...):
 *   tsx scripts/webhooks.ts failed [--since <ISO-8601>] [--limit <1..1000>] [--json]
 *   tsx scripts/webhooks.ts redeliver <eventId>... [--json]
 *   tsx scripts/webhooks.ts redeliver --all-failed [--since <ISO-8601>] [--json]
 *
 * `failed`: undelivered events (at least one logged attempt, none DELIVERED), newest first
 * (default 50): type, event id, account, attempts, state (in_flight: an attempt is being sent now
 * (WEBHOOK_TIMEOUT_MS: the workers' value); retrying / exhausted / permanent), the
 * last attempt's status code or error and time. `--since`: events first attempted at or after.
 *
 * `redeliver`: an event id is the uuid or the body's `id` (`credit_alert.raised:<uuid>`). Each
 * event's delivery job is re-added on $REDIS_URL's webhook-deliveries queue (prefix QUEUE_PREFIX) with
 * the normal retry policy, or promoted when it is waiting for a retry; the running workers deliver
 * it with their WEBHOOK_URL and WEBHOOK_SECRET (this command sends nothing itself and needs
 * neither). An event with a DELIVERED attempt is refused: it is never sent again; so is one raised
 * before the delivery log was pruned (WEBHOOK_LOG_RETENTION_DAYS) with no attempt logged, whose
 * delivery can no longer be known.
 *
 * Before it looks up or queues any event, `redeliver` checks that Redis answers (within
 * KEY_REVOCATION_ANNOUNCE_TIMEOUT_MS, 3 s): when it refuses or stays silent the command exits 1
 * naming it (password hidden), with nothing queued. PostgreSQL connections wait at most
 * PG_CONNECT_TIMEOUT_MS. `--help` says what the command does.
 *
 * Exits 0 when done; 1 on failure or when a named event was refused (not found, already
 * delivered, log pruned); 2 on usage errors (nothing read or changed).
 */
import { parseArgs } from 'node:util';
import { Redis } from 'ioredis';

import { KEY_REVOCATION_ANNOUNCE_TIMEOUT_MS } from '../src/auth/key-revocation.js';
import { loadEnvOrExit } from '../src/config/env.js';
import { createPgPool, ledgerSessionLimits } from '../src/db/pg.js';
import { answerWithin, closeRedis } from '../src/db/redis-close.js';
import { redactDatabaseUrl } from '../src/db/migrate.js';
import { createQueueJobSink } from '../src/queues/job-sink.js';
import {
  FAILED_WEBHOOKS_MAX_LIMIT,
  listFailedWebhooks,
  parseWebhookEventRef,
  redeliverWebhooks,
  type FailedWebhook,
  type RedeliveryOutcome,
  type WebhookEventRef,
} from '../src/services/webhook-redelivery.js';

const USAGE = `usage:
  npm run webhooks -- failed [--since <ISO-8601>] [--limit <1..${FAILED_WEBHOOKS_MAX_LIMIT}>] [--json]
  npm run webhooks -- redeliver <eventId>... [--json]
  npm run webhooks -- redeliver --all-failed [--since <ISO-8601>] [--json]
<eventId>: the event's uuid, or the body's id (credit_alert.raised:<uuid>, auto_top_up.paused:<uuid>)`;

function usageError(message: string): never {
  console.error(`${message}\n${USAGE}`);
  process.exit(2);
}

let values: { since?: string; limit?: string; json?: boolean; 'all-failed'?: boolean; help?: boolean };
let positionals: string[];
try {
  ({ values, positionals } = parseArgs({
    options: {
      since: { type: 'string' },
      limit: { type: 'string' },
      json: { type: 'boolean' },
      'all-failed': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: true,
  }));
} catch (err) {
  usageError((err as Error).message);
}

if (values.help) {
  console.log(`Lists webhook events the receiver never acknowledged (failed) and hands them back to the running workers to send again (redeliver).\n${USAGE}`);
  process.exit(0);
}

const [command, ...args] = positionals;

/** An ISO-8601 instant with a date part (Date.parse alone takes "1" or "May 5"). */
function parseSince(text: string | undefined): Date | undefined {
  if (text === undefined) return undefined;
  const ms = /^\d{4}-\d{2}-\d{2}([T ][\d:.]+(Z|[+-]\d{2}:?\d{2})?)?$/.test(text) ? Date.parse(text) : NaN;
  if (!Number.isFinite(ms)) usageError(`--since must be an ISO-8601 instant (e.g. 2026-05-01T00:00:00Z), got "${text}"`);
  return new Date(ms);
}

let since: Date | undefined;
let limit: number | undefined;
let refs: WebhookEventRef[] = [];
if (command === 'failed') {
  if (args.length > 0) usageError(`failed takes no event ids (got ${args.join(' ')})`);
  if (values['all-failed']) usageError('--all-failed goes with redeliver');
  since = parseSince(values.since);
  if (values.limit !== undefined) {
    limit = /^\d{1,7}$/.test(values.limit) ? Number(values.limit) : NaN;
    if (!(limit >= 1 && limit <= FAILED_WEBHOOKS_MAX_LIMIT)) usageError(`--limit must be an integer from 1 to ${FAILED_WEBHOOKS_MAX_LIMIT}, got "${values.limit}"`);
  }
} else if (command === 'redeliver') {
  if (values.limit !== undefined) usageError('--limit goes with failed');
  if (values['all-failed'] && args.length > 0) usageError('give event ids or --all-failed, not both');
  if (!values['all-failed'] && args.length === 0) usageError('redeliver needs event ids or --all-failed');
  if (!values['all-failed'] && values.since !== undefined) usageError('--since goes with --all-failed (or with failed)');
  since = parseSince(values.since);
  const bad = args.filter((a) => parseWebhookEventRef(a) === null);
  if (bad.length > 0) usageError(`not an event id (a uuid or <eventType>:<uuid>): ${bad.join(', ')}`);
  refs = args.map((a) => parseWebhookEventRef(a)!);
} else {
  usageError(command === undefined ? 'missing command' : `unknown command "${command}"`);
}

function lastResult(e: FailedWebhook): string {
  const text = e.lastError ?? (e.lastResponseCode !== null ? `HTTP ${e.lastResponseCode}` : '');
  const oneLine = text.replace(/\s+/g, ' ');
  return oneLine.length > 80 ? `${oneLine.slice(0, 79)}…` : oneLine;
}

function printTable(rows: string[][]): void {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const r of rows) console.log(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ').trimEnd());
}

function printFailed(events: FailedWebhook[]): void {
  if (values.json) {
    console.log(JSON.stringify(events.map((e) => ({ ...e, firstAttemptAt: e.firstAttemptAt.toISOString(), lastAttemptAt: e.lastAttemptAt.toISOString() })), null, 2));
    return;
  }
  if (events.length === 0) {
    console.log('no undelivered webhook events');
    return;
  }
  printTable([
    ['LAST ATTEMPT', 'TYPE', 'EVENT ID', 'ACCOUNT ID', 'ATTEMPTS', 'STATE', 'LAST RESULT'],
    ...events.map((e) => [e.lastAttemptAt.toISOString(), e.eventType, e.eventId, e.accountId, String(e.attempts), e.state, lastResult(e)]),
  ]);
  console.log(`${events.length} undelivered event(s)${events.length === (limit ?? 50) ? ' (the limit; there may be more: --limit, --since)' : ''}`);
}

const DESCRIBE: Record<RedeliveryOutcome['status'], string> = {
  QUEUED: 'queued: a fresh delivery job (17 attempts) was added',
  PROMOTED: 'promoted: its job was waiting for a retry and runs now',
  PENDING: 'pending: its delivery job is already waiting or running; nothing changed',
  ALREADY_DELIVERED: 'refused: already delivered (never sent twice)',
  LOG_PRUNED: 'refused: raised before the delivery log was pruned (WEBHOOK_LOG_RETENTION_DAYS) and no attempt is logged; whether it was delivered is unknown',
  NOT_FOUND: 'refused: no such webhook event',
};
const REFUSED: ReadonlyArray<RedeliveryOutcome['status']> = ['ALREADY_DELIVERED', 'LOG_PRUNED', 'NOT_FOUND'];

function printRedelivered(outcomes: RedeliveryOutcome[]): void {
  if (values.json) {
    console.log(JSON.stringify(outcomes.map((o) => ({ id: o.event ? `${o.event.eventType}:${o.event.eventId}` : (o.ref.eventType ? `${o.ref.eventType}:` : '') + o.ref.eventId, status: o.status, accountId: o.event?.accountId, jobId: o.jobId, jobState: o.jobState })), null, 2));
    return;
  }
  if (outcomes.length === 0) {
    console.log('no undelivered webhook events to redeliver');
    return;
  }
  for (const o of outcomes) {
    const id = o.event ? `${o.event.eventType}:${o.event.eventId}` : o.ref.eventId;
    const line = `${id}  ${DESCRIBE[o.status]}${o.jobState ? ` (job was ${o.jobState})` : ''}`;
    if (REFUSED.includes(o.status)) console.error(line);
    else console.log(line);
  }
  const sent = outcomes.filter((o) => o.status === 'QUEUED' || o.status === 'PROMOTED').length;
  console.log(`${sent} of ${outcomes.length} event(s) handed to the workers; follow with: npm run webhooks -- failed`);
}

/** How long `redeliver` waits for Redis to answer before it gives up, in milliseconds (as `apikey:create --revoke`'s announcement). */
const REDIS_ANSWER_MS = KEY_REVOCATION_ANNOUNCE_TIMEOUT_MS;

/**
 * Resolves once Redis answers a PING. BullMQ waits for a connection without a bound, so a Redis
 * that was down (ioredis reconnects for ever) or accepted the connection and never answered kept
 * `redeliver` waiting for ever, before anything was queued.
 * @throws Error `Redis at <url without password> ...` when it refuses or does not answer within {@link REDIS_ANSWER_MS}.
 */
async function redisAnswers(client: Redis, url: string): Promise<void> {
  const where = `Redis at ${redactDatabaseUrl(url)}`;
  try {
    await answerWithin(client.ping(), REDIS_ANSWER_MS, where);
  } catch (err) {
    const message = (err as Error).message;
    throw new Error(message.startsWith(where) ? message : `${where}: ${message}`);
  }
}

const env = loadEnvOrExit();
// The server's connection limits: without PG_CONNECT_TIMEOUT_MS a PostgreSQL that accepts the
// connection and never answers kept the command waiting for ever.
const pool = createPgPool(env.DATABASE_URL, 1, ledgerSessionLimits(env));
let redis: Redis | null = null;
try {
  if (command === 'failed') {
    printFailed(await listFailedWebhooks(pool, { since, limit, webhookTimeoutMs: env.WEBHOOK_TIMEOUT_MS }));
  } else {
    if (values['all-failed']) refs = (await listFailedWebhooks(pool, { since, limit: null })).map((e) => ({ eventType: e.eventType, eventId: e.eventId }));
    redis = new Redis(env.REDIS_URL, { maxRetriesPerRequest: 1, connectTimeout: REDIS_ANSWER_MS, connectionName: 'creditpool-webhooks-cli' });
    // Without a listener ioredis prints each failed connection attempt as an unhandled error with
    // its stack; the command that needed Redis fails with the error itself (caught below).
    redis.on('error', () => undefined);
    await redisAnswers(redis, env.REDIS_URL);
    const sink = createQueueJobSink(redis, env.QUEUE_PREFIX);
    for (const q of [sink.queue, sink.webhookQueue]) q.on('error', () => undefined); // BullMQ console.errors them otherwise
    try {
      const outcomes = await redeliverWebhooks(pool, sink, refs);
      printRedelivered(outcomes);
      if (!values['all-failed'] && outcomes.some((o) => REFUSED.includes(o.status))) process.exitCode = 1;
    } finally {
      await sink.close();
    }
  }
} catch (err) {
  console.error(`failed: ${(err as Error).message}`);
  process.exitCode = 1;
} finally {
  if (redis) await closeRedis(redis);
  await pool.end();
}
