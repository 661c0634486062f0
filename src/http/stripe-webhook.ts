/**
 * The Stripe webhook endpoint, `POST /webhooks/stripe` (src/server.ts routes it before
 * graphql-yoga; on only with PAYMENT_PROVIDER=stripe and STRIPE_WEBHOOK_SECRET or
 * STRIPE_TEST_WEBHOOK_SECRET set): Stripe's own report of a PaymentIntent's outcome settles the
 * creditpool payment it names, and a refund or dispute of its charge takes its credit back (services/payment-events.ts applyChargeEvent, the same code as the
 * charge's synchronous answer). Two Stripe endpoints may share the URL, each with its own signing
 * secret: STRIPE_WEBHOOK_SECRET's (the mode of STRIPE_SECRET_KEY: live for a live key) and
 * STRIPE_TEST_WEBHOOK_SECRET's (test mode); a secret only signs events of its mode (`livemode`).
 *
 * What it answers (Stripe only reads the status: a 2xx acknowledges the event, anything else is
 * delivered again, in live mode for up to 3 days with exponential backoff:
 * https://docs.stripe.com/webhooks#retries):
 * - 200 `{ received: true, eventId, result }` for every verified event, settled or not: an event
 *   type it does not handle, a payment it does not know, one already settled (Stripe delivers at
 *   least once, maybe twice, in any order: https://docs.stripe.com/webhooks#handle-duplicate-events);
 * - 400 (`extensions.code` BAD_USER_INPUT, `reason` INVALID_SIGNATURE) when the `Stripe-Signature`
 *   header is missing, does not match the raw body under either secret, or is older than
 *   Stripe's 5-minute tolerance (https://docs.stripe.com/webhooks#verify-events),
 *   (reason LIVEMODE_MISMATCH) when it is valid only under a secret of the other mode than the
 *   event's `livemode` (a secret configured for the wrong mode, or a forgery: refused rather than
 *   acknowledged, so that Stripe delivers it again once the secrets are right), and
 *   (reason INVALID_PAYLOAD) for a signed body that is not an event: nothing is changed;
 * - 200 `result: 'mismatch'` (nothing changed, logged) for a verified event whose `livemode` is
 *   not the mode its payment's account is charged in (applyChargeEvent);
 * - `charge.refunded` and `charge.dispute.created` take back the unused credit of the SUCCEEDED
 *   payment whose PaymentIntent the Charge or Dispute names (services/payment-reversals.ts
 *   applyReversalEvent): 200 with `result` reversed / recorded / unchanged / kept (no payment is
 *   settled with that PaymentIntent yet: applied when one is) / unknown_payment / mismatch, 503
 *   or 500 as below when it cannot be applied now; 503 (reason REFUND_FAILURE_PENDING) for a
 *   `charge.refunded` made after the latest one applied whose cumulative amount is lower: a refund
 *   failure made before it has not come yet (applyReversalEvent result `retry_later`);
 * - `charge.dispute.closed` with status `won` and `charge.dispute.funds_reinstated` give back the
 *   credit the dispute took (services/charge-reversal.ts applyDisputeWonLocked): 200 with `result`
 *   restored (or recorded / unchanged / kept / ... as above), 503 BALANCE_LIMIT when the give-back
 *   would pass the balance limit; a closure `lost` or `warning_closed` is `ignored`;
 * - `charge.refund.updated` / `refund.updated` whose Refund has status `failed` or `canceled`, and
 *   `refund.failed`, give back the credit the failed (or canceled) refund took (services/refund-failures.ts):
 *   200 with `result` restored (or recorded / unchanged / unknown_payment / mismatch /
 *   not_applicable: no payment is settled with that PaymentIntent), 503 BALANCE_LIMIT as above;
 *   other refund updates are `ignored`;
 * - 503 UNAVAILABLE when the settlement cannot be made now: the database is unreachable, or the
 *   grant would take the balance past its limit (BALANCE_LIMIT; the customer paid, so it is
 *   logged as an error and Stripe keeps delivering the event until the balance has room);
 * - 500 INTERNAL_SERVER_ERROR for anything unexpected, masked and logged with the request id
 *   (graphql/errors.ts maskError): Stripe delivers it again too;
 * - 405 for any other method.
 * The body is read raw (the signature is over the exact bytes), within the server's body limit
 * (MAX_REQUEST_BODY_BYTES, checked from Content-Length by http/body-limit.ts before this runs).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from 'pino';
import type Stripe from 'stripe';
import { maskError } from '../graphql/errors.js';
import { LedgerError } from '../ledger/errors.js';
import { isBalanceLimitRefusal } from '../ledger/refusals.js';
import { WebhookLivemodeError, chargeEventOf, reversalEventOf } from '../payments/stripe.js';
import { applyChargeEvent } from '../services/payment-events.js';
import { applyReversalEvent } from '../services/payment-reversals.js';
import { stripeWebhookActor } from '../audit/audit-log.js';
import type { ServiceContext } from '../services/context.js';

/** The path Stripe's webhook endpoint is registered at (Stripe Dashboard, Developers > Webhooks). */
export const STRIPE_WEBHOOK_PATH = '/webhooks/stripe';

/** What the endpoint needs. */
export interface StripeWebhookDeps {
  /**
   * Verifies the `Stripe-Signature` header against the raw body and parses the event
   * (payments/stripe.ts verifyWebhookEvent under the endpoint secrets and their modes).
   * @throws Stripe.errors.StripeSignatureVerificationError for a bad signature; WebhookLivemodeError
   *   for an event signed with the other mode's secret; SyntaxError for a signed body that is not JSON.
   */
  verify(rawBody: Buffer, signatureHeader: string): Stripe.Event;
  /** The `livemode` of the charges made for an account of this mode (payments/index.ts stripeChargeLivemode). */
  chargeLivemode(accountTestMode: boolean): boolean;
  /** The services the payments are settled with (their pool, clock and log). */
  services: ServiceContext;
  log: Logger;
}

/** Writes a JSON answer. */
function answer(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(JSON.stringify(body));
}

/** The body of an error answer, shaped like the server's other HTTP refusals (http/body-limit.ts). */
function errorBody(message: string, extensions: Record<string, unknown>) {
  return { errors: [{ message, extensions }] };
}

/** Reads the whole request body (its size is bounded by the server's Content-Length check). */
function readRawBody(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.once('end', () => resolve(Buffer.concat(chunks)));
    req.once('error', reject);
    req.once('close', () => {
      if (!req.complete) reject(new Error('the request ended before its body was complete'));
    });
  });
}

/**
 * Builds the handler of `POST /webhooks/stripe` (module comment). The returned function answers
 * the request itself and never throws; `requestId` is the server's id of the request (logs, and
 * error answers' `extensions.requestId`).
 */
export function stripeWebhookHandler(deps: StripeWebhookDeps): (req: IncomingMessage, res: ServerResponse, requestId: string) => void {
  const { log } = deps;
  const handle = async (req: IncomingMessage, res: ServerResponse, requestId: string) => {
    if (req.method !== 'POST') {
      answer(res, 405, errorBody('Use POST.', { code: 'BAD_USER_INPUT', reason: 'METHOD_NOT_ALLOWED', requestId }), { allow: 'POST' });
      return;
    }
    const raw = await readRawBody(req);
    const signature = req.headers['stripe-signature'];
    let event: Stripe.Event;
    try {
      if (typeof signature !== 'string' || signature === '') throw new Error('no Stripe-Signature header');
      event = deps.verify(raw, signature);
    } catch (err) {
      const badPayload = err instanceof SyntaxError;
      const otherMode = err instanceof WebhookLivemodeError;
      log.warn({ requestId, reason: (err as Error).message }, 'stripe webhook refused: invalid signature or payload');
      answer(
        res,
        400,
        errorBody(
          badPayload
            ? 'The signed body is not a Stripe event.'
            : otherMode
              ? "The event's livemode is not the mode of the endpoint whose secret signed it."
              : 'Invalid Stripe-Signature for this body.',
          { code: 'BAD_USER_INPUT', reason: badPayload ? 'INVALID_PAYLOAD' : otherMode ? 'LIVEMODE_MISMATCH' : 'INVALID_SIGNATURE', requestId },
        ),
      );
      return;
    }
    // The services as they are now, logging (late successes, mismatches) to this server's log when
    // they have no log of their own; the audit trail names the webhook (and this request) as who
    // settled a payment or took back or gave back credit.
    const services: ServiceContext = { ...deps.services, log: deps.services.log ?? log, actor: stripeWebhookActor(requestId) };
    /** Answers an error no branch handled: masked (logged with the request id), 503 when the database is unavailable (Stripe delivers again), else 500. */
    const answerFailure = (err: unknown): void => {
      const masked = maskError(err, requestId, (e) => log.error({ err: e, requestId, eventId: event.id }, 'stripe webhook: unexpected error'), {
        publicAudience: false,
        onUnavailable: (e) => log.warn({ err: e, requestId, eventId: event.id }, 'stripe webhook: database unavailable; answered 503 so Stripe delivers the event again'),
      });
      const code = masked.extensions.code as string;
      answer(res, code === 'UNAVAILABLE' ? 503 : 500, errorBody(masked.message, { code, requestId }));
    };
    const reversal = reversalEventOf(event);
    if (reversal) {
      try {
        const done = await applyReversalEvent(services, reversal, (testMode) => deps.chargeLivemode(testMode));
        log.info(
          { requestId, eventId: event.id, eventType: event.type, result: done.result, paymentId: done.paymentId, voidedMicroCredits: done.voidedMicroCredits.toString() },
          'stripe webhook: refund or dispute applied',
        );
        if (done.result === 'retry_later') {
          // A refund failure made before this refund event has not come yet: applied when Stripe delivers it again.
          answer(res, 503, errorBody('The event cannot be applied before an earlier refund failure of its charge; deliver it again later.', { code: 'UNAVAILABLE', reason: 'REFUND_FAILURE_PENDING', requestId }));
          return;
        }
        answer(res, 200, { received: true, eventId: event.id, result: done.result });
      } catch (err) {
        if (isBalanceLimitRefusal(err)) {
          // A won dispute's or failed refund's give-back would take the balance past its limit: delivered again later.
          log.error({ requestId, eventId: event.id, eventType: event.type, reason: err.message }, 'stripe webhook: the credit of a won dispute or failed refund cannot be given back now (balance limit); answered 503 so Stripe delivers the event again');
          answer(res, 503, errorBody('The event cannot be applied now; deliver it again later.', { code: 'UNAVAILABLE', reason: 'BALANCE_LIMIT', requestId }));
          return;
        }
        answerFailure(err);
      }
      return;
    }
    const chargeEvent = chargeEventOf(event);
    if (!chargeEvent) {
      log.debug({ requestId, eventId: event.id, eventType: event.type }, 'stripe webhook: event type not handled; acknowledged');
      answer(res, 200, { received: true, eventId: event.id, result: 'ignored' });
      return;
    }
    try {
      const done = await applyChargeEvent(services, chargeEvent, (testMode) => deps.chargeLivemode(testMode));
      log.info({ requestId, eventId: event.id, eventType: event.type, ...done }, 'stripe webhook: payment event applied');
      answer(res, 200, { received: true, eventId: event.id, result: done.result });
    } catch (err) {
      if (isBalanceLimitRefusal(err)) {
        log.error(
          { requestId, eventId: event.id, eventType: event.type, paymentId: chargeEvent.paymentId, reason: err.message },
          'stripe webhook: the paid pack cannot be granted now (balance limit); answered 503 so Stripe delivers the event again',
        );
        answer(res, 503, errorBody('The payment cannot be settled now; deliver the event again later.', { code: 'UNAVAILABLE', reason: 'BALANCE_LIMIT', requestId }));
        return;
      }
      if (err instanceof LedgerError) {
        log.error({ requestId, eventId: event.id, paymentId: chargeEvent.paymentId, code: err.code, reason: err.message }, 'stripe webhook: the payment could not be settled; answered 500 so Stripe delivers the event again');
      }
      answerFailure(err);
    }
  };
  return (req, res, requestId) => {
    handle(req, res, requestId).catch((err: unknown) => {
      // The request's socket failed while its body was read: there is no one to answer.
      log.warn({ err, requestId }, 'stripe webhook: request aborted');
      if (!res.headersSent) res.destroy();
    });
  };
}
