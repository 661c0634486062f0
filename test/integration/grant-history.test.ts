/**
 * An account's grants pile up for ever (a pool on auto top-up gets one per top-up, thousands a
 * year), and every balance change and balance read computes the period's granted credit
 * (`balance_figures`' `granted`: granted in the period, less what voids in it took back). That
 * figure must be read from the period's grants and voids, not from every grant the account ever
 * had (issue #6, "fast history"), and must stay what the whole-history pass gave.
 */
import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { useTestServices } from '../setup/services.js';
import { rowsReadUnderGenericPlans } from '../setup/rows-read.js';
import { createFundedAccount } from '../factories/accounts.js';
import { readBalance } from '../../src/services/read-balance.js';
import { credits } from '../../src/ledger/credits.js';

const s = useTestServices(3);

const T0 = new Date(Date.UTC(2026, 8, 15, 0, 0, 0));
const HOUR_MS = 3_600_000;
const at = (ms: number) => new Date(T0.getTime() + ms);

/**
 * Gives the account `count` grants dated over the year before T0 (before its current period),
 * every tenth one voided before T0 too: history no figure of the current period may read. Rows
 * only (no batches or ledger entries): the figures read grants, and nothing here checks the
 * ledger.
 */
async function addOldGrants(accountId: string, count: number): Promise<void> {
  await s.pool.query(
    `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at,
                                voided_at, void_reason, voided_micro_credits)
     SELECT gen_random_uuid(), $1, 'AUTO_TOP_UP', 'PAID', 1000000000, 'old-' || i, 'h', $2::timestamptz - (i || ' minutes')::interval * 100,
            CASE WHEN i % 10 = 0 THEN $2::timestamptz - (i || ' minutes')::interval * 50 END,
            CASE WHEN i % 10 = 0 THEN 'old' END,
            CASE WHEN i % 10 = 0 THEN 1000000 END
       FROM generate_series(1, $3::int) AS i`,
    [accountId, T0, count],
  );
  await s.pool.query('ANALYZE credit_grants');
}

/** A grant dated at `createdAt` (amount in micro-credits), voided at `voidedAt` taking back `voidedMicroCredits` when given. */
async function addGrant(accountId: string, amountMicroCredits: bigint, createdAt: Date, voided?: { at: Date; micro: bigint }): Promise<void> {
  await s.pool.query(
    `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at,
                                voided_at, void_reason, voided_micro_credits)
     VALUES (gen_random_uuid(), $1, 'ADJUSTMENT', 'PAID', $2, $3, 'h', $4, $5, CASE WHEN $5::timestamptz IS NULL THEN NULL ELSE 'test' END, $6)`,
    [accountId, amountMicroCredits.toString(), `g-${randomUUID()}`, createdAt, voided?.at ?? null, voided?.micro.toString() ?? null],
  );
}

describe("the period's granted credit with a long history of grants", () => {
  it('a balance read reads the grants and voids of the period, not the 3,000 grants before it', async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await addOldGrants(accountId, 3000);
    const read = await rowsReadUnderGenericPlans('credit_grants', async (db) => {
      const b = await readBalance(db as never, accountId, at(HOUR_MS));
      expect(b.periodMicroCredits).toBe(credits(100));
    });
    // 6 reads of the period's one grant; the whole-history pass read 6 × 3,001 rows.
    expect(read).toBeLessThanOrEqual(6 * 4);
  });

  it("the period's credit counts the grants dated in it and takes out what voids in it took back, whenever the voided grant was made", async () => {
    s.setNow(T0);
    const accountId = await createFundedAccount(s, { paid: 100 });
    await addOldGrants(accountId, 200);
    const before = (await readBalance(s.pool, accountId, at(10 * HOUR_MS))).periodMicroCredits;
    // Voided in the period, granted before it: takes back 5.
    await addGrant(accountId, credits(50), at(-48 * HOUR_MS), { at: at(HOUR_MS), micro: credits(5) });
    // Granted and voided in the period: +7 − 3.
    await addGrant(accountId, credits(7), at(2 * HOUR_MS), { at: at(3 * HOUR_MS), micro: credits(3) });
    // Granted in the period: +11.
    await addGrant(accountId, credits(11), at(4 * HOUR_MS));
    // Voided before the period (its grant too): nothing. Voided after `now`: not yet.
    await addGrant(accountId, credits(13), at(-72 * HOUR_MS), { at: at(-HOUR_MS), micro: credits(13) });
    await addGrant(accountId, credits(17), at(5 * HOUR_MS), { at: at(20 * HOUR_MS), micro: credits(17) });
    // Granted after `now`: not yet.
    await addGrant(accountId, credits(19), at(12 * HOUR_MS));
    const after = (await readBalance(s.pool, accountId, at(10 * HOUR_MS))).periodMicroCredits;
    expect(after - before).toBe(-credits(5) + credits(7) - credits(3) + credits(11) + credits(17));
  });
});
