/**
 * Credit packs (issue #4): what a platform sells, e.g. "1,000 credits + 100 bonus for $9.99".
 * A purchase or an automatic top-up grants `credits + bonusCredits` as one PAID batch, expiring
 * `expiresAfterDays` after the purchase when set (services/purchase-pack.ts). Packs are never
 * changed once created (payments refer to them); a different offer is a new pack.
 */
import { singleLine } from '../ledger/text-input.js';
import type pg from 'pg';
import { toBigInt } from '../db/pg.js';
import { MAX_ABS_MICRO_CREDITS, formatCredits, formatExactDecimal, parseExactDecimal } from '../ledger/credits.js';
import { LedgerError, badInput } from '../ledger/errors.js';
import { MAX_CHARGE_CENTS } from '../payments/provider.js';
import type { ServiceContext } from './context.js';
import { withTransaction } from '../db/pg.js';
import { actorOf, recordAuditEvent } from '../audit/audit-log.js';

/** A credit pack (amounts in micro-credits, price in USD as a canonical decimal string). */
export interface CreditPackView {
  id: string;
  name: string;
  microCredits: bigint;
  bonusMicroCredits: bigint;
  priceUsd: string;
  expiresAfterDays: number | null;
}

/** What one purchase of `pack` grants, in micro-credits: its credits plus its bonus (one batch). */
export function packGrantMicroCredits(pack: Pick<CreditPackView, 'microCredits' | 'bonusMicroCredits'>): bigint {
  return pack.microCredits + pack.bonusMicroCredits;
}

/** What createCreditPack takes. */
export interface CreateCreditPackCommand {
  name: string;
  microCredits: bigint;
  bonusMicroCredits: bigint;
  /** USD, more than 0, at most 2 fractional digits (cents: what a card can be charged). */
  priceUsd: string;
  expiresAfterDays: number | null;
}

/** Canonical text of a stored numeric (pg returns "9.990000"). */
export function canonicalUsd(numeric: string): string {
  return formatExactDecimal(parseExactDecimal(numeric, 'priceUsd'));
}

function toView(r: Record<string, unknown>): CreditPackView {
  return {
    id: r.id as string,
    name: r.name as string,
    microCredits: toBigInt(r.micro_credits),
    bonusMicroCredits: toBigInt(r.bonus_micro_credits),
    priceUsd: canonicalUsd(String(r.price_usd)),
    expiresAfterDays: (r.expires_after_days as number | null) ?? null,
  };
}

/**
 * Checks and normalizes a pack's terms (credits > 0, bonus >= 0, credits + bonus at most
 * MAX_ABS_MICRO_CREDITS, price in cents up to MAX_CHARGE_CENTS, 1 to 3650 days).
 * @throws LedgerError BAD_USER_INPUT naming the field.
 */
function validate(cmd: CreateCreditPackCommand): CreateCreditPackCommand {
  const name = cmd.name.trim();
  if (name.length < 1 || name.length > 100) throw badInput('name', 'must be 1 to 100 characters');
  singleLine(name, 'name');
  if (cmd.microCredits <= 0n) throw badInput('credits', 'must be greater than 0');
  if (cmd.bonusMicroCredits < 0n) throw badInput('bonusCredits', 'must not be negative');
  // A pack is granted as one batch of credits + bonus: the sum must fit the signed 64-bit amount columns.
  if (packGrantMicroCredits(cmd) > MAX_ABS_MICRO_CREDITS) {
    throw badInput('bonusCredits', `credits + bonusCredits must be at most ${formatCredits(MAX_ABS_MICRO_CREDITS)}`);
  }
  const price = parseExactDecimal(cmd.priceUsd, 'priceUsd', 2);
  const cents = price.units * 10n ** BigInt(2 - price.scale);
  if (cents <= 0n || cents > MAX_CHARGE_CENTS) throw badInput('priceUsd', 'must be more than 0 and at most 999999.99');
  const days = cmd.expiresAfterDays;
  if (days !== null && (!Number.isInteger(days) || days < 1 || days > 3650)) throw badInput('expiresAfterDays', 'must be 1 to 3650');
  return { ...cmd, name, priceUsd: formatExactDecimal(price) };
}

/**
 * Creates a pack. Creating the same name again with the same terms returns the existing pack
 * (idempotent); with other terms it is IDEMPOTENCY_CONFLICT (packs never change).
 * @throws LedgerError BAD_USER_INPUT (see CreateCreditPackCommand), IDEMPOTENCY_CONFLICT.
 */
export async function createCreditPack(ctx: ServiceContext, input: CreateCreditPackCommand): Promise<CreditPackView> {
  const cmd = validate(input);
  // The pack and its audit row commit together; a replay of the same terms writes neither.
  const created = await withTransaction(ctx.pool, async (tx) => {
    const inserted = await tx.query(
      `INSERT INTO credit_packs (id, name, micro_credits, bonus_micro_credits, price_usd, expires_after_days, created_at)
       VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING RETURNING *`,
      [cmd.name, cmd.microCredits.toString(), cmd.bonusMicroCredits.toString(), cmd.priceUsd, cmd.expiresAfterDays, ctx.clock()],
    );
    if (!inserted.rows[0]) return null;
    const pack = toView(inserted.rows[0]);
    await recordAuditEvent(tx, actorOf(ctx), {
      action: 'credit_pack.created',
      subjectType: 'credit_pack',
      subjectId: pack.id,
      details: {
        name: cmd.name,
        credits: formatCredits(cmd.microCredits),
        bonusCredits: formatCredits(cmd.bonusMicroCredits),
        priceUsd: cmd.priceUsd,
        expiresAfterDays: cmd.expiresAfterDays,
      },
    });
    return pack;
  });
  if (created) return created;
  const existing = toView((await ctx.pool.query('SELECT * FROM credit_packs WHERE name = $1', [cmd.name])).rows[0]);
  const same =
    existing.microCredits === cmd.microCredits &&
    existing.bonusMicroCredits === cmd.bonusMicroCredits &&
    existing.priceUsd === cmd.priceUsd &&
    existing.expiresAfterDays === cmd.expiresAfterDays;
  if (!same) throw new LedgerError('IDEMPOTENCY_CONFLICT', `credit pack "${cmd.name}" already exists with other terms`);
  return existing;
}

/** Reads a pack by id (database uuid), or null. */
export async function findCreditPack(db: pg.Pool | pg.PoolClient, id: string): Promise<CreditPackView | null> {
  const { rows } = await db.query('SELECT * FROM credit_packs WHERE id = $1', [id]);
  return rows[0] ? toView(rows[0]) : null;
}
