/**
 * One account's ACTIVE holds are found through that account, whatever the planner's statistics
 * say (migration reservations_active_by_account): a balance change, a charge's state reads, the
 * budget check and the budget list never read the holds of other accounts, even with generic
 * plans made while statistics said that no hold was active. Before that migration the expiry
 * sweep's index (`reservations_active_expiry`, ACTIVE holds by expires_at) also matched
 * `account_id = $1 AND status = 'ACTIVE' AND expires_at > $2`, and such a plan read every active
 * hold of the deployment on every one of those lookups.
 *
 * Real PostgreSQL, the ledger pool's session settings (generic plans), one transaction that is
 * rolled back: 20,000 closed holds of other accounts, ANALYZE and the statistics a VACUUM leaves
 * when no hold is active, then 3,000 ACTIVE holds of other
 * accounts (all inserted with SQL in that transaction, so no other test sees them), then the statements, each counted with
 * pg_stat_get_xact_tuples_returned over the indexes of `reservations` (index entries this
 * transaction read).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { TEST_DATABASE_URL } from '../setup/env.js';
import { createPgPool } from '../../src/db/pg.js';
import { AccountTx } from '../../src/services/account-tx.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { assertWithinBudgets, listBudgets, setSpendingBudget } from '../../src/services/spending-budgets.js';
import { credits } from '../../src/ledger/credits.js';

let s: TestServices;

beforeAll(() => {
  s = createTestServices(3);
});

afterAll(async () => {
  await s.close();
});

describe('ACTIVE holds of one account', () => {
  it('are read through the account: no statement reads the 3,000 active holds of other accounts', async () => {
    const accountId = await createFundedAccount(s, { paid: 50 });
    await setSpendingBudget(s, { accountId, subjectKind: 'AGENT', subjectId: 'agent-1', limitMicroCredits: credits(40) });
    await reserveCredits(s, { accountId, amountMicroCredits: credits(5), ttlSeconds: 3_600, idempotencyKey: 'own-hold', agentId: 'agent-1' });
    const others = [await createFundedAccount(s, { paid: 1 }), await createFundedAccount(s, { paid: 1 }), await createFundedAccount(s, { paid: 1 })];

    // A pool of its own: its session makes its plans after the ANALYZE below.
    const pool = createPgPool(TEST_DATABASE_URL, 1);
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const now = new Date();
      // A ledger in use: 20,000 closed holds of other accounts (the history a deployment keeps).
      await client.query(
        `INSERT INTO reservations (id, account_id, amount_micro_credits, consumed_micro_credits, status, expires_at, closed_at, idempotency_key, request_hash)
         SELECT gen_random_uuid(), o, 1000000, 1000000, 'SETTLED', $2::timestamptz - interval '1 day', $2::timestamptz - interval '1 day', 'closed-' || g, 'fixture'
           FROM unnest($1::uuid[]) AS o, generate_series(1, 6667) AS g`,
        [others, now],
      );
      // Statistics from a quiet moment, before the other accounts' holds are active: ANALYZE, and
      // what a VACUUM then leaves on the partial indexes of ACTIVE holds (reltuples 0; VACUUM itself
      // cannot run in a transaction, and this catalog row goes back with the ROLLBACK; writing it
      // takes a superuser, as the test database's user is). Before the migration, a generic plan
      // made from these statistics read the expiry sweep's index.
      await client.query('ANALYZE reservations');
      await client.query(`UPDATE pg_class SET reltuples = 0
                           WHERE oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = 'reservations'::regclass AND indpred IS NOT NULL)`);
      await client.query(
        `INSERT INTO reservations (id, account_id, amount_micro_credits, status, expires_at, idempotency_key, request_hash)
         SELECT gen_random_uuid(), o, 1000000, 'ACTIVE', $2::timestamptz + interval '1 hour', 'other-' || g, 'fixture'
           FROM unnest($1::uuid[]) AS o, generate_series(1, 1000) AS g`,
        [others, now],
      );
      const indexReads = async () =>
        Number(
          (await client.query(`SELECT sum(pg_stat_get_xact_tuples_returned(indexrelid)) AS n FROM pg_index WHERE indrelid = 'reservations'::regclass`)).rows[0].n,
        );
      // The counter works: a lookup of all ACTIVE holds, kept off a sequential scan, reads them
      // through an index.
      const unread = await indexReads();
      await client.query('SET LOCAL enable_seqscan = off');
      const all = await client.query(`SELECT count(*)::int AS n FROM reservations WHERE status = 'ACTIVE' AND expires_at > $1`, [now]);
      await client.query('SET LOCAL enable_seqscan = on');
      expect(all.rows[0].n).toBeGreaterThanOrEqual(3_001);
      expect(await indexReads()).toBeGreaterThanOrEqual(unread + 3_001);
      let seen = await indexReads();
      /** Index entries of `reservations` read since the last call (this account has 1 hold; the others 23,000). */
      const newReads = async () => {
        const n = await indexReads();
        const read = n - seen;
        seen = n;
        return read;
      };

      // A balance change: its snapshot says what this account holds.
      const { rows: bal } = await client.query(`SELECT version FROM balances WHERE account_id = $1`, [accountId]);
      await client.query(`SELECT balances_changed(ARRAY[$1]::uuid[], ARRAY[$2]::timestamptz[], ARRAY[$3]::bigint[], ARRAY[$2]::timestamptz[], ARRAY[0]::bigint[])`, [
        accountId,
        now,
        bal[0].version,
      ]);
      const { rows: snap } = await client.query(`SELECT payload->>'reserved' AS reserved FROM outbox_events WHERE account_id = $1 ORDER BY id DESC LIMIT 1`, [accountId]);
      expect(snap[0].reserved).toBe(credits(5).toString());
      expect.soft(await newReads(), 'balances_changed').toBeLessThan(50);

      // A single charge's state read and the group path's state read.
      const atx = await AccountTx.lock(client, accountId, now);
      expect((await atx.state({})).reservedMicroCredits).toBe(credits(5));
      const states = await AccountTx.chargeStates(client, [
        { accountId, now, accountClock: false, idempotencyKeys: [], reservationIds: [], holdKeys: [], budgetSubjects: [{ subjectKind: 'AGENT', subjectId: 'agent-1' }] },
      ]);
      const st = states.get(accountId)!;
      expect(st.reservedMicroCredits).toBe(credits(5));
      expect([...st.budgets.values()].map((b) => b.heldMicroCredits)).toEqual([credits(5)]);
      expect.soft(await newReads(), 'AccountTx.state and AccountTx.chargeStates').toBeLessThan(50);

      // The budget check of the statement path and the budget list (listBudgets reads through any
      // query-able connection; it is given this transaction's).
      await assertWithinBudgets(atx, { agentId: 'agent-1', userId: null }, credits(1));
      const budgets = await listBudgets(client as unknown as pg.Pool, accountId, now);
      expect(budgets.map((b) => b.spentMicroCredits)).toEqual([credits(5)]);
      expect.soft(await newReads(), 'assertWithinBudgets and listBudgets').toBeLessThan(50);
    } finally {
      await client.query('ROLLBACK');
      client.release();
      await pool.end();
    }
  });
});
