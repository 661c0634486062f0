/**
 * Shared helpers of the API tests (test/api/*.test.ts): global ids, error-code assertions,
 * accounts made over the API, and "nothing changed" snapshots read straight from PostgreSQL.
 */
import { randomUUID } from 'node:crypto';
import { expect } from 'vitest';
import { decodeGlobalID, encodeGlobalID } from '@pothos/plugin-relay';
import type { TestServer } from '../setup/test-server.js';

/** A GraphQL response as TestServer.gql returns it (data untyped: tests read it as JSON). */
export interface GqlResponse {
  status: number;
  body: { data?: any; errors?: Array<{ message: string; path?: unknown; extensions?: { code?: string; [k: string]: unknown } }> };
}

/** Database uuid inside a Relay global id. */
export function dbId(globalId: string): string {
  return decodeGlobalID(globalId).id;
}

/** Relay global id of a database uuid. */
export function gid(typename: string, id: string): string {
  return encodeGlobalID(typename, id);
}

/** A unique string for external ids and idempotency keys. */
export function uniq(prefix = 'k'): string {
  return `${prefix}-${randomUUID()}`;
}

/** Asserts the response has no errors and returns its data. */
export function ok<T = any>(res: GqlResponse): T {
  expect(res.body.errors, JSON.stringify(res.body.errors)).toBeUndefined();
  expect(res.body.data).toBeTruthy();
  return res.body.data as T;
}

/** Asserts the response carries exactly one error, with extensions.code = `code`, and returns it. */
export function expectError(res: GqlResponse, code: string) {
  const errors = res.body.errors;
  expect(errors, `expected ${code}, got data ${JSON.stringify(res.body.data)}`).toBeDefined();
  expect(errors!.map((e) => e.extensions?.code), JSON.stringify(errors)).toEqual([code]);
  const message = errors![0]!.message;
  expect(typeof message).toBe('string');
  // Never a stack trace or SQL in a client-facing message.
  expect(message).not.toMatch(/\n\s+at |SELECT |INSERT |UPDATE /);
  return errors![0]!;
}

const ACCOUNT_FIELDS = `id externalId name kind createdAt
  balance { version total available reserved free paid debt }
  reconciliation { consistent total batchRemaining debt ledgerSum }`;

/** Creates an account over the API (admin key), optionally funded over the API. Returns its global id. */
export async function apiAccount(
  srv: TestServer,
  opts: { free?: string; paid?: string; kind?: 'ORGANIZATION' | 'USER'; externalId?: string; welcomeBonus?: boolean } = {},
): Promise<string> {
  const data = ok(
    await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
      input: { externalId: opts.externalId ?? uniq('acct'), name: 'API test account', kind: opts.kind ?? 'ORGANIZATION', welcomeBonus: opts.welcomeBonus ?? false },
    }),
  );
  const id = data.createAccount.id as string;
  if (opts.free) await grant(srv, id, opts.free, 'FREE');
  if (opts.paid) await grant(srv, id, opts.paid, 'PAID');
  return id;
}

/** Grants credit over the API; returns the grant's global id. */
export async function grant(srv: TestServer, accountId: string, amount: string, type: 'FREE' | 'PAID', extra: Record<string, unknown> = {}): Promise<string> {
  const data = ok(
    await srv.gql(`mutation($input: GrantCreditsInput!) { grantCredits(input: $input) { id } }`, {
      input: { accountId, amount, type, source: type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE', idempotencyKey: uniq('grant'), ...extra },
    }),
  );
  return data.grantCredits.id as string;
}

/** Reads an account's balance and reconciliation over the API. */
export async function readAccount(srv: TestServer, accountId: string) {
  const data = ok(await srv.gql(`query($id: ID!) { account(id: $id) { ${ACCOUNT_FIELDS} } }`, { id: accountId }));
  expect(data.account).not.toBeNull();
  return data.account as {
    id: string;
    balance: { version: string; total: string; available: string; reserved: string; free: string; paid: string; debt: string };
    reconciliation: { consistent: boolean; total: string; batchRemaining: string; debt: string; ledgerSum: string };
  };
}

/** Asserts the account's ledger invariant as the API reports it. */
export async function expectConsistent(srv: TestServer, accountId: string) {
  const a = await readAccount(srv, accountId);
  expect(a.reconciliation.consistent).toBe(true);
  expect(a.reconciliation.ledgerSum).toBe(a.reconciliation.total);
  return a;
}

/**
 * Everything a money-moving mutation could change on one account, read from PostgreSQL:
 * balance row (version, total, debt), counts of ledger entries, grants, usage events,
 * drawdowns and reservations, and every batch's and reservation's state.
 */
export async function snapshot(srv: TestServer, accountGlobalId: string) {
  const id = dbId(accountGlobalId);
  const q = (sql: string) => srv.services.pool.query(sql, [id]).then((r) => r.rows);
  const [balance, counts, batches, reservations, events] = await Promise.all([
    q(`SELECT version::text, total_micro_credits::text AS total, debt_micro_credits::text AS debt FROM balances WHERE account_id = $1`),
    q(`SELECT (SELECT count(*) FROM ledger_entries WHERE account_id = $1)::int AS ledger,
              (SELECT count(*) FROM credit_grants WHERE account_id = $1)::int AS grants,
              (SELECT count(*) FROM usage_events WHERE account_id = $1)::int AS events,
              (SELECT count(*) FROM drawdowns d JOIN usage_events e ON e.id = d.usage_event_id WHERE e.account_id = $1)::int AS drawdowns,
              (SELECT count(*) FROM reservations WHERE account_id = $1)::int AS reservations`),
    q(`SELECT id, status, remaining_micro_credits::text AS remaining, expires_at FROM credit_batches WHERE account_id = $1 ORDER BY id`),
    q(`SELECT id, status, consumed_micro_credits::text AS consumed, expires_at FROM reservations WHERE account_id = $1 ORDER BY id`),
    q(`SELECT id, refunded_at FROM usage_events WHERE account_id = $1 ORDER BY id`),
  ]);
  expect(balance).toHaveLength(1);
  return { balance: balance[0], counts: counts[0], batches, reservations, events };
}

/** Runs `fn` and asserts that the account's snapshot (version, ledger, batches...) did not change. */
export async function expectUnchanged<T>(srv: TestServer, accountGlobalIds: string[], fn: () => Promise<T>): Promise<T> {
  const before = await Promise.all(accountGlobalIds.map((a) => snapshot(srv, a)));
  const result = await fn();
  const after = await Promise.all(accountGlobalIds.map((a) => snapshot(srv, a)));
  expect(after).toEqual(before);
  return result;
}

/** Counts of platform-wide rows (for failures that name no existing account). */
export async function globalCounts(srv: TestServer) {
  const { rows } = await srv.services.pool.query(
    `SELECT (SELECT count(*) FROM accounts)::int AS accounts, (SELECT count(*) FROM ledger_entries)::int AS ledger,
            (SELECT count(*) FROM credit_grants)::int AS grants, (SELECT count(*) FROM usage_events)::int AS events,
            (SELECT count(*) FROM reservations)::int AS reservations, (SELECT max(version) FROM price_books)::int AS book,
            (SELECT max(seq) FROM ledger_entries)::text AS last_entry`,
  );
  return rows[0];
}

/** Row counts of every table a refused request could write to besides the accounts' own rows. */
export async function platformCounts(srv: TestServer) {
  const { rows } = await srv.services.pool.query(
    `SELECT (SELECT count(*) FROM spending_budgets)::int AS budgets, (SELECT count(*) FROM plans)::int AS plans,
            (SELECT count(*) FROM credit_packs)::int AS packs, (SELECT count(*) FROM promo_codes)::int AS promos,
            (SELECT count(*) FROM payments)::int AS payments`,
  );
  return { ...(await globalCounts(srv)), ...rows[0] };
}

/**
 * Sends the request, asserts exactly one error with `code` whose message matches `message`, and
 * that nothing changed: the accounts' snapshots and the platform-wide row counts. Returns the error.
 */
export async function expectRefusedUnchanged(srv: TestServer, accountGlobalIds: string[], send: () => Promise<GqlResponse>, code: string, message: RegExp) {
  const counts = await platformCounts(srv);
  const res = await expectUnchanged(srv, accountGlobalIds, send);
  const error = expectError(res, code);
  expect(error.message).toMatch(message);
  expect(await platformCounts(srv)).toEqual(counts);
  return error;
}

/** What bad-input tests aim at: a funded account with one grant, one usage event and one hold, and a bystander. */
export interface RefusalTargets {
  acct: string;
  other: string;
  grantId: string;
  eventId: string;
  holdId: string;
}

/** Creates {@link RefusalTargets} over the API (50 PAID + 5 FREE credits on `acct`, 5 PAID on `other`). */
export async function refusalTargets(srv: TestServer): Promise<RefusalTargets> {
  const acct = await apiAccount(srv, { paid: '50' });
  const other = await apiAccount(srv, { paid: '5' });
  const grantId = await grant(srv, acct, '5', 'FREE');
  const eventId = ok(await srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId: acct, idempotencyKey: uniq('u'), category: 'unit' } })).recordUsage.id;
  const holdId = ok(await srv.gql(`mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`, { input: { accountId: acct, amount: '2', idempotencyKey: uniq('h') } })).reserveCredits.id;
  return { acct, other, grantId, eventId, holdId };
}
