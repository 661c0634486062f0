/**
 * Webhook test helpers: a real HTTP receiver on 127.0.0.1 (a free port) that records every
 * request (raw body, headers, arrival time) and answers from a per-account script, and a
 * collector of BullMQ queue events. Waiting is event-driven: `waitFor` re-checks its condition
 * on every request / queue event; its timeout only turns a hang into a failure.
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import type { QueueEvents } from 'bullmq';
import { pino } from 'pino';
import { randomUUID } from 'node:crypto';
import { expect } from 'vitest';
import { recordUsage } from '../../src/services/record-usage.js';
import { createFundedAccount } from '../factories/accounts.js';
import { parseEnv, type Env } from '../../src/config/env.js';
import { LEDGER_JOBS_QUEUE, WEBHOOK_DELIVERY_QUEUE } from '../../src/queues/names.js';
import { startWorkers, type RunningWorkers } from '../../workers/start.js';
import { queueEventsFromNow } from '../setup/queue-events.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';

/** One request the receiver got. */
export interface ReceivedWebhook {
  headers: IncomingHttpHeaders;
  rawBody: string;
  /** performance.now() at arrival (ms). */
  atMs: number;
  /** Wall clock at arrival, whole seconds (for signature verification). */
  atSeconds: number;
  /** data.accountId of the body, if any. */
  accountId: string | null;
  /** The creditpool-event-id header. */
  eventId: string;
}

/** How the receiver answers one request: a status, a redirect, or never (the client times out). */
export type ReceiverStep = number | 'hang' | { status: number; location: string };

/** A running receiver. */
export interface Receiver {
  url: string;
  requests: ReceivedWebhook[];
  /** Requests whose body's data.accountId is `accountId`. */
  forAccount(accountId: string): ReceivedWebhook[];
  /** The next requests of `accountId` are answered with `steps`, in order; after them, 200. */
  script(accountId: string, steps: ReceiverStep[]): void;
  /** Called at each request before it is answered; may delay the answer (returns a promise). */
  beforeAnswer: ((req: ReceivedWebhook) => Promise<void>) | null;
  /** Resolves when `pred()` holds, re-checked at every request. */
  waitFor(pred: () => boolean, what: string, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

/** Resolves when `pred()` holds, re-checked whenever `emitter` emits `event`; rejects after `timeoutMs`. */
export function waitOn(emitter: EventEmitter, event: string, pred: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  if (pred()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!pred()) return;
      emitter.off(event, check);
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(() => {
      emitter.off(event, check);
      reject(new Error(`timed out waiting for ${what}`));
    }, timeoutMs);
    emitter.on(event, check);
  });
}

/** Starts a receiver on a free loopback port. */
export async function startReceiver(): Promise<Receiver> {
  const emitter = new EventEmitter();
  emitter.setMaxListeners(100);
  const scripts = new Map<string, ReceiverStep[]>();
  const requests: ReceivedWebhook[] = [];
  const receiver: Receiver = {
    url: '',
    requests,
    forAccount: (accountId) => requests.filter((r) => r.accountId === accountId),
    script: (accountId, steps) => void scripts.set(accountId, [...steps]),
    beforeAnswer: null,
    waitFor: (pred, what, timeoutMs) => waitOn(emitter, 'request', pred, what, timeoutMs),
    close: async () => undefined,
  };
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      const rawBody = Buffer.concat(chunks).toString('utf8');
      let accountId: string | null = null;
      try {
        accountId = (JSON.parse(rawBody) as { data?: { accountId?: string } }).data?.accountId ?? null;
      } catch {
        accountId = null;
      }
      const got: ReceivedWebhook = {
        headers: req.headers,
        rawBody,
        atMs: performance.now(),
        atSeconds: Math.floor(Date.now() / 1000),
        accountId,
        eventId: String(req.headers['creditpool-event-id'] ?? ''),
      };
      requests.push(got);
      const step = (accountId ? scripts.get(accountId)?.shift() : undefined) ?? 200;
      emitter.emit('request');
      if (receiver.beforeAnswer) {
        try {
          await receiver.beforeAnswer(got);
        } catch (err) {
          // A failing hook answers 500 with its message, which the test then sees, instead of an
          // unhandled rejection inside this listener.
          res.writeHead(500, { 'content-type': 'text/plain' }).end(`receiver hook failed: ${String(err)}`);
          return;
        }
      }
      if (step === 'hang') return; // never answered; close() destroys the socket
      if (typeof step === 'object') {
        res.writeHead(step.status, { location: step.location }).end();
        return;
      }
      res.writeHead(step, { 'content-type': 'text/plain' }).end(step >= 200 && step < 300 ? 'ok' : `refused with ${step}`);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  receiver.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks/creditpool`;
  receiver.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return receiver;
}

/** Final outcome of one BullMQ job, as QueueEvents reports it. */
export type JobOutcome = { state: 'completed'; returnvalue: unknown } | { state: 'failed'; failedReason: string };

/** Collects final job outcomes of queues by jobId (attach before the jobs can finish; a jobId is expected on one queue). */
export function collectOutcomes(...queues: QueueEvents[]): { outcomes: Map<string, JobOutcome>; wait(jobId: string, timeoutMs?: number): Promise<JobOutcome> } {
  const outcomes = new Map<string, JobOutcome>();
  const emitter = new EventEmitter();
  emitter.setMaxListeners(100);
  for (const events of queues) {
    events.on('completed', ({ jobId, returnvalue }) => {
      outcomes.set(jobId, { state: 'completed', returnvalue });
      emitter.emit('outcome');
    });
    events.on('failed', ({ jobId, failedReason }) => {
      outcomes.set(jobId, { state: 'failed', failedReason });
      emitter.emit('outcome');
    });
  }
  return {
    outcomes,
    async wait(jobId, timeoutMs = 30_000) {
      await waitOn(emitter, 'outcome', () => outcomes.has(jobId), `job ${jobId} to finish`, timeoutMs);
      return outcomes.get(jobId)!;
    },
  };
}

/**
 * A test file's webhook pipeline: a receiver, services on the test database, the workers with
 * the outbox relay (queue prefix `prefix`, WEBHOOK_URL = the receiver, signed with `secret`, the
 * relay polling every 100 ms, the sweep out of the way), and a collector of the ledger-jobs and
 * webhook-deliveries queues' events opened before the workers start.
 */
export interface WebhookPipeline {
  receiver: Receiver;
  services: TestServices;
  env: Env;
  /** The ledger-jobs queue's events. */
  events: QueueEvents;
  /** The webhook-deliveries queue's events. */
  webhookEvents: QueueEvents;
  /** Outcomes of both queues' jobs. */
  jobs: ReturnType<typeof collectOutcomes>;
  workers: RunningWorkers;
  /** Stops the workers, empties the queue, closes the rest. */
  close(): Promise<void>;
}

/**
 * The test environment of webhooks sent to `receiver` signed with `secret` (NODE_ENV=test, the
 * test database and Redis), the sweep out of the way (SWEEP_EVERY_MS one hour: a test that wants
 * a sweep runs it itself), plus `overrides`.
 */
export function receiverEnv(receiver: Pick<Receiver, 'url'>, secret: string, overrides: Record<string, string> = {}): Env {
  return parseEnv({
    NODE_ENV: 'test',
    REDIS_URL: TEST_REDIS_URL,
    DATABASE_URL: TEST_DATABASE_URL,
    WEBHOOK_URL: receiver.url,
    WEBHOOK_SECRET: secret,
    SWEEP_EVERY_MS: '3600000',
    ...overrides,
  });
}

/** Starts a {@link WebhookPipeline}; call close() in afterAll. `envOverrides`: more environment variables (e.g. WEBHOOK_TIMEOUT_MS). */
export async function startWebhookPipeline(secret: string, prefix: string, envOverrides: Record<string, string> = {}): Promise<WebhookPipeline> {
  const receiver = await startReceiver();
  const services = createTestServices(8);
  const env = receiverEnv(receiver, secret, { OUTBOX_POLL_INTERVAL_MS: '100', ...envOverrides });
  const events = await queueEventsFromNow(LEDGER_JOBS_QUEUE, prefix);
  const webhookEvents = await queueEventsFromNow(WEBHOOK_DELIVERY_QUEUE, prefix);
  const jobs = collectOutcomes(events, webhookEvents);
  const workers = await startWorkers({ env, pool: services.pool, log: pino({ level: 'silent' }), prefix, services, relay: true });
  return {
    receiver,
    services,
    env,
    events,
    webhookEvents,
    jobs,
    workers,
    async close() {
      await workers.close();
      await workers.ledgerQueue.obliterate({ force: true }).catch(() => undefined);
      await workers.webhookQueue.obliterate({ force: true }).catch(() => undefined);
      await events.close();
      await webhookEvents.close();
      await receiver.close();
      await services.close();
    },
  };
}

/** One POST of the followed account's events, as {@link startAccountHoldingReceiver} records it. */
export interface HeldWebhook {
  eventId: string;
  /** The creditpool-delivery-attempt header. */
  attempt: string;
  body: string;
}

/** A receiver that keeps one account's webhook POSTs unanswered (see {@link startAccountHoldingReceiver}). */
export interface AccountHoldingReceiver {
  /** Its URL (WEBHOOK_URL), on 127.0.0.1 and a free port. */
  url: string;
  /** Follows `accountId`'s events from now on; before it, every POST is answered 200. */
  follow(accountId: string): void;
  /** The followed account's POSTs, in arrival order. */
  received: HeldWebhook[];
  /** Resolves when the first of the followed account's POSTs arrives. */
  first: Promise<void>;
  /** Drops the connections held unanswered and closes the server. */
  close(): Promise<void>;
}

/**
 * Starts a receiver that keeps the followed account's POSTs unanswered (all of them, or with
 * `holdFirstOnly` the first only, answering the later ones 200), so a delivery stays in flight
 * for as long as a test needs. Workers and relays drain the shared test database's whole outbox,
 * so other test files' events reach it too: those are answered 200 and not recorded.
 */
export async function startAccountHoldingReceiver(opts: { holdFirstOnly: boolean }): Promise<AccountHoldingReceiver> {
  let followed: string | null = null;
  const received: HeldWebhook[] = [];
  const unanswered: import('node:http').ServerResponse[] = [];
  let firstArrived!: () => void;
  const first = new Promise<void>((resolve) => (firstArrived = resolve));
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      if (followed === null || (JSON.parse(body) as { data?: { accountId?: string } }).data?.accountId !== followed) {
        res.writeHead(200).end('ok');
        return;
      }
      received.push({ eventId: String(req.headers['creditpool-event-id']), attempt: String(req.headers['creditpool-delivery-attempt']), body });
      if (opts.holdFirstOnly && received.length > 1) {
        res.writeHead(200).end('ok');
        return;
      }
      unanswered.push(res);
      firstArrived();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/hooks`,
    follow: (accountId) => {
      followed = accountId;
    },
    received,
    first,
    close: async () => {
      for (const res of unanswered) res.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * A new account funded with 100 paid credits and charged 80 (down to 20 %: one credit alert),
 * with the alert's webhook delivery job taken out of the outbox, so that a test delivers it itself.
 * @returns the account's and the alert's database ids.
 */
export async function oneAlert(services: TestServices): Promise<{ accountId: string; alertId: string }> {
  const accountId = await createFundedAccount(services, { paid: 100 });
  await recordUsage(services, { accountId, idempotencyKey: `use-${randomUUID()}`, category: 'units', quantities: { units: '80' } });
  await services.pool.query(`DELETE FROM outbox_events WHERE account_id = $1 AND topic = 'job' AND payload->>'name' = 'deliver-webhook'`, [accountId]);
  const { rows } = await services.pool.query('SELECT id FROM credit_alerts WHERE account_id = $1', [accountId]);
  expect(rows).toHaveLength(1);
  return { accountId, alertId: rows[0].id };
}
