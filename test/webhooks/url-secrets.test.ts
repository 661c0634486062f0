/**
 * A WEBHOOK_URL carrying its receiver's token in the path or the query (Slack's
 * `/services/T…/B…/<token>`, `?token=…`: the common case) is sent to whole, yet the token is
 * never written to the delivery log (webhook_deliveries), the log lines, the error a job fails
 * with (BullMQ keeps it in Redis) nor the output of `npm run webhooks`. The receiver here refuses
 * the first account's request the way Express does (404 `Cannot POST <path>`), echoing the path
 * and query into the body the attempt's error keeps. Real PostgreSQL, real Redis (a queue prefix
 * of this file), a real receiver on 127.0.0.1, the real logger (src/logging.ts) writing to memory,
 * the CLI as its own process. No relay runs: the alert's outbox job is taken out and the test adds
 * the delivery job itself.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { QueueEvents } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/logging.js';
import { jobOptions } from '../../src/queues/job-sink.js';
import { WEBHOOK_DELIVERY_QUEUE } from '../../src/queues/names.js';
import { deliverWebhook, redactWebhookUrl, redactWebhookUrlIn, webhookJob } from '../../src/services/webhooks.js';
import { startWorkers, type RunningWorkers } from '../../workers/start.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { queueEventsFromNow } from '../setup/queue-events.js';
import { runScript } from '../setup/run-script.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { collectOutcomes, oneAlert, receiverEnv, waitOn } from './helpers.js';

const SECRET = 'whsec_url_secrets_0123456789abcdef0123456789';
const PATH_TOKEN = 'XXXXpathSecret5c1e9b';
const QUERY_TOKEN = 'querySecret8d2f7a';
const SECRETS = [PATH_TOKEN, QUERY_TOKEN];
const prefix = `cp-test-url-secrets-${randomUUID()}`;
const fileStart = new Date();

/** Request paths (with query) the receiver got, by the body's data.accountId. */
const received = new Map<string, string[]>();
/** Accounts whose requests the receiver refuses like Express (404 `Cannot POST <path>`). */
const refused = new Set<string>();
let server: Server;
let webhookUrl: string;
let services: TestServices;
let workers: RunningWorkers;
let webhookEvents: QueueEvents;
let jobs: ReturnType<typeof collectOutcomes>;
const lines: string[] = [];
const logged = new EventEmitter();

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const accountId = (JSON.parse(Buffer.concat(chunks).toString('utf8')) as { data: { accountId: string } }).data.accountId;
      received.set(accountId, [...(received.get(accountId) ?? []), req.url ?? '']);
      if (refused.has(accountId)) res.writeHead(404, { 'content-type': 'text/html' }).end(`<pre>Cannot POST ${req.url} (token ${decodeURIComponent(QUERY_TOKEN)})</pre>`);
      else res.writeHead(200).end('ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  webhookUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/T000/B000/${PATH_TOKEN}?token=${QUERY_TOKEN}&v=1`;
  services = createTestServices(4);
  webhookEvents = await queueEventsFromNow(WEBHOOK_DELIVERY_QUEUE, prefix);
  jobs = collectOutcomes(webhookEvents);
  const log = createLogger({ level: 'debug', destination: { write: (line: string) => void (lines.push(line), logged.emit('line')) } });
  workers = await startWorkers({ env: receiverEnv({ url: webhookUrl }, SECRET), pool: services.pool, log, prefix, services, relay: false });
});

afterAll(async () => {
  await workers?.close();
  await workers?.webhookQueue.obliterate({ force: true }).catch(() => undefined);
  await workers?.ledgerQueue.obliterate({ force: true }).catch(() => undefined);
  await webhookEvents?.close();
  server?.closeAllConnections();
  await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
  await services?.close();
});

function expectNoSecret(what: string, text: string): void {
  for (const s of SECRETS) expect(text, `${what} carries ${s}`).not.toContain(s);
}

/** The full path and query the configuration names (what the receiver must get). */
const fullPath = () => `/T000/B000/${PATH_TOKEN}?token=${QUERY_TOKEN}&v=1`;

describe('WEBHOOK_URL with a token in its path and query', () => {
  it('the form shown: scheme, host and port, then "/…" for any path or query', () => {
    expect(redactWebhookUrl('https://hooks.slack.com/services/T000/B000/XXXXsecret')).toBe('https://hooks.slack.com/…');
    expect(redactWebhookUrl('https://receiver.example:8443/?token=abc')).toBe('https://receiver.example:8443/…');
    expect(redactWebhookUrl('https://receiver.example/secret-as-first-segment')).toBe('https://receiver.example/…');
    expect(redactWebhookUrl('https://receiver.example')).toBe('https://receiver.example/');
    expect(redactWebhookUrl('https://receiver.example/')).toBe('https://receiver.example/');
    expect(redactWebhookUrl('https://user:pw@receiver.example/x')).toBe('https://receiver.example/…');
    expect(redactWebhookUrl('not a url /with/secret')).toBe('[redacted]');
    const url = 'https://hooks.example.com/hooks/catch/123456/abcdefTOKEN?api_key=k3y-v4lue-1&x=1';
    expect(redactWebhookUrlIn(`failed to POST ${url}; Cannot POST /hooks/catch/123456/abcdefTOKEN?api_key=k3y-v4lue-1&x=1; bad key k3y-v4lue-1; unknown abcdefTOKEN`, url)).toBe(
      'failed to POST https://hooks.example.com/…; Cannot POST /…; bad key …; unknown …',
    );
  });

  it('a refused delivery: the receiver gets the whole URL; delivery log, log lines, job error and CLI output do not carry the token', async () => {
    const { accountId, alertId } = await oneAlert(services);
    refused.add(accountId);
    const job = webhookJob({ eventType: 'credit_alert.raised', eventId: alertId, accountId });
    await workers.webhookQueue.add(job.name, job.data, jobOptions(job, Date.now()));
    const outcome = await jobs.wait(job.jobId);

    // Sent to the configured URL whole, refused for good (404) after one attempt.
    expect(received.get(accountId)).toEqual([fullPath()]);
    expect(outcome.state).toBe('failed');
    const reason = outcome.state === 'failed' ? outcome.failedReason : '';
    expect(reason).toContain('HTTP 404: <pre>Cannot POST /… (token …)</pre>');
    expectNoSecret('job failure reason', reason);

    const { rows } = await services.pool.query('SELECT url, status, response_code, error FROM webhook_deliveries WHERE event_id = $1', [alertId]);
    expect(rows).toEqual([{ url: `http://127.0.0.1:${new URL(webhookUrl).port}/…`, status: 'FAILED', response_code: 404, error: 'HTTP 404: <pre>Cannot POST /… (token …)</pre>' }]);
    expectNoSecret('delivery log', JSON.stringify(rows));

    // The workers log the failed attempt twice: the delivery's own line and the job's.
    const jobLine = () => lines.some((l) => l.includes('job attempt failed') && l.includes(job.jobId));
    await waitOn(logged, 'line', jobLine, 'the job failure log line');
    expect(lines.join('')).toContain('webhook delivery failed');
    expectNoSecret('log lines', lines.join(''));

    // The operator's CLI (an operator's shell: no webhook settings), table and JSON.
    const env = { ...process.env, NODE_ENV: 'test', DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: TEST_REDIS_URL, QUEUE_PREFIX: prefix, WEBHOOK_URL: '', WEBHOOK_SECRET: '' };
    for (const args of [['failed', '--since', fileStart.toISOString(), '--limit', '1000'], ['failed', '--since', fileStart.toISOString(), '--limit', '1000', '--json']]) {
      const run = await runScript('scripts/webhooks.ts', args, env);
      expect(run.code, run.stderr).toBe(0);
      expect(run.stdout).toContain(alertId);
      expect(run.stdout).toContain('Cannot POST /…');
      expectNoSecret(`npm run webhooks -- ${args.join(' ')}`, run.stdout + run.stderr);
    }
  });

  it('a delivered attempt: sent to the whole URL, logged with the redacted one', async () => {
    const { accountId, alertId } = await oneAlert(services);
    const env = receiverEnv({ url: webhookUrl }, SECRET);
    const mine: string[] = [];
    const log = createLogger({ level: 'debug', destination: { write: (line: string) => void mine.push(line) } });
    const result = await deliverWebhook({ pool: services.pool, env, log }, { eventType: 'credit_alert.raised', eventId: alertId, accountId }, 1);
    expect(result).toMatchObject({ status: 'DELIVERED' });
    expect(received.get(accountId)).toEqual([fullPath()]);
    const { rows } = await services.pool.query('SELECT url, status FROM webhook_deliveries WHERE event_id = $1', [alertId]);
    expect(rows).toEqual([{ url: `http://127.0.0.1:${new URL(webhookUrl).port}/…`, status: 'DELIVERED' }]);
    expect(mine.join('')).toContain('webhook delivered');
    expectNoSecret('log lines', mine.join(''));
  });

  it('a network error names no part of the URL beyond its host', async () => {
    const { accountId, alertId } = await oneAlert(services);
    // A port nothing listens on (the receiver's, once closed, is not certain to stay free: take a fresh one and close it).
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const env = receiverEnv({ url: `http://127.0.0.1:${port}/T000/B000/${PATH_TOKEN}?token=${QUERY_TOKEN}` }, SECRET);
    const err = await deliverWebhook({ pool: services.pool, env }, { eventType: 'credit_alert.raised', eventId: alertId, accountId }, 1).then(
      () => null,
      (e: unknown) => e as Error,
    );
    expect(err?.message).toMatch(/fetch failed/);
    expectNoSecret('error', err!.message);
    const { rows } = await services.pool.query('SELECT url, error FROM webhook_deliveries WHERE event_id = $1', [alertId]);
    expect(rows[0].url).toBe(`http://127.0.0.1:${port}/…`);
    expectNoSecret('delivery log', JSON.stringify(rows));
  });
});
