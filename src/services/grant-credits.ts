/**
 * grantCredits: adds a credit batch to an account (one grant = one batch). Idempotent on
 * (account, idempotencyKey). The new credit first repays any debt (DEBT_REPAY entry), the rest
 * stays in the batch.
 *
 * A plan roll that is due and has not run yet runs first (plans.ts rollDuePeriodsFirst), in
 * every service that grants (grantCredits here, promo codes, referrals, payment settlement,
 * refund-failure, partial-refund and won-dispute give-backs), as before a charge, a hold, a void,
 * a refund, a switch or a cancel: on time, the roll's grant repaid the debt the account carried
 * over the period start, and the later grant stayed in its batch; a grant made before a late
 * roll used to repay that debt itself, so the roll's grant stood whole and the next capped trim
 * cut more (test/integration/statement-audit.test.ts, grant-roll-paths.test.ts). Not in
 * applyGrant: the roll grants through it (plans.ts grantPeriod). A replay changes nothing and
 * does not roll. createAccount's welcome bonus needs none: a new account has no plan.
 */
import { withTransaction, type Tx } from '../db/pg.js';
import { actorOf, recordAuditEvent, type AuditActor } from '../audit/audit-log.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import type { CreditType } from '../ledger/drawdown.js';
import { AccountTx } from './account-tx.js';
import type { ServiceContext } from './context.js';
import { requestHash } from './request-hash.js';
import { MAX_ABS_MICRO_CREDITS, formatCredits, minBig } from '../ledger/credits.js';
import { BALANCE_LIMIT_REASON, idempotencyConflict } from '../ledger/refusals.js';
import { scheduleExpiry } from './expire-due.js';
import { reservedGrantKeyError } from '../ledger/grant-keys.js';
// A cycle (plans.ts grants through applyGrant): used only when a grant runs, never at module evaluation.
import { rollDuePeriodsFirst } from './plans.js';

/** Where credit came from (contract enum GrantSource). */
export type GrantSource = 'WELCOME_BONUS' | 'PROMO_CODE' | 'REFERRAL' | 'PURCHASE' | 'SUBSCRIPTION' | 'AUTO_TOP_UP' | 'ADJUSTMENT';

/** A validated grant request. */
export interface GrantCommand {
  accountId: string;
  amountMicroCredits: bigint;
  type: CreditType;
  source: GrantSource;
  /** Null: never expires. Must be after the account's "now". */
  expiresAt: Date | null;
  reference: string | null;
  idempotencyKey: string;
}

/** The grant's id and whether this call replayed an earlier one. */
export interface GrantResult {
  grantId: string;
  replayed: boolean;
}

/**
 * The BAD_USER_INPUT refusal of adding `amountMicroCredits` to a figure now at
 * `currentMicroCredits` when the sum would pass MAX_ABS_MICRO_CREDITS (the signed 64-bit columns
 * every amount, balance and total is kept in; src/ledger/credits.ts), else null.
 * @param field the input field named in the error (`amount`, `code`, `packId`, ...).
 * @returns a LedgerError with `extensions.reason` BALANCE_LIMIT, or null when the sum fits.
 */
export function balanceRoomError(currentMicroCredits: bigint, amountMicroCredits: bigint, field: string): LedgerError | null {
  if (currentMicroCredits + amountMicroCredits <= MAX_ABS_MICRO_CREDITS) return null;
  return new LedgerError(
    'BAD_USER_INPUT',
    `${field}: granting it would take the account's credit above the largest amount kept (${formatCredits(MAX_ABS_MICRO_CREDITS)} credits); nothing was granted`,
    { field, reason: BALANCE_LIMIT_REASON },
  );
}

/**
 * Applies a grant inside an already locked account transaction (used by grantCredits and
 * createAccount's welcome bonus, promo codes, referrals, plan allowances, purchases and top-ups).
 * It does not roll a due plan: the services that grant run plans.ts rollDuePeriodsFirst first
 * (module comment); the roll's own grant comes through here.
 * Refuses a grant that would take the account's total, or the credit granted in its current
 * billing period (a balance figure), above MAX_ABS_MICRO_CREDITS: checked here, under the
 * account lock, so the refusal is exact and nothing is written.
 * `effectiveAt` (default: the account's now; never after it) dates the grant, its batch and its
 * ledger entries when it belongs to an earlier instant: a plan's allowance of a billing period
 * whose roll runs late, ended or current (plans.ts grantPeriod), so the period figures and
 * statements count it at the period start, as if the roll had run on time; its `expiresAt` need
 * only be after `effectiveAt` (a late roll's grant of an ended RESET period, repaying debt, whose
 * rest the roll then expires at that period's end).
 * `keyNamesGrant`: a grant already made under the key is this grant whatever its input, so it is
 * replayed instead of IDEMPOTENCY_CONFLICT (a plan's period grant, whose key names the period's
 * start while its clamped end can differ: plans.ts grantPeriod).
 * @throws LedgerError IDEMPOTENCY_CONFLICT (same key, different input, unless keyNamesGrant),
 *   BAD_USER_INPUT (amount <= 0, expiresAt not in the future, over the limit: reason BALANCE_LIMIT).
 */
export async function applyGrant(
  atx: AccountTx,
  cmd: Omit<GrantCommand, 'accountId'>,
  effectiveAt?: Date,
  opts: { keyNamesGrant?: boolean } = {},
): Promise<GrantResult> {
  const hash = requestHash({ ...cmd, op: 'grant' });
  const existing = await atx.tx.query(
    'SELECT id, request_hash FROM credit_grants WHERE account_id = $1 AND idempotency_key = $2',
    [atx.accountId, cmd.idempotencyKey],
  );
  const prior = existing.rows[0];
  if (prior) {
    if (prior.request_hash !== hash && !opts.keyNamesGrant) {
      throw idempotencyConflict('grant');
    }
    return { grantId: prior.id as string, replayed: true };
  }
  if (cmd.amountMicroCredits <= 0n) throw badInput('amount', 'must be greater than 0');
  const at = effectiveAt && effectiveAt.getTime() < atx.now.getTime() ? effectiveAt : atx.now;
  // After the instant the grant is dated at: a late roll's grant of an ended RESET period in debt
  // (plans.ts rollDuePeriods) expires at that period's end, before now; the roll expires its rest.
  if (cmd.expiresAt && cmd.expiresAt.getTime() <= at.getTime()) throw badInput('expiresAt', 'must be in the future');
  const overTotal = balanceRoomError(atx.total, cmd.amountMicroCredits, 'amount');
  if (overTotal) throw overTotal;
  const granted = await atx.tx.query(
    'SELECT COALESCE(SUM(amount_micro_credits), 0)::text AS sum FROM credit_grants WHERE account_id = $1 AND created_at >= $2 AND created_at <= $3',
    [atx.accountId, atx.period().start, atx.now],
  );
  const overGranted = balanceRoomError(BigInt(granted.rows[0].sum as string), cmd.amountMicroCredits, 'amount');
  if (overGranted) throw overGranted;

  const repay = minBig(cmd.amountMicroCredits, atx.debt);
  const remaining = cmd.amountMicroCredits - repay;
  const { rows } = await atx.tx.query(
    `WITH g AS (
       INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, reference, idempotency_key, request_hash, created_at)
       VALUES (gen_random_uuid(), $1, $2::"GrantSource", $3::"CreditType", $4, $5, $6, $7, $11)
       RETURNING id
     )
     INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits,
                                 added_at, expires_at, status, updated_at)
     SELECT gen_random_uuid(), $1, g.id, $3::"CreditType", $2::"GrantSource", $4, $9, $11, $10,
            CASE WHEN $9::bigint > 0 THEN 'ACTIVE'::"BatchStatus" ELSE 'EXHAUSTED'::"BatchStatus" END, $8
       FROM g
     RETURNING grant_id, id`,
    [
      atx.accountId,
      cmd.source,
      cmd.type,
      cmd.amountMicroCredits.toString(),
      cmd.reference,
      cmd.idempotencyKey,
      hash,
      atx.now,
      remaining.toString(),
      cmd.expiresAt,
      at,
    ],
  );
  const row = rows[0];
  const batchId = row.id as string;
  atx.addEntry({ type: 'GRANT', amountMicroCredits: remaining, batchId, note: cmd.source, at });
  if (cmd.expiresAt && remaining > 0n) scheduleExpiry(atx, 'batch', batchId, cmd.expiresAt);
  if (repay > 0n) {
    atx.debt -= repay;
    atx.addEntry({ type: 'DEBT_REPAY', amountMicroCredits: repay, batchId, note: 'grant repaid debt', at });
  }
  return { grantId: row.grant_id as string, replayed: false };
}

/**
 * Records `grant.created` in the audit trail for the grant `grantId` made by `cmd` (its amount as
 * a decimal credit string, type, source, expiry, reference and key), with an optional `reason`
 * (the engine's own grants say why they were made: a partial refund's rest, a won dispute's
 * give-back; services/charge-reversal.ts). Call it only when the grant was made, not replayed.
 */
export async function auditGrantCreated(tx: Tx, actor: AuditActor, accountId: string, grantId: string, cmd: Omit<GrantCommand, 'accountId'>, reason?: string): Promise<void> {
  await recordAuditEvent(tx, actor, {
    action: 'grant.created',
    accountId,
    subjectType: 'grant',
    subjectId: grantId,
    details: {
      amount: formatCredits(cmd.amountMicroCredits),
      type: cmd.type,
      source: cmd.source,
      expiresAt: cmd.expiresAt?.toISOString() ?? null,
      reference: cmd.reference,
      idempotencyKey: cmd.idempotencyKey,
      ...(reason === undefined ? {} : { reason }),
    },
  });
}

/** True when the locked account has a grant under `idempotencyKey` (a replay or a conflict). */
async function grantKeyUsed(atx: AccountTx, idempotencyKey: string): Promise<boolean> {
  const { rows } = await atx.tx.query('SELECT 1 FROM credit_grants WHERE account_id = $1 AND idempotency_key = $2', [atx.accountId, idempotencyKey]);
  return rows.length > 0;
}

/**
 * Grants credit to an account in one transaction: the client's grant (the grantCredits
 * mutation). Its idempotency key may not have a form the engine keeps for its own grants
 * (src/ledger/grant-keys.ts): they share the (account, key) unique key, and a client grant under
 * one would make the engine's grant (a promo redemption, a referral reward, ...) conflict or
 * replay without granting. A plan roll that is due runs first (module comment), unless the key
 * was used before.
 * @throws LedgerError NOT_FOUND (account), IDEMPOTENCY_CONFLICT, BAD_USER_INPUT (a reserved key:
 *   reason RESERVED_KEY; amount, expiresAt, BALANCE_LIMIT as applyGrant).
 */
export async function grantCredits(ctx: ServiceContext, cmd: GrantCommand): Promise<GrantResult> {
  const reserved = reservedGrantKeyError(cmd.idempotencyKey);
  if (reserved) throw reserved;
  return withTransaction(ctx.pool, async (tx) => {
    const atx = await AccountTx.lock(tx, cmd.accountId, ctx.clock());
    const { accountId: _ignored, ...rest } = cmd;
    // A due plan roll first, as on time (module comment); not for a key already used (a replay
    // changes nothing; a conflict is refused): one lookup, only when a roll is due.
    if (atx.periodRollDue() && !(await grantKeyUsed(atx, cmd.idempotencyKey))) await rollDuePeriodsFirst(atx);
    const result = await applyGrant(atx, rest);
    // Audited only when this call granted: a replay of the same key changed nothing.
    if (!result.replayed) await auditGrantCreated(tx, actorOf(ctx), cmd.accountId, result.grantId, rest);
    await atx.finish();
    return result;
  });
}
