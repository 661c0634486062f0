/**
 * Helpers shared by the growth API tests (issue #5: promo codes, referrals, budgets, public
 * audience): a fetch that can send extra headers (TestServer.gql cannot), test-mode accounts,
 * settings save/restore, and small counters read straight from PostgreSQL for "nothing changed"
 * checks next to test/api/helpers.ts's snapshot().
 */
import { expect } from 'vitest';
import type { TestServer } from '../../setup/test-server.js';
import { dbId, ok, uniq, type GqlResponse } from '../helpers.js';

/** One day in milliseconds. */
export const DAY_MS = 86_400_000;

/** POSTs a GraphQL operation with a bearer token and any extra headers. */
export async function gqlWithHeaders(
  srv: TestServer,
  query: string,
  variables: Record<string, unknown>,
  token: string,
  headers: Record<string, string>,
): Promise<GqlResponse> {
  const res = await fetch(srv.url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}`, ...headers },
    body: JSON.stringify({ query, variables }),
  });
  return { status: res.status, body: (await res.json()) as GqlResponse['body'] };
}

const CREATE_ACCOUNT = `mutation($input: CreateAccountInput!) { createAccount(input: $input) { id createdAt referralCode testMode } }`;

/** An account created over the API, with what the growth tests read back. */
export interface GrowthAccount {
  id: string;
  createdAt: string;
  referralCode: string;
}

/** Creates an account without welcome bonus; `clockStart` makes it a test-mode account fixed at that instant. */
export async function createAccount(srv: TestServer, opts: { clockStart?: string; kind?: 'ORGANIZATION' | 'USER' } = {}): Promise<GrowthAccount> {
  const input: Record<string, unknown> = { externalId: uniq('growth'), name: 'growth test', kind: opts.kind ?? 'ORGANIZATION', welcomeBonus: false };
  if (opts.clockStart) Object.assign(input, { testMode: true, testClockStart: opts.clockStart });
  const a = ok(await srv.gql(CREATE_ACCOUNT, { input })).createAccount;
  expect(a.testMode).toBe(Boolean(opts.clockStart));
  if (opts.clockStart) expect(a.createdAt).toBe(opts.clockStart);
  return { id: a.id, createdAt: a.createdAt, referralCode: a.referralCode };
}

const SETTINGS = `{ settings { referralRewardCredits referralMaxRewardsPerAccount } }`;
const UPDATE_SETTINGS = `mutation($input: SettingsInput!) { updateSettings(input: $input) { referralRewardCredits referralMaxRewardsPerAccount } }`;

/** The referral settings as the API reports them. */
export async function referralSettings(srv: TestServer): Promise<{ referralRewardCredits: string; referralMaxRewardsPerAccount: number }> {
  return ok(await srv.gql(SETTINGS)).settings;
}

/** Sets referral settings over the API and checks they took effect. */
export async function setReferralSettings(srv: TestServer, input: { referralRewardCredits?: string; referralMaxRewardsPerAccount?: number }) {
  const s = ok(await srv.gql(UPDATE_SETTINGS, { input })).updateSettings;
  expect(s).toMatchObject(input);
  return s;
}

/** Rows of the growth tables that belong to an account (for "nothing changed" checks). */
export async function growthCounts(srv: TestServer, accountGlobalId: string) {
  const { rows } = await srv.services.pool.query(
    `SELECT (SELECT count(*) FROM promo_redemptions WHERE account_id = $1)::int AS promo_redemptions,
            (SELECT count(*) FROM referrals WHERE referee_account_id = $1 OR referrer_account_id = $1)::int AS referrals,
            (SELECT count(*) FROM usage_events WHERE account_id = $1)::int AS events,
            (SELECT count(*) FROM reservations WHERE account_id = $1)::int AS reservations`,
    [dbId(accountGlobalId)],
  );
  return rows[0] as { promo_redemptions: number; referrals: number; events: number; reservations: number };
}

/** A client-facing message must not reveal billing: no digits, no amounts, no "credit". */
export function expectNeutral(message: string | null | undefined) {
  expect(typeof message).toBe('string');
  expect(message!.length).toBeGreaterThan(0);
  expect(message).not.toMatch(/\d/);
  expect(message).not.toMatch(/credit/i);
  expect(message).not.toMatch(/budget|balance|insufficient|exceed/i);
}
