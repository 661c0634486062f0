/**
 * createAccount: opens a credit pool (ORGANIZATION or USER) with its balance row and, unless
 * asked not to, the welcome bonus as FREE credit expiring after
 * Settings.welcomeBonusExpiresAfterDays. Idempotent on externalId: the same input again returns
 * the existing account and grants nothing; different input (any field: name, kind, welcomeBonus,
 * testMode, testClockStart) is IDEMPOTENCY_CONFLICT, judged by the request fingerprint kept on
 * the account (accounts.request_hash).
 */
import { singleLine } from '../ledger/text-input.js';
import { randomBytes } from 'node:crypto';
import { withTransaction, toBigInt } from '../db/pg.js';
import { actorOf, recordAuditEvent } from '../audit/audit-log.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { AccountTx } from './account-tx.js';
import { applyGrant } from './grant-credits.js';
import type { ServiceContext } from './context.js';
import { requestHash } from './request-hash.js';
import { LATE_TEST_CLOCK, MAX_TEST_CLOCK } from './test-clock.js';
import { WELCOME_BONUS_GRANT_KEY } from '../ledger/grant-keys.js';

/** A validated createAccount request. */
export interface CreateAccountCommand {
  externalId: string;
  name: string;
  kind: 'ORGANIZATION' | 'USER';
  welcomeBonus: boolean;
  testMode: boolean;
  /** Test-mode only: the account's creation time and test clock start. */
  testClockStart: Date | null;
}

const REFERRAL_ALPHABET = 'ABCDEFGHJKLMNPQRSTUVWXYZ23456789';

/** A random 10-character referral code (no look-alike characters). */
export function newReferralCode(): string {
  const bytes = randomBytes(10);
  let code = '';
  for (const b of bytes) code += REFERRAL_ALPHABET[b % REFERRAL_ALPHABET.length];
  return code;
}

const DAY_MS = 86_400_000;

/**
 * Whether the account row `a` (id, name, kind, test_mode, created_at, request_hash) was opened by
 * the request `cmd` whose fingerprint is `hash`. Accounts opened before fingerprints were kept
 * (request_hash NULL) are compared on what the row holds: name, kind, testMode, and a given
 * testClockStart against the creation time it set (welcomeBonus is not recorded on them).
 */
function sameRequest(a: Record<string, unknown>, cmd: CreateAccountCommand, hash: string): boolean {
  if (a.request_hash !== null && a.request_hash !== undefined) return a.request_hash === hash;
  if (a.name !== cmd.name || a.kind !== cmd.kind || a.test_mode !== cmd.testMode) return false;
  return !cmd.testClockStart || (a.created_at as Date).getTime() === cmd.testClockStart.getTime();
}

/**
 * Creates the account (or returns the existing one for a retry).
 * @returns the account id and whether it already existed.
 * @throws LedgerError BAD_USER_INPUT (empty/oversized ids, testClockStart without testMode or
 *   past MAX_TEST_CLOCK),
 *   IDEMPOTENCY_CONFLICT (externalId exists, opened with other input).
 */
export async function createAccount(ctx: ServiceContext, cmd: CreateAccountCommand): Promise<{ accountId: string; replayed: boolean }> {
  if (!cmd.externalId.trim() || cmd.externalId.length > 200) throw badInput('externalId', 'must be 1 to 200 characters');
  if (!cmd.name.trim() || cmd.name.length > 200) throw badInput('name', 'must be 1 to 200 characters');
  singleLine(cmd.externalId, 'externalId');
  singleLine(cmd.name, 'name');
  if (cmd.testClockStart && !cmd.testMode) throw badInput('testClockStart', 'is only allowed with testMode: true');
  if (cmd.testClockStart && cmd.testClockStart.getTime() > MAX_TEST_CLOCK.getTime()) throw badInput('testClockStart', LATE_TEST_CLOCK);
  const hash = requestHash({
    op: 'createAccount',
    externalId: cmd.externalId,
    name: cmd.name,
    kind: cmd.kind,
    welcomeBonus: cmd.welcomeBonus,
    testMode: cmd.testMode,
    testClockStart: cmd.testClockStart,
  });
  return withTransaction(ctx.pool, async (tx) => {
    const createdAt = cmd.testClockStart ?? ctx.clock();
    const inserted = await tx.query(
      `INSERT INTO accounts (id, external_id, name, kind, test_mode, test_clock_at, created_at, billing_anchor_at, referral_code, request_hash)
       VALUES (gen_random_uuid(), $1, $2, $3::"AccountKind", $4, $5, $6, $6, $7, $8)
       ON CONFLICT (external_id) DO NOTHING
       RETURNING id`,
      [cmd.externalId, cmd.name, cmd.kind, cmd.testMode, cmd.testMode ? createdAt : null, createdAt, newReferralCode(), hash],
    );
    if (inserted.rows.length === 0) {
      const { rows } = await tx.query('SELECT id, name, kind, test_mode, created_at, request_hash FROM accounts WHERE external_id = $1', [cmd.externalId]);
      const a = rows[0];
      if (!a || !sameRequest(a, cmd, hash)) {
        throw new LedgerError('IDEMPOTENCY_CONFLICT', 'an account with this externalId was already created with different input (name, kind, welcomeBonus, testMode or testClockStart)');
      }
      return { accountId: a.id as string, replayed: true };
    }
    const accountId = inserted.rows[0].id as string;
    await tx.query('INSERT INTO balances (account_id, updated_at) VALUES ($1, $2)', [accountId, createdAt]);
    const atx = await AccountTx.lock(tx, accountId, createdAt);
    atx.touch();
    if (cmd.welcomeBonus) {
      const s = await tx.query('SELECT welcome_bonus_micro_credits, welcome_bonus_expires_after_days FROM settings WHERE id = 1');
      const bonus = toBigInt(s.rows[0]?.welcome_bonus_micro_credits ?? 0);
      const days = s.rows[0]?.welcome_bonus_expires_after_days as number | null | undefined;
      if (bonus > 0n) {
        await applyGrant(atx, {
          amountMicroCredits: bonus,
          type: 'FREE',
          source: 'WELCOME_BONUS',
          expiresAt: days ? new Date(atx.now.getTime() + days * DAY_MS) : null,
          reference: 'welcome bonus',
          idempotencyKey: WELCOME_BONUS_GRANT_KEY,
        });
      }
    }
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'account.created',
      accountId,
      subjectType: 'account',
      subjectId: accountId,
      details: {
        externalId: cmd.externalId,
        name: cmd.name,
        kind: cmd.kind,
        welcomeBonus: cmd.welcomeBonus,
        testMode: cmd.testMode,
        testClockStart: cmd.testClockStart?.toISOString() ?? null,
      },
    });
    await atx.finish();
    return { accountId, replayed: false };
  });
}
