/**
 * A local stand-in for Stripe's API for the billing tests: an HTTP server on a loopback port that
 * records each request and answers the next planned answer (first planned, first served, whatever
 * the path), and a StripeProvider (the real adapter on the official SDK) pointed at it. Plus the
 * bodies Stripe answers with (PaymentIntents, card errors, search results) and signed webhook
 * events (the SDK's `generateTestHeaderString`, Stripe's own signature scheme).
 */
import { once } from 'node:events';
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import Stripe from 'stripe';
import { StripeProvider, type StripeConnection } from '../../src/payments/stripe.js';

/** One answer of the fake: a status and JSON body, and extra headers. */
export interface FakeAnswer {
  status: number;
  body: unknown;
  headers?: Record<string, string>;
}

/** What one request received. */
export interface Recorded {
  method: string;
  path: string;
  headers: IncomingMessage['headers'];
  form: URLSearchParams;
}

/**
 * What the fake answers next: an answer, no answer at all (`hang`), or a function of the request
 * that answers later (a test holds a request in flight with it).
 */
export type Planned = FakeAnswer | 'hang' | ((request: Recorded) => Promise<FakeAnswer | 'hang'>);

/** A running fake Stripe API. */
export interface FakeStripe {
  port: number;
  /** Answers still to be given, in order (a request with none planned gets a 500 api_error). */
  planned: Planned[];
  /** Requests received so far, in order. */
  recorded: Recorded[];
  /** Where the SDK reaches this fake (no SDK retries), for createPaymentProvider's `connection`. */
  connection: StripeConnection;
  /** A StripeProvider on this fake: no SDK retries unless asked, webhook secret `whsec_creditpool` unless given. */
  provider(opts?: { timeoutMs?: number; maxNetworkRetries?: number }): StripeProvider;
  close(): Promise<void>;
}

/** Starts the fake on a free loopback port. */
export async function startFakeStripe(): Promise<FakeStripe> {
  const planned: Planned[] = [];
  const recorded: Recorded[] = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      const request = { method: req.method ?? '', path: req.url ?? '', headers: req.headers, form: new URLSearchParams(body) };
      recorded.push(request);
      const next = planned.shift() ?? { status: 500, body: { error: { type: 'api_error', message: 'nothing planned' } } };
      void Promise.resolve(typeof next === 'function' ? next(request) : next).then((answer) => {
        if (answer === 'hang') return;
        res.writeHead(answer.status, { 'content-type': 'application/json', 'request-id': `req_${recorded.length}`, ...answer.headers });
        res.end(JSON.stringify(answer.body));
      });
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    planned,
    recorded,
    connection: { host: '127.0.0.1', port, protocol: 'http', maxNetworkRetries: 0 },
    provider: (opts = {}) =>
      new StripeProvider({
        secretKey: 'sk_test_creditpool',
        host: '127.0.0.1',
        port,
        protocol: 'http',
        maxNetworkRetries: opts.maxNetworkRetries ?? 0,
        ...(opts.timeoutMs !== undefined ? { timeoutMs: opts.timeoutMs } : {}),
      }),
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A PaymentIntent as Stripe's API shows it (amount in cents, USD unless `extra` says otherwise). */
export function paymentIntent(status: string, id = 'pi_123', extra: Record<string, unknown> = {}) {
  return { id, object: 'payment_intent', status, amount: 999, currency: 'usd', metadata: {}, last_payment_error: null, ...extra };
}

/** Stripe's 200 answer with a PaymentIntent. */
export function intentAnswer(status: string, id = 'pi_123', extra: Record<string, unknown> = {}): FakeAnswer {
  return { status: 200, body: paymentIntent(status, id, extra) };
}

/** Stripe's 402 card error of `code` (its PaymentIntent back in requires_payment_method). */
export function cardErrorAnswer(code: string, extra: Record<string, unknown> = {}): FakeAnswer {
  return {
    status: 402,
    body: { error: { type: 'card_error', code, message: `card error ${code}`, payment_intent: { id: 'pi_err', object: 'payment_intent', status: 'requires_payment_method' }, ...extra } },
  };
}

/** Stripe's 500 api_error (no `stripe-should-retry`): the outcome of the request is unknown. */
export const API_ERROR_ANSWER: FakeAnswer = { status: 500, body: { error: { type: 'api_error', message: 'boom' } } };

/** Stripe's answer to a PaymentIntent search finding `data`. */
export function searchAnswer(...data: unknown[]): FakeAnswer {
  return { status: 200, body: { object: 'search_result', url: '/v1/payment_intents/search', has_more: false, data } };
}

/**
 * A Stripe event of `type` about `object` (a PaymentIntent), as Stripe POSTs it to a webhook
 * endpoint, `created` now in whole Unix seconds. The service orders a charge's refund events and
 * refund failures by `created` (services/charge-reversal.ts, refund-failures.ts): a test whose
 * outcome depends on that order sets `created` explicitly (as refund-failures.test.ts does), since
 * two events made a moment apart fall in the same second or in two, as a boundary falls.
 */
export function stripeEvent(type: string, object: Record<string, unknown>, id = `evt_${randomUUID().replaceAll('-', '')}`) {
  return { id, object: 'event', api_version: '2025-01-27.acacia', created: Math.floor(Date.now() / 1000), livemode: false, pending_webhooks: 1, request: { id: null, idempotency_key: null }, type, data: { object } };
}

/**
 * POSTs `payload` (a raw JSON string) to a webhook endpoint with a `Stripe-Signature` header made
 * by the SDK under `secret` (`timestamp` in Unix seconds: default now), or with `signature` as is.
 * @returns the status and parsed JSON body.
 */
export async function postStripeEvent(
  url: string,
  payload: string,
  opts: { secret?: string; timestamp?: number; signature?: string | null } = {},
): Promise<{ status: number; body: any }> {
  const signature =
    opts.signature !== undefined
      ? opts.signature
      : Stripe.webhooks.generateTestHeaderString({ payload, secret: opts.secret ?? 'whsec_creditpool', ...(opts.timestamp !== undefined ? { timestamp: opts.timestamp } : {}) });
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(signature === null ? {} : { 'stripe-signature': signature }) },
    body: payload,
  });
  const text = await res.text();
  let body: unknown = text;
  try {
    body = JSON.parse(text);
  } catch {
    // not JSON (e.g. a 404 page): kept as text
  }
  return { status: res.status, body };
}

/**
 * An answer the fake gives only once `release()` is called: `started` resolves when its request
 * has arrived (the request is then in flight, e.g. a charge whose answer has not come back yet).
 */
export function heldAnswer(answer: FakeAnswer): { planned: Planned; started: Promise<void>; release: () => void } {
  let arrived!: () => void;
  let release!: () => void;
  const started = new Promise<void>((resolve) => (arrived = resolve));
  const released = new Promise<void>((resolve) => (release = resolve));
  const planned: Planned = async () => {
    arrived();
    await released;
    return answer;
  };
  return { planned, started, release };
}
