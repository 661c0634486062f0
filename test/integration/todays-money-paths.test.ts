/**
 * The money paths added or changed on 2026-12-07, checked end to end against what an operator reads
 * about them: a failed (or canceled) refund of a payment gives its credit back
 * (services/refund-failures.ts); a usage refund of credit a payment bought goes to the payment's
 * live grant, growing its batch's `allocated`, less the refunded share not taken yet
 * (services/refund-usage.ts); a void of a grant a refund of last period's usage refilled
 * (services/void-grant.ts); a charge rolls a due plan period first (plans.ts rollDuePeriodsFirst);
 * an auto top-up charged before the customer turned auto top-up off is only looked up, and granted
 * (services/auto-top-up.ts).
 * For each: (1) the audit trail has who, what and why (README "Audit trail"); (2) the statement of
 * every period lists the movement on the right line and reconciles, each period opening at the
 * previous one's close and the current one closing at Balance.total, both ways of reading the
 * ledger agreeing (README "Statements"); (3) the operator's reconciliation (reconcileLedger) finds
 * no mismatch; (4) the ledger invariant holds (test/setup/invariant.ts); (5) every batch's
 * `allocated` and `remaining` tell the ledger's story: remaining = its GRANT, REFUND, VOID and
 * EXPIRE entries less what usage drew from it; allocated = its grant's amount plus what refunds
 * gave it of usage drawn from other batches (a payment's live grant), and the API's
 * `CreditBatch.allocated` is that figure. Real PostgreSQL, the payment simulator, services called
 * directly (a test server only to read the API).
 */
import { randomUUID } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import { useTestServer } from '../setup/test-server.js';
import type { TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { dbId, gid, ok } from '../api/helpers.js';
import { recordUsage } from '../../src/services/record-usage.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { refundUsage } from '../../src/services/refund-usage.js';
import { voidGrant } from '../../src/services/void-grant.js';
import { readBalance } from '../../src/services/read-balance.js';
import { reconcileLedger } from '../../src/services/reconcile-ledger.js';
import { readAccountStatement, statementMovementsMicroCredits, type AccountStatement } from '../../src/services/account-statement.js';
import { createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { credits, parseCredits } from '../../src/ledger/credits.js';
import { PaymentSimulator } from '../../src/payments/simulator.js';
import type { ChargeReversalEvent } from '../../src/payments/provider.js';
import { createCreditPack } from '../../src/services/credit-packs.js';
import { attachPaymentMethod, purchaseCreditPack } from '../../src/services/purchase-pack.js';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { stripeWebhookActor, type AuditActor } from '../../src/audit/audit-log.js';
import type { ServiceContext } from '../../src/services/context.js';
import { runAutoTopUp, setAutoTopUp } from '../../src/services/auto-top-up.js';

const srv = useTestServer();
let s: TestServices;
beforeAll(() => {
  s = srv.services;
});

const DAY_MS = 86_400_000;
/** An operator's key as the API passes it to the services. */
const OPERATOR: AuditActor = { kind: 'admin_env', keyId: null, name: 'bootstrap-admin', requestId: 'req-operator' };

/** The account's audit rows after `afterSeq` (oldest first), as an operator reads them. */
async function trail(accountId: string, afterSeq = 0n) {
  const { rows } = await s.pool.query(
    `SELECT seq, actor_kind, actor_name, request_id, action, subject_type, subject_id, details FROM audit_events WHERE account_id = $1 AND seq > $2 ORDER BY seq`,
    [accountId, afterSeq.toString()],
  );
  return rows.map((r) => ({ ...r, seq: BigInt(r.seq as string) })) as Array<{
    seq: bigint;
    actor_kind: string;
    actor_name: string;
    request_id: string | null;
    action: string;
    subject_type: string | null;
    subject_id: string | null;
    details: Record<string, unknown>;
  }>;
}
const lastSeq = async (accountId: string) => (await trail(accountId)).at(-1)?.seq ?? 0n;

/** Every statement of the account from its first period to the current one, read both ways (which must agree), each reconciling and opening at the previous close. */
async function statements(accountId: string, wallNow: Date): Promise<AccountStatement[]> {
  const { rows } = await s.pool.query('SELECT created_at FROM accounts WHERE id = $1', [accountId]);
  const out: AccountStatement[] = [];
  let at: Date | null = rows[0].created_at as Date;
  for (;;) {
    const after = await readAccountStatement(s.pool, accountId, wallNow, at, { range: 'after' });
    const before = await readAccountStatement(s.pool, accountId, wallNow, at, { range: 'before' });
    expect(before).toEqual(after);
    expect(after.openingTotalMicroCredits + statementMovementsMicroCredits(after)).toBe(after.closingTotalMicroCredits);
    expect(after.grantedBySource.reduce((sum, g) => sum + g.amountMicroCredits, 0n)).toBe(after.grantedMicroCredits);
    if (out.length > 0) expect(after.openingTotalMicroCredits).toBe(out.at(-1)!.closingTotalMicroCredits);
    out.push(after);
    if (!after.final) return out;
    at = after.periodEnd;
  }
}

/** A statement's movements by line, in credits' micro-credits (only the non-zero ones, sources too). */
function lines(st: AccountStatement): Record<string, bigint> {
  const all: Record<string, bigint> = {
    consumed: st.consumedMicroCredits,
    expired: st.expiredMicroCredits,
    refunded: st.refundedMicroCredits,
    voided: st.voidedMicroCredits,
    debtRepaid: st.debtRepaidMicroCredits,
    adjusted: st.adjustedMicroCredits,
  };
  for (const g of st.grantedBySource) all[`granted.${g.source}`] = g.amountMicroCredits;
  return Object.fromEntries(Object.entries(all).filter(([, v]) => v !== 0n));
}

/**
 * Per-batch story: for every batch of the account, remaining = its GRANT, REFUND, VOID and EXPIRE
 * entries less its drawdowns; allocated = its grant's amount + the REFUND entries it got of usage
 * that drew nothing from it (credit a payment bought, given back to the payment's live grant; the
 * scenarios here have no debt); remaining <= allocated. Returns the batches by grant id.
 */
async function batchStory(accountId: string) {
  const { rows } = await s.pool.query(
    `SELECT b.id, b.grant_id, b.status::text, g.amount_micro_credits AS granted, b.allocated_micro_credits AS allocated, b.remaining_micro_credits AS remaining,
            COALESCE((SELECT SUM(l.amount_micro_credits) FROM ledger_entries l WHERE l.account_id = b.account_id AND l.batch_id = b.id AND l.type IN ('GRANT', 'REFUND', 'VOID', 'EXPIRE')), 0) AS moved,
            COALESCE((SELECT SUM(d.amount_micro_credits) FROM drawdowns d WHERE d.batch_id = b.id), 0) AS drawn,
            COALESCE((SELECT SUM(l.amount_micro_credits) FROM ledger_entries l WHERE l.account_id = b.account_id AND l.batch_id = b.id AND l.type = 'REFUND'
                         AND NOT EXISTS (SELECT 1 FROM drawdowns d WHERE d.batch_id = b.id AND d.usage_event_id = l.usage_event_id)), 0) AS grown
       FROM credit_batches b JOIN credit_grants g ON g.id = b.grant_id WHERE b.account_id = $1 ORDER BY g.seq`,
    [accountId],
  );
  const out = new Map<string, { status: string; granted: bigint; allocated: bigint; remaining: bigint }>();
  for (const r of rows) {
    const [allocated, remaining] = [BigInt(r.allocated), BigInt(r.remaining)];
    expect({ batch: r.id, remaining }).toEqual({ batch: r.id, remaining: BigInt(r.moved) - BigInt(r.drawn) });
    expect({ batch: r.id, allocated }).toEqual({ batch: r.id, allocated: BigInt(r.granted) + BigInt(r.grown) });
    expect(remaining <= allocated).toBe(true);
    out.set(r.grant_id as string, { status: r.status as string, granted: BigInt(r.granted), allocated, remaining });
  }
  return out;
}

/** (2)-(5) for one account at `now` (wall clock default); returns the statements and the batches. */
async function expectStory(accountId: string, now = new Date()) {
  const sts = await statements(accountId, now);
  const balance = await expectLedgerInvariant(s.pool, accountId, now);
  expect(sts.at(-1)!.closingTotalMicroCredits).toBe(balance.totalMicroCredits);
  const report = await reconcileLedger(s.pool, new Date(0), { limit: 1_000_000 });
  expect(report.inconsistent.filter((r) => r.accountId === accountId)).toEqual([]);
  const batches = await batchStory(accountId);
  // The API's CreditBatch.allocated / remaining are the batch's.
  const api = ok(await srv.gql(`query($id: ID!) { account(id: $id) { grants(first: 100) { edges { node { id amount batch { allocated remaining } } } } } }`, { id: gid('Account', accountId) }));
  for (const { node } of api.account.grants.edges as Array<{ node: { id: string; amount: string; batch: { allocated: string; remaining: string } } }>) {
    const b = batches.get(dbId(node.id));
    expect(b).toBeDefined();
    expect({ amount: parseCredits(node.amount), allocated: parseCredits(node.batch.allocated), remaining: parseCredits(node.batch.remaining) }).toEqual({
      amount: b!.granted,
      allocated: b!.allocated,
      remaining: b!.remaining,
    });
  }
  return { statements: sts, current: sts.at(-1)!, batches, balance };
}

/** A pack of 100 credits for $10 bought through the simulator, and `spend` credits charged from it (event `used`). */
async function boughtAndSpent(spend: number) {
  s.setNow(null);
  const payments = new PaymentSimulator();
  const ctx: ServiceContext = { ...s, payments, actor: OPERATOR };
  const webhook: ServiceContext = { ...s, payments, actor: stripeWebhookActor(`req-${randomUUID()}`) };
  const accountId = await createFundedAccount(s, {});
  const pack = await createCreditPack(s, { name: `today-pack-${randomUUID()}`, microCredits: credits(100), bonusMicroCredits: 0n, priceUsd: '10', expiresAfterDays: null });
  await attachPaymentMethod(ctx, accountId, `pm_card_today_${randomUUID().slice(0, 8)}`);
  const { paymentId } = await purchaseCreditPack(ctx, { accountId, packId: pack.id, idempotencyKey: `buy-${randomUUID()}` });
  const used = await recordUsage(s, { accountId, idempotencyKey: 'used', category: 'units', quantities: { units: String(spend) } });
  const apply = (event: ChargeReversalEvent) => applyReversalEvent(webhook, event, (testMode) => !testMode);
  const payment = await s.pool.query('SELECT grant_id FROM payments WHERE id = $1', [paymentId]);
  return { accountId, paymentId, payments, used, apply, ctx, webhook, packGrantId: payment.rows[0].grant_id as string };
}

const liveGrantOf = async (paymentId: string) =>
  (await s.pool.query('SELECT COALESCE(live_grant_id, grant_id) AS id FROM payments WHERE id = $1', [paymentId])).rows[0].id as string;

describe('a failed refund gives the credit back', () => {
  it('after a 50 % refund of a pack with 30 spent: the trail names the failure, the statement shows the void of the rest and the grant, everything reconciles', async () => {
    const { accountId, paymentId, payments, apply, webhook, packGrantId } = await boughtAndSpent(30);
    expect(await apply(payments.refund(paymentId, 500n))).toMatchObject({ result: 'reversed' }); // 50 of the 70 left taken
    const afterRefund = await lastSeq(accountId);
    const carrier = await liveGrantOf(paymentId);
    const failed = payments.refundFailed(paymentId);
    expect(await apply(failed)).toMatchObject({ result: 'restored', restoredMicroCredits: credits(50) });
    const live = await liveGrantOf(paymentId);

    // (1) who (stripe-webhook, its request id), what (the carrier's rest voided, the give-back granted), why (the refund and the payment).
    const rows = await trail(accountId, afterRefund);
    expect(rows.map((r) => [r.action, r.subject_id, r.actor_kind, r.actor_name, r.request_id])).toEqual([
      ['grant.voided', carrier, 'system', 'stripe-webhook', webhook.actor!.requestId],
      ['grant.created', live, 'system', 'stripe-webhook', webhook.actor!.requestId],
    ]);
    expect(rows[0]!.details).toMatchObject({ voidedAmount: '20' });
    expect(String(rows[0]!.details.reason)).toContain(failed.refundRef!);
    expect(rows[1]!.details).toMatchObject({ amount: '70', type: 'PAID', source: 'PURCHASE', reference: paymentId, idempotencyKey: `payment:${paymentId}:refund-failed:${failed.refundRef}` });
    expect(String(rows[1]!.details.reason)).toContain(paymentId);

    // (2)-(5): 100 bought, 30 spent, the refund's void of 70 and grant of 20, the failure's void of 20 and grant of 70.
    const { current, batches, balance } = await expectStory(accountId);
    expect(balance.totalMicroCredits).toBe(credits(70));
    expect(lines(current)).toEqual({ 'granted.PURCHASE': credits(190), consumed: -credits(30), voided: -credits(90) });
    expect(batches.get(packGrantId)).toMatchObject({ status: 'VOIDED', allocated: credits(100), remaining: 0n });
    expect(batches.get(live)).toMatchObject({ status: 'ACTIVE', granted: credits(70), allocated: credits(70), remaining: credits(70) });
  });

  it('after a full refund: the give-back alone (nothing left to void), on the grant line', async () => {
    const { accountId, paymentId, payments, apply } = await boughtAndSpent(30);
    expect(await apply(payments.refund(paymentId))).toMatchObject({ result: 'reversed' });
    const afterRefund = await lastSeq(accountId);
    expect(await apply(payments.refundFailed(paymentId))).toMatchObject({ result: 'restored', restoredMicroCredits: credits(70) });
    expect((await trail(accountId, afterRefund)).map((r) => [r.action, r.details.amount])).toEqual([['grant.created', '70']]);
    const { current, balance } = await expectStory(accountId);
    expect(balance.totalMicroCredits).toBe(credits(70));
    expect(lines(current)).toEqual({ 'granted.PURCHASE': credits(170), consumed: -credits(30), voided: -credits(70) });
  });
});

describe("a usage refund of credit a payment bought goes to the payment's live grant", () => {
  it("after a 10 % refund: the 40 drawn from the voided pack grant come back into the live grant, whose allocated grows; a later failure of that refund and a full refund stay consistent", async () => {
    const { accountId, paymentId, payments, used, apply, ctx, packGrantId } = await boughtAndSpent(40);
    await apply(payments.refund(paymentId, 100n)); // 10 taken: the pack grant's 60 voided, 50 granted again
    const live = await liveGrantOf(paymentId);
    const before = await lastSeq(accountId);
    await refundUsage(ctx, used.eventId, 'bad answer');

    // (1) the operator, the event, the reason and what the event cost.
    const rows = await trail(accountId, before);
    expect(rows.map((r) => [r.action, r.subject_type, r.subject_id, r.actor_kind, r.request_id])).toEqual([['usage.refunded', 'usage_event', used.eventId, 'admin_env', 'req-operator']]);
    expect(rows[0]!.details).toMatchObject({ reason: 'bad answer', cost: '40' });

    // (2)-(5): the live grant of 50 holds 90; its grant still says 50 (what was granted), its batch's allocated 90.
    let story = await expectStory(accountId);
    expect(story.balance.totalMicroCredits).toBe(credits(90));
    expect(lines(story.current)).toEqual({ 'granted.PURCHASE': credits(150), consumed: -credits(40), voided: -credits(60), refunded: credits(40) });
    expect(story.batches.get(packGrantId)).toMatchObject({ status: 'VOIDED', allocated: credits(100), remaining: 0n });
    expect(story.batches.get(live)).toMatchObject({ status: 'ACTIVE', granted: credits(50), allocated: credits(90), remaining: credits(90) });

    // The 10 % refund fails: its 10 come back, the live grant's 90 voided and granted again with them.
    expect(await apply(payments.refundFailed(paymentId))).toMatchObject({ result: 'restored', restoredMicroCredits: credits(10) });
    const next = await liveGrantOf(paymentId);
    story = await expectStory(accountId);
    expect(story.balance.totalMicroCredits).toBe(credits(100));
    expect(story.batches.get(live)).toMatchObject({ status: 'VOIDED', allocated: credits(90), remaining: 0n });
    expect(story.batches.get(next)).toMatchObject({ status: 'ACTIVE', granted: credits(100), allocated: credits(100), remaining: credits(100) });
    expect(lines(story.current)).toEqual({ 'granted.PURCHASE': credits(250), consumed: -credits(40), voided: -credits(150), refunded: credits(40) });

    // A full refund now takes the 100 back.
    await apply(payments.refund(paymentId));
    story = await expectStory(accountId);
    expect(story.balance.totalMicroCredits).toBe(0n);
    expect(lines(story.current)).toEqual({ 'granted.PURCHASE': credits(250), consumed: -credits(40), voided: -credits(250), refunded: credits(40) });
  });

  it('after a 50 % refund that found nothing unused (all 100 spent): the refund gives back 50 and the trail says so', async () => {
    const { accountId, paymentId, payments, used, apply, ctx, packGrantId } = await boughtAndSpent(100);
    await apply(payments.refund(paymentId, 500n)); // nothing left to take: recorded only
    const before = await lastSeq(accountId);
    await refundUsage(ctx, used.eventId, 'bad answer');
    const rows = await trail(accountId, before);
    expect(rows.map((r) => r.action)).toEqual(['usage.refunded']);
    // What the refund gave back is not what the event cost: the payment's refunded share was withheld.
    expect(rows[0]!.details).toMatchObject({ reason: 'bad answer', cost: '100', givenBack: '50' });
    let story = await expectStory(accountId);
    expect(story.balance.totalMicroCredits).toBe(credits(50));
    expect(lines(story.current)).toEqual({ 'granted.PURCHASE': credits(100), consumed: -credits(100), refunded: credits(50) });
    expect(story.batches.get(packGrantId)).toMatchObject({ status: 'ACTIVE', allocated: credits(100), remaining: credits(50) });

    // The 50 % refund fails: the 50 the usage refund withheld for it come back.
    expect(await apply(payments.refundFailed(paymentId))).toMatchObject({ result: 'restored', restoredMicroCredits: credits(50) });
    story = await expectStory(accountId);
    expect(story.balance.totalMicroCredits).toBe(credits(100));
    expect(lines(story.current)).toEqual({ 'granted.PURCHASE': credits(200), consumed: -credits(100), refunded: credits(50), voided: -credits(50) });
  });

  it('after a full refund: the usage refund gives nothing back, and the trail says so', async () => {
    const { accountId, paymentId, payments, used, apply, ctx } = await boughtAndSpent(40);
    await apply(payments.refund(paymentId));
    const before = await lastSeq(accountId);
    await refundUsage(ctx, used.eventId, 'bad answer');
    expect((await trail(accountId, before)).map((r) => [r.action, r.details.cost, r.details.givenBack])).toEqual([['usage.refunded', '40', '0']]);
    const { current, balance } = await expectStory(accountId);
    expect(balance.totalMicroCredits).toBe(0n);
    expect(lines(current)).toEqual({ 'granted.PURCHASE': credits(100), consumed: -credits(40), voided: -credits(60) });
  });
});

describe('a void of a grant whose credit a refund of last period\'s usage brought back', () => {
  it("voiding a grant whose credit a refund of last period's usage brought back: the trail and the statement show all it took", async () => {
    const T0 = new Date(Date.UTC(2026, 9, 1));
    s.setNow(T0);
    const ctx: ServiceContext = { ...s, actor: OPERATOR };
    const accountId = await createFundedAccount(s, { paid: 100 });
    const mistake = await grantCredits(ctx, { accountId, amountMicroCredits: credits(100), type: 'FREE', source: 'ADJUSTMENT', expiresAt: null, reference: null, idempotencyKey: 'mistake' });
    const ev = await recordUsage(s, { accountId, idempotencyKey: 'u', category: 'units', quantities: { units: '95' } }); // FREE first: from the mistake
    const next = new Date(T0.getTime() + 40 * DAY_MS);
    s.setNow(next);
    await refundUsage(ctx, ev.eventId, 'bad answer');
    const before = await lastSeq(accountId);
    await voidGrant(ctx, mistake.grantId, 'granted by mistake');
    const { rows: g } = await s.pool.query('SELECT voided_micro_credits::text AS v FROM credit_grants WHERE id = $1', [mistake.grantId]);
    expect(g[0].v).toBe(credits(100).toString()); // all it took (voided_micro_credits is what the void took back)
    const rows = await trail(accountId, before);
    expect(rows.map((r) => [r.action, r.subject_id, r.actor_kind, r.details.voidedAmount, r.details.reason])).toEqual([['grant.voided', mistake.grantId, 'admin_env', '100', 'granted by mistake']]);
    const { statements: sts } = await expectStory(accountId, next);
    expect(sts.map(lines)).toEqual([
      { 'granted.PURCHASE': credits(100), 'granted.ADJUSTMENT': credits(100), consumed: -credits(95) },
      { refunded: credits(95), voided: -credits(100) },
    ]);
    expect(sts.map((st) => [st.openingTotalMicroCredits, st.closingTotalMicroCredits])).toEqual([
      [0n, credits(105)],
      [credits(105), credits(100)],
    ]);
    s.setNow(null);
  });
});

describe('a charge rolls a due plan period first', () => {
  it("the roll's grant and the RESET expiry land in their periods, the charge in the new one; nothing audited (a roll is time passing); everything reconciles", async () => {
    const anchor = new Date('2026-03-31T10:00:00.000Z');
    s.setNow(new Date(anchor.getTime() - 60_000));
    const plan = await createPlan(s, { name: `today-${randomUUID()}`, monthlyMicroCredits: credits(50), rollover: 'RESET', rolloverCapMicroCredits: null, priceUsd: '10' });
    const accountId = await createFundedAccount(s, { paid: 100 });
    s.setNow(anchor);
    await subscribeToPlan({ ...s, actor: OPERATOR }, accountId, plan.id);
    await recordUsage(s, { accountId, idempotencyKey: 'a', category: 'units', quantities: { units: '10' } });
    const before = await lastSeq(accountId);
    const boundary = new Date('2026-04-30T10:00:00.000Z');
    const now = new Date(boundary.getTime() + 60_000);
    s.setNow(now);
    await recordUsage(s, { accountId, idempotencyKey: 'b', category: 'units', quantities: { units: '30' } }); // rolls first: the new 50 pay
    expect(await trail(accountId, before)).toEqual([]);
    const { statements: sts, batches } = await expectStory(accountId, now);
    const [march, april] = sts.slice(-2);
    expect(lines(march!)).toMatchObject({ 'granted.SUBSCRIPTION': credits(50), consumed: -credits(10), expired: -credits(40) });
    expect(lines(april!)).toEqual({ 'granted.SUBSCRIPTION': credits(50), consumed: -credits(30) });
    expect(april!.openingTotalMicroCredits).toBe(credits(100));
    expect(april!.closingTotalMicroCredits).toBe(credits(120));
    expect([...batches.values()].filter((b) => b.status === 'ACTIVE').map((b) => b.remaining).sort()).toEqual([credits(100), credits(20)].sort());
    const { rows } = await s.pool.query('SELECT opening_period_start, opening_total_micro_credits::text AS t FROM balances WHERE account_id = $1', [accountId]);
    expect([rows[0].opening_period_start, rows[0].t]).toEqual([boundary, credits(100).toString()]);
    s.setNow(null);
  });
});

describe('an auto top-up turned off while its charge is in flight', () => {
  it('the charge the provider made is looked up and granted once: on the AUTO_TOP_UP line, not audited (a worker), everything reconciles', async () => {
    s.setNow(null);
    const payments = new PaymentSimulator();
    const ctx: ServiceContext = { ...s, payments, actor: OPERATOR };
    const accountId = await createFundedAccount(s, { paid: 100 });
    const pack = await createCreditPack(s, { name: `today-top-up-${randomUUID()}`, microCredits: credits(20), bonusMicroCredits: 0n, priceUsd: '2', expiresAfterDays: null });
    const reference = `pm_ok_${randomUUID()}`;
    await attachPaymentMethod(ctx, accountId, reference);
    payments.script(reference, ['timeout_after_charge']); // charged, the answer lost
    const settings = { accountId, thresholdMicroCredits: credits(50), packId: pack.id, maxPerPeriod: 3 };
    await setAutoTopUp(ctx, { ...settings, enabled: true });
    await recordUsage(s, { accountId, idempotencyKey: 'use', category: 'units', quantities: { units: '60' } }); // 40 < 50: a top-up starts
    const { rows } = await s.pool.query(`SELECT id FROM auto_top_ups WHERE account_id = $1`, [accountId]);
    expect(rows).toHaveLength(1);
    const topUp = { topUpId: rows[0].id as string, accountId };
    expect(await runAutoTopUp(ctx, topUp, { attemptsMade: 0, attempts: 3 })).toMatchObject({ status: 'PENDING' });
    await setAutoTopUp(ctx, { ...settings, enabled: false });
    const before = await lastSeq(accountId);
    expect(await runAutoTopUp(ctx, topUp, { attemptsMade: 1, attempts: 3 })).toMatchObject({ status: 'SUCCEEDED' });
    expect(payments.chargeCount(reference)).toBe(1);
    expect(await trail(accountId, before)).toEqual([]);
    const { current, balance } = await expectStory(accountId);
    expect(balance.totalMicroCredits).toBe(credits(60));
    expect(lines(current)).toEqual({ 'granted.PURCHASE': credits(100), 'granted.AUTO_TOP_UP': credits(20), consumed: -credits(60) });
  });
});
