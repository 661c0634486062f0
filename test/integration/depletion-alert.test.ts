/**
 * The depletion notice of refused work (README "Alerts at 25 %, 15 % and 0 %";
 * src/services/depletion-alerts.ts). A charge without a hold never overdraws, so an account left
 * with less credit than its next charge costs, but more than 0.01 % of its period's credit, had
 * its work refused with INSUFFICIENT_CREDITS and never got its 0 % alert. Now the first refusal
 * for lack of credit in a period records it (once, through the same table, unique key and outbox
 * rows as balances_changed), and the refused charge itself still writes nothing. Real PostgreSQL.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import { createTestServices, settledCode, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { recordUsage, recordUsageBatch, applyCharge, chargeAccounts } from '../../src/services/record-usage.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { setSpendingBudget } from '../../src/services/spending-budgets.js';
import { GroupCommitter } from '../../src/services/group-commit.js';
import { DepletionAlerts } from '../../src/services/depletion-alerts.js';
import { credits } from '../../src/ledger/credits.js';
import type { ServiceContext } from '../../src/services/context.js';

let services: TestServices;

beforeAll(() => {
  services = createTestServices(8);
});

afterAll(async () => {
  await services.close();
});

/** Charges `units` credits (the test price book's `units` rule: 1 credit per unit). */
const spend = (ctx: ServiceContext, accountId: string, units: string, extra: { agentId?: string } = {}) =>
  recordUsage(ctx, { accountId, idempotencyKey: `dep-${randomUUID()}`, category: 'units', quantities: { units }, ...extra });

/** The account's alerts, oldest first. */
async function alerts(accountId: string): Promise<{ id: string; threshold: number; percent: number; available: string }[]> {
  const { rows } = await services.pool.query(
    `SELECT id::text, threshold, percent_remaining AS percent, available_micro_credits::text AS available FROM credit_alerts WHERE account_id = $1 ORDER BY seq`,
    [accountId],
  );
  return rows;
}

/** The account's outbox rows after `afterId` (0: all), in id order, as [topic, alertId or jobId or 'snapshot']. */
async function outbox(accountId: string, afterId = '0'): Promise<[string, string][]> {
  const { rows } = await services.pool.query(`SELECT topic, payload FROM outbox_events WHERE account_id = $1 AND id > $2 ORDER BY id`, [accountId, afterId]);
  return rows.map((r) => [r.topic as string, (r.payload.alertId ?? r.payload.jobId ?? 'snapshot') as string]);
}

async function lastOutboxId(accountId: string): Promise<string> {
  const { rows } = await services.pool.query(`SELECT COALESCE(max(id), 0)::text AS id FROM outbox_events WHERE account_id = $1`, [accountId]);
  return rows[0].id as string;
}

async function head(accountId: string) {
  const { rows } = await services.pool.query(
    `SELECT b.version::text, b.total_micro_credits::text AS total,
            (SELECT count(*)::int FROM usage_events u WHERE u.account_id = b.account_id) AS events,
            (SELECT count(*)::int FROM ledger_entries e WHERE e.account_id = b.account_id) AS entries
       FROM balances b WHERE b.account_id = $1`,
    [accountId],
  );
  return rows[0];
}

/** A funded account (100 credits) charged down to 0.5 credit: 0.5 % left, so 25 % and 15 % raised, 0 % not. */
async function drainedAccount(ctx: ServiceContext = services): Promise<string> {
  const accountId = await createFundedAccount(ctx, { paid: 100 });
  await spend(ctx, accountId, '99.5');
  expect((await alerts(accountId)).map((a) => a.threshold)).toEqual([25, 15]);
  return accountId;
}

/** The expected single 0 % alert of a drained account, and its outbox rows. */
async function expectOneDepletionAlert(accountId: string, outboxBefore: string): Promise<void> {
  const zero = (await alerts(accountId)).filter((a) => a.threshold === 0);
  expect(zero).toEqual([{ id: expect.any(String), threshold: 0, percent: 0.5, available: String(credits(1) / 2n) }]);
  // One `creditAlerts` publication and one webhook delivery job, as balances_changed writes them.
  expect(await outbox(accountId, outboxBefore)).toEqual([
    ['alert', zero[0]!.id],
    ['job', `webhook-credit_alert-${zero[0]!.id}`],
  ]);
}

describe('the 0 % alert of work refused for lack of credit', () => {
  it('the first refused charge of the period records it, with the remainder as available; the refused charge writes nothing', async () => {
    const accountId = await drainedAccount();
    const before = await head(accountId);
    const outboxBefore = await lastOutboxId(accountId);
    await expect(spend(services, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    await expectOneDepletionAlert(accountId, outboxBefore);
    expect(await head(accountId)).toEqual(before); // no event, no ledger entry, no new version

    // Refused again: nothing more.
    const after = await lastOutboxId(accountId);
    await expect(spend(services, accountId, '2')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await outbox(accountId, after)).toEqual([]);
    expect((await alerts(accountId)).map((a) => a.threshold)).toEqual([25, 15, 0]);
  });

  it('N concurrent refused charges give exactly one alert, on the statement path and through group commit', async () => {
    const committer = new GroupCommitter(services.pool, services.clock, chargeAccounts, applyCharge, { maxTransactions: 2 });
    for (const ctx of [services, { ...services, groupCommit: committer }, { ...services, depletionAlerts: new DepletionAlerts() }] as ServiceContext[]) {
      const accountId = await drainedAccount(ctx);
      const outboxBefore = await lastOutboxId(accountId);
      // Without ctx.depletionAlerts, each refusal checks on its own (as refusals in several processes): they race to one alert.
      const outcomes = await Promise.allSettled(Array.from({ length: 16 }, () => spend(ctx, accountId, '1')));
      expect(outcomes.map(settledCode)).toEqual(Array(16).fill('INSUFFICIENT_CREDITS'));
      await expectOneDepletionAlert(accountId, outboxBefore);
    }
  });

  it('a refused item of recordUsageBatch and a refused hold record it too', async () => {
    const a = await drainedAccount();
    const aBefore = await lastOutboxId(a);
    const results = await recordUsageBatch(
      services,
      [1, 2].map((units) => ({ accountId: a, idempotencyKey: `dep-b-${randomUUID()}`, category: 'units', quantities: { units: String(units) } })),
      { maxItems: 10 },
    );
    expect(results.map((r) => (r.ok ? 'OK' : (r.error as { code: string }).code))).toEqual(['INSUFFICIENT_CREDITS', 'INSUFFICIENT_CREDITS']);
    await expectOneDepletionAlert(a, aBefore);

    const b = await drainedAccount();
    const bBefore = await lastOutboxId(b);
    await expect(reserveCredits(services, { accountId: b, amountMicroCredits: credits(1), ttlSeconds: 60, idempotencyKey: `dep-h-${randomUUID()}` })).rejects.toMatchObject({
      code: 'INSUFFICIENT_CREDITS',
    });
    await expectOneDepletionAlert(b, bBefore);
  });

  it('is not raised by refused work larger than 5 % of the period\'s credit; a smaller refusal at the same balance version raises it', async () => {
    // A request bigger than what is left is no sign the pool ran out when it is a big share of
    // it (60 % left and a request for 61 %): the period's one depletion notice would be spent on
    // it. The drained account has 0.5 of 100 credits left; 6 credits is 6 % of the period's.
    const remembered = new DepletionAlerts();
    const ctx: ServiceContext = { ...services, depletionAlerts: remembered };
    const accountId = await drainedAccount(ctx);
    const outboxBefore = await lastOutboxId(accountId);
    await expect(spend(ctx, accountId, '6')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    await expect(reserveCredits(ctx, { accountId, amountMicroCredits: credits(50), ttlSeconds: 60, idempotencyKey: `dep-h-${randomUUID()}` })).rejects.toMatchObject({
      code: 'INSUFFICIENT_CREDITS',
    });
    expect((await alerts(accountId)).map((a) => a.threshold)).toEqual([25, 15]);
    expect(await outbox(accountId, outboxBefore)).toEqual([]);
    // The same process, the same balance version: a 1-credit refusal is still checked, and due.
    await expect(spend(ctx, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    await expectOneDepletionAlert(accountId, outboxBefore);
  });

  it('is not raised by an agent budget refusal, nor before the period has had credit', async () => {
    const accountId = await createFundedAccount(services, { paid: 100 });
    await setSpendingBudget(services, { accountId, subjectKind: 'AGENT', subjectId: 'bot', limitMicroCredits: credits(1) });
    await expect(spend(services, accountId, '2', { agentId: 'bot' })).rejects.toMatchObject({ code: 'BUDGET_EXCEEDED' });
    expect(await alerts(accountId)).toEqual([]);

    const empty = await createFundedAccount(services, {});
    const outboxBefore = await lastOutboxId(empty);
    await expect(spend(services, empty, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(await alerts(empty)).toEqual([]);
    expect(await outbox(empty, outboxBefore)).toEqual([]);
  });

  it('a process remembers the (account, period) it answered: later refusals cost no statement', async () => {
    const remembered = new DepletionAlerts();
    const ctx: ServiceContext = { ...services, depletionAlerts: remembered };
    const accountId = await drainedAccount(ctx);
    await expect(spend(ctx, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect((await alerts(accountId)).map((a) => a.threshold)).toEqual([25, 15, 0]);
    // Were the alert gone, a process that remembers it would not look again; another would.
    await services.pool.query(`DELETE FROM credit_alerts WHERE account_id = $1 AND threshold = 0`, [accountId]);
    await expect(spend(ctx, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect((await alerts(accountId)).map((a) => a.threshold)).toEqual([25, 15]);
    expect(remembered.size).toBe(1);
    await expect(spend({ ...services, depletionAlerts: new DepletionAlerts() }, accountId, '1')).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect((await alerts(accountId)).map((a) => a.threshold)).toEqual([25, 15, 0]);
  });
});
