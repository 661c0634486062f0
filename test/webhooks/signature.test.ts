/**
 * The webhook signature (Stripe's scheme: `t=<unix s>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`,
 * https://docs.stripe.com/webhooks#verify-manually; HMAC per RFC 2104): a known vector computed
 * independently (OpenSSL), the round trip, and every way a forged or replayed request fails.
 */
import { describe, expect, it } from 'vitest';
import { signWebhook, verifyWebhookSignature, isPermanentStatus } from '../../src/services/webhooks.js';

const SECRET = 'whsec_test_0123456789abcdef0123456789abcdef';
const BODY = '{"id":"credit_alert.raised:x","type":"credit_alert.raised"}';
const T = 1_700_000_000;

describe('webhook signatures', () => {
  it('matches an HMAC-SHA256 computed by OpenSSL over "<t>.<body>"', () => {
    // printf '%s' '1700000000.<BODY>' | openssl dgst -sha256 -hmac "$SECRET"
    expect(signWebhook(SECRET, BODY, T)).toBe('t=1700000000,v1=93c0c4d68588babdd44b226eb5d18f9857ec4266bbba49d9d100181114d9e90a');
  });

  it('round-trips: a fresh signature verifies within the tolerance', () => {
    const header = signWebhook(SECRET, BODY, T);
    expect(verifyWebhookSignature(SECRET, BODY, header, { nowSeconds: T })).toEqual({ valid: true, timestampSeconds: T });
    expect(verifyWebhookSignature(SECRET, BODY, header, { nowSeconds: T + 300 }).valid).toBe(true);
    expect(verifyWebhookSignature(SECRET, 'é' + BODY, signWebhook(SECRET, 'é' + BODY, T), { nowSeconds: T }).valid).toBe(true);
  });

  it('rejects a tampered body, a tampered signature, a swapped timestamp and the wrong secret', () => {
    const header = signWebhook(SECRET, BODY, T);
    const mismatch = { valid: false, reason: 'signature_mismatch' };
    expect(verifyWebhookSignature(SECRET, BODY.replace('raised', 'razed'), header, { nowSeconds: T })).toEqual(mismatch);
    expect(verifyWebhookSignature(SECRET, BODY + ' ', header, { nowSeconds: T })).toEqual(mismatch);
    const v1 = header.split('v1=')[1]!;
    const flipped = `t=${T},v1=${(v1[0] === '0' ? '1' : '0') + v1.slice(1)}`;
    expect(verifyWebhookSignature(SECRET, BODY, flipped, { nowSeconds: T })).toEqual(mismatch);
    // The timestamp is signed: moving it forward (to pass the replay check) breaks the signature.
    expect(verifyWebhookSignature(SECRET, BODY, `t=${T + 60},v1=${v1}`, { nowSeconds: T + 60 })).toEqual(mismatch);
    expect(verifyWebhookSignature(SECRET.replace('0', '1'), BODY, header, { nowSeconds: T })).toEqual(mismatch);
    expect(verifyWebhookSignature(SECRET, BODY, `t=${T},v1=${v1.slice(0, 63)}`, { nowSeconds: T })).toEqual(mismatch);
  });

  it('rejects an old (replayed) or far-future timestamp even with a valid signature', () => {
    const header = signWebhook(SECRET, BODY, T);
    const out = { valid: false, reason: 'timestamp_out_of_tolerance' };
    expect(verifyWebhookSignature(SECRET, BODY, header, { nowSeconds: T + 301 })).toEqual(out);
    expect(verifyWebhookSignature(SECRET, BODY, header, { nowSeconds: T - 301 })).toEqual(out);
    expect(verifyWebhookSignature(SECRET, BODY, header, { nowSeconds: T + 61, toleranceSeconds: 60 })).toEqual(out);
    // The wall clock by default: a 2023 timestamp is long out of tolerance.
    expect(verifyWebhookSignature(SECRET, BODY, header)).toEqual(out);
  });

  it('accepts any matching v1 among several (secret rotation) and rejects malformed headers', () => {
    const good = signWebhook(SECRET, BODY, T).split('v1=')[1]!;
    const other = signWebhook('another-secret-0123456789abcdef0123', BODY, T).split('v1=')[1]!;
    expect(verifyWebhookSignature(SECRET, BODY, `t=${T},v1=${other},v1=${good}`, { nowSeconds: T }).valid).toBe(true);
    expect(verifyWebhookSignature(SECRET, BODY, `t=${T}, v1=${good}`, { nowSeconds: T }).valid).toBe(true);
    for (const bad of [undefined, null, '', `v1=${good}`, `t=${T}`, `t=abc,v1=${good}`, `t=${T},t=${T},v1=${good}`, `t=-5,v1=${good}`]) {
      expect(verifyWebhookSignature(SECRET, BODY, bad, { nowSeconds: T })).toEqual({ valid: false, reason: 'malformed' });
    }
    expect(() => signWebhook(SECRET, BODY, 1.5)).toThrow(RangeError);
  });

  it('classifies 4xx other than 408/425/429 as permanent failures', () => {
    expect([400, 401, 403, 404, 410, 422].map(isPermanentStatus)).toEqual([true, true, true, true, true, true]);
    expect([408, 425, 429, 500, 502, 503, 302, 200].map(isPermanentStatus)).toEqual([false, false, false, false, false, false, false, false]);
  });
});
