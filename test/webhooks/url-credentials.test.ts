/**
 * A WEBHOOK_URL carrying user:password (https://user:pass@host/...) never puts the password into
 * the log lines, the delivery log (webhook_deliveries) or the error the job fails with (BullMQ
 * keeps it in Redis, the workers log it). fetch refuses such a URL with an error naming it whole
 * ("Request cannot be constructed from a URL that includes credentials: <url>"), which used to be
 * stored and logged as it was. Real PostgreSQL, a real receiver on 127.0.0.1, the real logger
 * (src/logging.ts) writing to memory. No relay runs in this file: the alert's outbox job is taken
 * out and the delivery is run here.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseEnv } from '../../src/config/env.js';
import { createLogger } from '../../src/logging.js';
import { deliverWebhook, WebhookDeliveryError } from '../../src/services/webhooks.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { oneAlert, startReceiver, type Receiver } from './helpers.js';

const SECRET = 'whsec_url_credentials_0123456789abcdef0123';
const URL_USER = 'hook-user-7f3a';
const URL_PASSWORD = 'hook-url-password-91c2e';
let receiver: Receiver;
let services: TestServices;

beforeAll(async () => {
  receiver = await startReceiver();
  services = createTestServices(2);
});

afterAll(async () => {
  await receiver?.close();
  await services?.close();
});

describe('WEBHOOK_URL with user:password', () => {
  it('a failed attempt logs, stores and throws the URL without its credentials', async () => {
    const url = new URL(receiver.url);
    url.username = URL_USER;
    url.password = URL_PASSWORD;
    // parseEnv refuses such a URL at boot; this checks the delivery's own guard behind it.
    const env = { ...parseEnv({ NODE_ENV: 'test', DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: TEST_REDIS_URL, WEBHOOK_URL: receiver.url, WEBHOOK_SECRET: SECRET }), WEBHOOK_URL: url.toString() };
    const lines: string[] = [];
    const log = createLogger({ level: 'debug', destination: { write: (line: string) => void lines.push(line) } });
    const { accountId, alertId } = await oneAlert(services);

    const failed = await deliverWebhook({ pool: services.pool, env, log }, { eventType: 'credit_alert.raised', eventId: alertId, accountId }, 1).then(
      () => null,
      (err: unknown) => err,
    );
    expect(failed).toBeInstanceOf(WebhookDeliveryError);
    const message = (failed as Error).message;
    // Still says what went wrong, and where.
    expect(message).toContain('includes credentials');
    expect(message).toContain(`127.0.0.1:${url.port}`);
    expect(message).not.toContain(URL_PASSWORD);
    expect(message).not.toContain(URL_USER);

    const { rows } = await services.pool.query('SELECT url, status, error FROM webhook_deliveries WHERE event_id = $1', [alertId]);
    expect(rows).toHaveLength(1);
    // Shown without its path either (url-secrets.test.ts): the receiver's is /hooks/creditpool.
    expect(rows[0]).toMatchObject({ url: `http://127.0.0.1:${url.port}/…`, status: 'FAILED' });
    expect(rows[0].error).toContain('includes credentials');
    expect(rows[0].error).not.toContain(URL_PASSWORD);
    expect(rows[0].error).not.toContain(URL_USER);

    const logged = lines.join('');
    expect(logged).toContain('webhook delivery failed');
    expect(logged).toContain(alertId);
    expect(logged).not.toContain(URL_PASSWORD);
    expect(logged).not.toContain(URL_USER);
  });
});
