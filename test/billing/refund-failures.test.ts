/**
 * A refund that FAILS gives back the credit it took (src/services/refund-failures.ts), through the
 * Stripe webhook endpoint on a real server (PAYMENT_PROVIDER=stripe against the local fake of
 * Stripe's API, test/billing/fake-stripe.ts) and through the simulator:
 * - `charge.refund.updated` (Refund status `failed`) or `refund.failed` after a partial or full
 *   refund: what that refund took comes back once, as a new PAID grant carrying the payment's
 *   credit; the payment's refunded amount drops; auto top-up stays paused;
 * - the refund's own `charge.refunded`, delivered again after the failure, takes nothing again;
 *   a refund made after the failure takes its share as usual;
 * - a refund CANCELED after it was made (Refund status `canceled`) is the same case, once per refund;
 * - only what the refunds took comes back (credit spent before the refund stays spent);
 * - malformed, unknown, not-failed, disputed and never-applied failures change nothing.
 */
import { describe, expect, it } from 'vitest';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import type { TestServer } from '../setup/test-server.js';
import { dbId, expectUnchanged, ok, readAccount, uniq } from '../api/helpers.js';
import { SET_AUTO_TOP_UP, createPack } from './billing-helpers.js';
import { stripeEvent } from './fake-stripe.js';
import { PURCHASE, auditCount, boughtPack, boughtWithSimulator, disputeEvent, newPi, paymentState, post, refundEvent, spend, useStripeServers } from './reversal-helpers.js';

const SETTINGS = `query($id: ID!) { account(id: $id) { autoTopUp { enabled pausedAt lastError } } }`;
const STATEMENT = `query($id: ID!) { account(id: $id) { statement { granted voided closingTotal } } }`;

const servers = useStripeServers({ simulator: true });

/** Stripe times (Unix seconds) in the recent past, so the events' order is explicit. */
const T0 = Math.floor(Date.now() / 1000) - 3600;

/** `payload` (a raw Stripe event) with the event's `created` set to `created` (Unix seconds). */
function at(payload: string, created: number): string {
  return JSON.stringify({ ...JSON.parse(payload), created });
}

/** `charge.refunded` of PaymentIntent `pi` ($4 charge), `refundedCents` in all, made at `created`. */
const refunded = (pi: string, refundedCents: number, created: number) => at(refundEvent(pi, refundedCents), created);

/** A new Refund id (`re_…`). */
const newRe = () => `re_${uniq('r').replace(/[^a-zA-Z0-9]/g, '')}`;

/**
 * Stripe's event `type` (default `charge.refund.updated`) for Refund `re` of PaymentIntent `pi`
 * (its own `amount` in cents, created at `refundCreated`), status `failed` unless `fields` say
 * otherwise, the event made at `created`.
 */
function failedEvent(pi: string, re: string, amount: number, refundCreated: number, created: number, fields: Record<string, unknown> = {}, type = 'charge.refund.updated'): string {
  const refund = {
    id: re,
    object: 'refund',
    amount,
    charge: `ch_${pi.slice(3)}`,
    payment_intent: pi,
    currency: 'usd',
    created: refundCreated,
    status: 'failed',
    failure_reason: 'expired_or_canceled_card',
    ...fields,
  };
  return at(JSON.stringify(stripeEvent(type, refund)), created);
}

/** The account's grants other than `exceptGrantId`, oldest first: (source, type, amount, voided, key). */
async function otherGrants(srv: TestServer, accountId: string, exceptGrantId: string) {
  const { rows } = await srv.services.pool.query(
    `SELECT g.source::text, g.type::text, g.amount_micro_credits::text AS amount, g.voided_at IS NOT NULL AS voided, g.idempotency_key
       FROM credit_grants g WHERE g.account_id = $1 AND g.id <> $2 ORDER BY g.seq`,
    [dbId(accountId), exceptGrantId],
  );
  return rows;
}

/** The payment's refund failures as recorded. */
async function failures(srv: TestServer, paymentId: string) {
  const { rows } = await srv.services.pool.query(
    'SELECT refund_ref, amount_cents::text, applied, restored_micro_credits::text AS restored, grant_id IS NOT NULL AS granted FROM payment_refund_failures WHERE payment_id = $1 ORDER BY received_at',
    [paymentId],
  );
  return rows;
}

describe('a refund that fails', () => {
  it('of a partial refund: its share comes back once as a PAID grant; the same charge.refunded delivered again takes nothing; a later refund takes its share', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId, grantId } = await boughtPack(srv, servers.fake);
    const re = newRe();
    const refund200 = refunded(pi, 200, T0); // half of $4: 20 of 40 credits
    expect(await post(srv, refund200)).toBe('reversed');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('20');

    expect(await post(srv, failedEvent(pi, re, 200, T0, T0 + 60))).toBe('restored');
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ paid: '40', total: '40', debt: '0' });
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '0', refunded: false, reversed: false, refund_taken: '0' });
    // The rest (20) of the grant the partial refund made is voided and granted again with what comes back (20).
    expect(await otherGrants(srv, accountId, grantId)).toEqual([
      { source: 'PURCHASE', type: 'PAID', amount: '20000000', voided: true, idempotency_key: `payment:${paymentId}:refund:200` },
      { source: 'PURCHASE', type: 'PAID', amount: '40000000', voided: false, idempotency_key: `payment:${paymentId}:refund-failed:${re}` },
    ]);
    expect(await failures(srv, paymentId)).toEqual([{ refund_ref: re, amount_cents: '200', applied: true, restored: '20000000', granted: true }]);
    expect(await auditCount(srv, accountId, 'grant.created')).toBe(2);
    // GRANT 40, VOID 40 + GRANT 20 (the refund), VOID 20 + GRANT 40 (its failure).
    expect(ok(await srv.gql(STATEMENT, { id: accountId })).account.statement).toEqual({ granted: '100', voided: '-60', closingTotal: '40' });

    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, refund200)).toBe('unchanged'); // the same charge.refunded again
      expect(await post(srv, refunded(pi, 200, T0 + 30))).toBe('unchanged'); // an older one delivered late
      expect(await post(srv, failedEvent(pi, re, 200, T0, T0 + 60))).toBe('unchanged');
      expect(await post(srv, failedEvent(pi, re, 200, T0, T0 + 61, {}, 'refund.failed'))).toBe('unchanged');
      const concurrent = await Promise.all([post(srv, refund200), post(srv, failedEvent(pi, re, 200, T0, T0 + 62, {}, 'refund.updated'))]);
      expect(concurrent).toEqual(['unchanged', 'unchanged']);
    });
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '0', refund_taken: '0' });

    // A new refund after the failure: Stripe's cumulative amount no longer counts the failed one.
    expect(await post(srv, refunded(pi, 200, T0 + 120))).toBe('reversed');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('20');
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '200', refund_taken: '20000000' });
    expect((await otherGrants(srv, accountId, grantId)).at(-1)).toMatchObject({ amount: '20000000', voided: false, idempotency_key: `payment:${paymentId}:refund:200:after-failures:1` });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('of a full refund: what its void took comes back; auto top-up stays paused; the full refund delivered again takes nothing', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId, pack, grantId } = await boughtPack(srv, servers.fake);
    ok(await srv.gql(SET_AUTO_TOP_UP, { input: { accountId, enabled: true, thresholdCredits: '5', packId: pack.id } }));
    await spend(srv, accountId, '10');
    const full = refunded(pi, 400, T0);
    expect(await post(srv, full)).toBe('reversed');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('0');
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false });

    const re = newRe();
    expect(await post(srv, failedEvent(pi, re, 400, T0, T0 + 60, {}, 'refund.failed'))).toBe('restored');
    // The void took the 30 left; 10 were spent before the refund and stay spent.
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ paid: '30', total: '30' });
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '0', refunded: false, reversed: false, reversed_micro_credits: null, refund_taken: '0', grant_voided: true });
    expect(await otherGrants(srv, accountId, grantId)).toEqual([
      { source: 'PURCHASE', type: 'PAID', amount: '30000000', voided: false, idempotency_key: `payment:${paymentId}:refund-failed:${re}` },
    ]);
    // An operator decides when the card is charged again.
    expect(ok(await srv.gql(SETTINGS, { id: accountId })).account.autoTopUp).toMatchObject({ enabled: false, lastError: expect.stringMatching(/refunded in full/) });
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, full)).toBe('unchanged');
      expect(await post(srv, failedEvent(pi, re, 400, T0, T0 + 60))).toBe('unchanged');
    });
    // Refunded in full again later: the given-back credit is voided (it carries the payment's credit).
    expect(await post(srv, refunded(pi, 400, T0 + 120))).toBe('reversed');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('0');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('of one of two partial refunds: only the difference of the shares comes back', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    const first = newRe();
    expect(await post(srv, refunded(pi, 100, T0))).toBe('reversed'); // share 10
    expect(await post(srv, refunded(pi, 300, T0 + 10))).toBe('reversed'); // share 30: 20 more
    expect((await readAccount(srv, accountId)).balance.paid).toBe('10');
    expect(await post(srv, failedEvent(pi, first, 100, T0, T0 + 60))).toBe('restored');
    // 300 -> 200 refunded: share 30 -> 20, so 10 comes back.
    expect((await readAccount(srv, accountId)).balance.paid).toBe('20');
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '200', refunded: true, refund_taken: '20000000' });
    // Both older charge.refunded events again: nothing.
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, refunded(pi, 300, T0 + 10))).toBe('unchanged');
      expect(await post(srv, refunded(pi, 100, T0))).toBe('unchanged');
    });
    // The rest refunded after the failure (200 more: 400 in all): the payment is reversed in full.
    expect(await post(srv, refunded(pi, 400, T0 + 120))).toBe('reversed');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('0');
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '400', reversed: true });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('after a partial and a full refund: the full refund failing leaves the partial share taken', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    expect(await post(srv, refunded(pi, 100, T0))).toBe('reversed'); // share 10
    expect(await post(srv, refunded(pi, 400, T0 + 10))).toBe('reversed'); // the rest (30) voided
    expect(await post(srv, failedEvent(pi, newRe(), 300, T0 + 10, T0 + 60))).toBe('restored');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('30');
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '100', reversed: false, refund_taken: '10000000' });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('gives back only what the refund took: credit spent before it stays spent', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    await spend(srv, accountId, '30'); // 10 left
    expect(await post(srv, refunded(pi, 200, T0))).toBe('reversed'); // share 20, only 10 left to take
    expect((await readAccount(srv, accountId)).balance.paid).toBe('0');
    expect(await paymentState(srv, paymentId)).toMatchObject({ refund_taken: '10000000' });
    expect(await post(srv, failedEvent(pi, newRe(), 200, T0, T0 + 60))).toBe('restored');
    expect((await readAccount(srv, accountId)).balance.paid).toBe('10');
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '0', refund_taken: '0' });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('canceled (Stripe lets a card refund be canceled for a while after it is made): its share comes back like a failed one, once per refund', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    const re = newRe();
    expect(await post(srv, refunded(pi, 200, T0))).toBe('reversed'); // share 20
    expect((await readAccount(srv, accountId)).balance.paid).toBe('20');
    const canceled = { status: 'canceled', failure_reason: 'merchant_request' };
    expect(await post(srv, failedEvent(pi, re, 200, T0, T0 + 60, canceled))).toBe('restored');
    expect((await readAccount(srv, accountId)).balance).toMatchObject({ paid: '40', total: '40' });
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '0', refunded: false, refund_taken: '0' });
    expect(await failures(srv, paymentId)).toEqual([{ refund_ref: re, amount_cents: '200', applied: true, restored: '20000000', granted: true }]);
    // The same cancellation as refund.updated, and any failure event of that refund: applied once.
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, failedEvent(pi, re, 200, T0, T0 + 60, canceled, 'refund.updated'))).toBe('unchanged');
      expect(await post(srv, failedEvent(pi, re, 200, T0, T0 + 70))).toBe('unchanged');
      expect(await post(srv, refunded(pi, 200, T0))).toBe('unchanged');
    });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });

  it('malformed, unknown, not failed, disputed or never applied: nothing changes', async () => {
    const { srv } = servers.main;
    const { accountId, pi, paymentId } = await boughtPack(srv, servers.fake);
    expect(await post(srv, refunded(pi, 200, T0))).toBe('reversed');
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, failedEvent(pi, newRe(), 200, T0, T0 + 60, { status: 'succeeded' }))).toBe('ignored');
      expect(await post(srv, failedEvent(pi, newRe(), 200, T0, T0 + 60, { status: 'pending' }, 'refund.updated'))).toBe('ignored');
      expect(await post(srv, failedEvent(pi, newRe(), 200, T0, T0 + 60, { status: 'requires_action' }, 'refund.updated'))).toBe('ignored');
      expect(await post(srv, failedEvent(pi, newRe(), 200, T0, T0 + 60, { id: undefined }))).toBe('unknown_payment');
      expect(await post(srv, failedEvent(pi, newRe(), 200, T0, T0 + 60, { payment_intent: null }))).toBe('unknown_payment');
      expect(await post(srv, failedEvent(pi, newRe(), 0, T0, T0 + 60))).toBe('mismatch');
      expect(await post(srv, failedEvent(pi, newRe(), 401, T0, T0 + 60))).toBe('mismatch');
      expect(await post(srv, failedEvent(pi, newRe(), '200' as unknown as number, T0, T0 + 60))).toBe('mismatch');
      expect(await post(srv, failedEvent(pi, newRe(), 200, T0, T0 + 60, { currency: 'eur' }))).toBe('mismatch');
      expect(await post(srv, failedEvent(newPi(), newRe(), 200, T0, T0 + 60))).toBe('not_applicable');
    });
    expect(await failures(srv, paymentId)).toEqual([]);
    // A refund created after the latest refund event applied was never applied: recorded only, and
    // its own charge.refunded (older than the failure) then changes nothing.
    const late = newRe();
    await expectUnchanged(srv, [accountId], async () => {
      expect(await post(srv, failedEvent(pi, late, 100, T0 + 20, T0 + 60))).toBe('recorded');
      expect(await post(srv, refunded(pi, 300, T0 + 20))).toBe('unchanged');
    });
    expect(await paymentState(srv, paymentId)).toMatchObject({ refunded_cents: '200', refund_taken: '20000000' });
    expect(await failures(srv, paymentId)).toEqual([{ refund_ref: late, amount_cents: '100', applied: false, restored: '0', granted: false }]);

    // A disputed payment: the dispute decides its credit; the failure is recorded only.
    const other = await boughtPack(srv, servers.fake);
    expect(await post(srv, refunded(other.pi, 100, T0))).toBe('reversed');
    expect(await post(srv, disputeEvent(other.pi))).toBe('reversed');
    await expectUnchanged(srv, [other.accountId], async () => {
      expect(await post(srv, failedEvent(other.pi, newRe(), 100, T0, T0 + 60))).toBe('recorded');
    });
    expect(await paymentState(srv, other.paymentId)).toMatchObject({ refunded_cents: '100', disputed: true, reversed: true });
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});

describe("the simulator's refundFailed", () => {
  it('reaches the same code: the refund takes its share, its failure gives it back once, the old refund event again takes nothing', async () => {
    const { srv, simulator } = servers.sim;
    const pack = await createPack(srv, { credits: '40', priceUsd: '4' });
    const { accountId, paymentId } = await boughtWithSimulator(srv, pack.id);
    const chargeLivemode = (testMode: boolean) => !testMode;
    expect(() => simulator.refundFailed(paymentId)).toThrow(/no refund/);
    const refund = simulator.refund(paymentId, 100n);
    expect(refund).toMatchObject({ kind: 'refund', refundedCents: 100n, refundRef: expect.stringMatching(/^sim_re_/) });
    expect((await applyReversalEvent(srv.services, refund, chargeLivemode)).result).toBe('reversed');
    expect((await readAccount(srv, accountId)).balance.total).toBe('30');
    const failed = simulator.refundFailed(paymentId);
    expect(failed).toMatchObject({ kind: 'refund_failed', eventType: 'charge.refund.updated', amountCents: 100n, refundRef: refund.refundRef });
    expect(await applyReversalEvent(srv.services, failed, chargeLivemode)).toMatchObject({ result: 'restored', restoredMicroCredits: 10_000_000n });
    expect((await readAccount(srv, accountId)).balance.total).toBe('40');
    await expectUnchanged(srv, [accountId], async () => {
      expect((await applyReversalEvent(srv.services, failed, chargeLivemode)).result).toBe('unchanged');
      expect((await applyReversalEvent(srv.services, refund, chargeLivemode)).result).toBe('unchanged');
    });
    expect(() => simulator.refundFailed(paymentId)).toThrow(/no refund/);
    // The charge's refunded amount dropped with the failure: a new full refund is all of it.
    const full = simulator.refund(paymentId);
    expect(full.refundedCents).toBe(400n);
    expect((await applyReversalEvent(srv.services, full, chargeLivemode)).result).toBe('reversed');
    expect((await readAccount(srv, accountId)).balance.total).toBe('0');
    await expectLedgerInvariant(srv.services.pool, dbId(accountId));
  });
});
