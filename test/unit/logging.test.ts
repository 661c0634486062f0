/**
 * src/logging.ts: what the processes' logger takes out of a line (URL credentials in error text,
 * Stripe's payment objects on its errors, credential headers), and what it keeps. Runs pino for
 * real, writing to memory.
 */
import { describe, expect, it } from 'vitest';
import Stripe from 'stripe';
import { createLogger, redactUrlCredentials, REDACTED } from '../../src/logging.js';

/** A logger at level debug and the lines it wrote, parsed. */
function capture() {
  const lines: string[] = [];
  const log = createLogger({ level: 'debug', destination: { write: (line: string) => void lines.push(line) } });
  return { log, lines: () => lines.map((l) => JSON.parse(l)), text: () => lines.join('') };
}

describe('redactUrlCredentials', () => {
  it('replaces the user:password of every URL in a text, also a password holding "@" or ":"; keeps host, path and query', () => {
    expect(redactUrlCredentials('connect to postgresql://app:s3cret@db.internal:5432/ledger failed')).toBe(`connect to postgresql://${REDACTED}@db.internal:5432/ledger failed`);
    expect(redactUrlCredentials('https://u:p@ss:w@hooks.example/x?a=1 and redis://:pw@cache:6379/0')).toBe(`https://${REDACTED}@hooks.example/x?a=1 and redis://${REDACTED}@cache:6379/0`);
    expect(redactUrlCredentials('https://hooks.example/x?mail=a@b.c')).toBe('https://hooks.example/x?mail=a@b.c');
    expect(redactUrlCredentials('no url, mail a@b.c')).toBe('no url, mail a@b.c');
  });
});

describe('createLogger', () => {
  it('logs an error with its causes, Stripe objects as their ids, credential headers and URL credentials redacted', () => {
    const { log, lines, text } = capture();
    const stripeError = new Stripe.errors.StripeInvalidRequestError({
      message: 'No such PaymentMethod',
      type: 'invalid_request_error',
      statusCode: 400,
      headers: { 'request-id': 'req_1' },
      payment_method: { id: 'pm_1', billing_details: { email: 'holder@example.com', name: 'Card Holder' } },
      payment_intent: { id: 'pi_1', last_payment_error: { payment_method: { billing_details: { email: 'holder@example.com' } } } },
    } as never);
    log.error({ err: new Error('stripe: no definite answer (https://u:pw@api.example)', { cause: stripeError }) }, 'charge failed');
    log.warn({ err: 'redis://:redis-pw@cache:6379 unreachable', headers: { authorization: 'Bearer cp_secret', 'stripe-signature': 't=1,v1=ab', host: 'h' } }, 'with headers');
    const [first, second] = lines();
    expect(first.err).toMatchObject({ type: 'Error', message: `stripe: no definite answer (https://${REDACTED}@api.example)` });
    expect(first.err.cause).toMatchObject({ type: 'StripeInvalidRequestError', message: 'No such PaymentMethod', statusCode: 400, payment_method: 'pm_1', payment_intent: 'pi_1' });
    expect(second).toMatchObject({ err: `redis://${REDACTED}@cache:6379 unreachable`, headers: { authorization: REDACTED, 'stripe-signature': REDACTED, host: 'h' } });
    for (const s of ['holder@example.com', 'Card Holder', ':pw@', 'redis-pw', 'cp_secret', 'v1=ab']) expect(text()).not.toContain(s);
  });

  it('keeps everything else as pino writes it (an error without secrets, other fields)', () => {
    const { log, lines } = capture();
    const err = Object.assign(new Error('duplicate key'), { code: '23505', detail: 'Key (id)=(1) already exists.' });
    log.info({ err, accountId: 'acc-1', attempt: 2 }, 'plain');
    expect(lines()[0]).toMatchObject({ msg: 'plain', accountId: 'acc-1', attempt: 2, err: { type: 'Error', message: 'duplicate key', code: '23505', detail: 'Key (id)=(1) already exists.' } });
    expect(lines()[0].err.stack).toContain('duplicate key');
  });
});
