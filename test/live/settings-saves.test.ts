/**
 * Settings saves and the live credit bar (README "Live updates", "What a settings save changes
 * live"). The review question: when an account's settings change (alert thresholds and the
 * other platform settings, budgets, auto top-up), does a subscribed credit bar miss a state a
 * fresh query shows, or get one with a version it already holds? No: nothing a `Balance` shows is
 * derived from settings (every field comes from the balance snapshot: batches, holds, debt,
 * grants, the billing period and the active plan), so such a save changes nothing a client sees,
 * moves no version and publishes nothing; a query right after it equals the last value the
 * subscription delivered, version included, and the next change arrives as the next version.
 * A threshold added above where the account already is arrives on `creditAlerts` once, with the
 * account's next balance change (test/integration/alert-threshold-changes.test.ts has the rule).
 * One real server (real PostgreSQL and Redis), WebSocket clients.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, ok, uniq } from '../api/helpers.js';
import { ALERTS_SUB, waitForStreamsStarted, streamsStarted, wsSubscribe, type LiveSub } from './helpers.js';

/** Every field of the contract's Balance. */
const BALANCE_FIELDS = `accountId available total reserved free paid debt periodStart periodEnd periodCredits percentRemaining planName depleted nextExpiry { amount at } version updatedAt`;
const BAR_SUB = `subscription ($id: ID!) { balanceChanged(accountId: $id) { ${BALANCE_FIELDS} } }`;
const BALANCE = `query($id: ID!) { account(id: $id) { balance { ${BALANCE_FIELDS} } } }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`;
const SETTINGS_FIELDS = `alertThresholds creditUsdValue welcomeBonusCredits welcomeBonusExpiresAfterDays referralRewardCredits referralMaxRewardsPerAccount`;
const SETTINGS = `query { settings { ${SETTINGS_FIELDS} } }`;
const UPDATE_SETTINGS = `mutation($input: SettingsInput!) { updateSettings(input: $input) { ${SETTINGS_FIELDS} } }`;

let srv: TestServer;
const subs: LiveSub[] = [];
const bearer = () => `Bearer ${srv.adminKey}`;
/** The settings before this file ran: they are platform-wide, other files read them. */
let original: Record<string, unknown>;

beforeAll(async () => {
  srv = await startTestServer({ CHARGE_PATH: 'group' });
  original = ok(await srv.gql(SETTINGS)).settings;
});

afterEach(async () => {
  await Promise.all(subs.splice(0).map((s) => s.dispose()));
  ok(await srv.gql(UPDATE_SETTINGS, { input: original }));
});

afterAll(async () => {
  await srv?.close();
});

/** Charges `units` credits (test price book: category `units`, 1 credit per unit). */
const spend = async (account: string, units: string) =>
  ok(await srv.gql(RECORD, { input: { accountId: account, idempotencyKey: uniq('set'), category: 'units', quantities: { units } } }));

describe('settings saves and the live credit bar', () => {
  it('Balance has no field derived from settings (a field added to it must be decided here)', async () => {
    // Each of these comes from the balance snapshot every money-moving transaction publishes
    // (src/services/balance-figures.ts). A new Balance field derived from something a save
    // changes without a balance change (thresholds, auto top-up, budgets) would need that save
    // to write a balance version and its outbox row (AccountTx.touch + finish), as
    // cancelSubscription does for planName.
    const fields = ok(await srv.gql(`{ __type(name: "Balance") { fields { name } } }`)).__type.fields.map((f: { name: string }) => f.name);
    expect([...fields].sort()).toEqual(
      ['accountId', 'available', 'total', 'reserved', 'free', 'paid', 'debt', 'periodStart', 'periodEnd', 'periodCredits', 'percentRemaining', 'planName', 'depleted', 'nextExpiry', 'version', 'updatedAt'].sort(),
    );
  });

  it('a save of settings, budgets and auto top-up: the bar gets nothing, a query equals its last value, the next change is the next version; an added threshold already passed alerts once', async () => {
    ok(await srv.gql(UPDATE_SETTINGS, { input: { alertThresholds: [25, 15, 0] } }));
    const account = await apiAccount(srv, { paid: '100' });
    await spend(account, '70'); // 30 % left: no alert yet
    const held = ok(await srv.gql(BALANCE, { id: account })).account.balance;

    const before = await streamsStarted(srv.url);
    const bar = wsSubscribe(srv.url, bearer(), BAR_SUB, { id: account });
    const alerts = wsSubscribe(srv.url, bearer(), ALERTS_SUB, { id: account });
    subs.push(bar, alerts);
    await waitForStreamsStarted(srv.url, before + 2);
    await bar.waitFor((s) => s.events.length === 1, 'the starting balance');
    expect(bar.events[0].balanceChanged).toEqual(held);

    // Every kind of settings save there is, for this account and platform-wide.
    ok(
      await srv.gql(UPDATE_SETTINGS, {
        input: { alertThresholds: [50, 25, 15, 0], creditUsdValue: '0.02', welcomeBonusCredits: '5', welcomeBonusExpiresAfterDays: 30, referralRewardCredits: '7', referralMaxRewardsPerAccount: 3 },
      }),
    );
    ok(await srv.gql(`mutation($a: ID!) { setAgentBudget(accountId: $a, agentId: "bot", limit: "5") { agentId } }`, { a: account }));
    ok(await srv.gql(`mutation($a: ID!) { setUserBudget(accountId: $a, userId: "ann", limit: "5") { userId } }`, { a: account }));
    const pack = ok(await srv.gql(`mutation($input: CreateCreditPackInput!) { createCreditPack(input: $input) { id } }`, { input: { name: uniq('pack'), credits: '50', priceUsd: '5' } })).createCreditPack.id;
    ok(await srv.gql(`mutation($a: ID!) { attachPaymentMethod(accountId: $a, reference: "pm_card_visa") { provider } }`, { a: account }));
    // Enabled with available (30) above its threshold (10): nothing to start, so no balance change.
    ok(await srv.gql(`mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) { enabled } }`, { input: { accountId: account, enabled: true, thresholdCredits: '10', packId: pack } }));
    ok(await srv.gql(`mutation($input: SetAutoTopUpInput!) { setAutoTopUp(input: $input) { enabled } }`, { input: { accountId: account, enabled: false, thresholdCredits: '10', packId: pack } }));

    // What a client that refetches now sees is exactly what the bar holds, version included.
    expect(ok(await srv.gql(BALANCE, { id: account })).account.balance).toEqual(held);

    // The next change arrives as the very next version: the saves published no version between
    // (the stream delivers in version order, so any would have arrived first).
    await spend(account, '1');
    await bar.waitFor((s) => s.events.length >= 2, 'the charge after the saves');
    const next = bar.events[1].balanceChanged;
    expect(BigInt(next.version)).toBe(BigInt(held.version) + 1n);
    expect(next.available).toBe('29');
    expect(next.percentRemaining).toBe(29);
    expect(ok(await srv.gql(BALANCE, { id: account })).account.balance).toEqual(next);

    // The 50 % threshold, added while the account was at 30 %: raised once, with that charge.
    await alerts.waitFor((s) => s.events.length >= 1, 'the 50 % alert');
    expect(alerts.events.map((e) => [e.creditAlerts.threshold, e.creditAlerts.percentRemaining])).toEqual([[50, 29]]);
    await spend(account, '5'); // 24 %: the 25 % alert, and no second 50 %
    await alerts.waitFor((s) => s.events.length >= 2, 'the 25 % alert');
    expect(alerts.events.map((e) => e.creditAlerts.threshold)).toEqual([50, 25]);
    await bar.waitFor((s) => s.events.length >= 3, 'the second charge');
    expect(bar.events.map((e) => BigInt(e.balanceChanged.version))).toEqual([0n, 1n, 2n].map((d) => BigInt(held.version) + d));
  });
});
