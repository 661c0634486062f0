/**
 * The upgrade path: an operator's database written by an older release (migrated only up to the
 * migration before the one under test, rows the older code could have written put in with raw
 * SQL) is upgraded by applyMigrations as a boot does, and what the data-changing migrations
 * backfilled must be what the current code would have written, so the invariants the current
 * code relies on hold (ledger invariant and reconcileAccount, rollups = a full scan of the usage
 * events, the stored amounts the balance figures read). Each case has its own scratch database.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { applyMigrations } from '../../src/db/migrate.js';
import { migrateBefore, migrationNames, migrationSql, scratchDatabase, type ScratchDatabase } from '../setup/upgrade.js';
import { createTestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { cancelSubscription, createPlan, subscribeToPlan } from '../../src/services/plans.js';
import { advanceTestClock } from '../../src/services/test-clock.js';
import { reconcileAccount, readBalance } from '../../src/services/read-balance.js';
import { credits } from '../../src/ledger/credits.js';
import { redactWebhookUrl } from '../../src/services/webhooks.js';
import { applyReversalEvent } from '../../src/services/payment-reversals.js';
import { expectLedgerInvariant } from '../setup/invariant.js';

const dbs: ScratchDatabase[] = [];
afterEach(async () => {
  for (const db of dbs.splice(0)) await db.drop();
});

async function scratch(tag: string): Promise<ScratchDatabase> {
  const db = await scratchDatabase(`${tag}_${process.pid}`);
  dbs.push(db);
  return db;
}

/** A legacy account row (columns of every release: the later ones have defaults). */
async function insertAccount(db: pg.Pool | pg.PoolClient, opts: { testClockAt?: Date; createdAt?: Date } = {}): Promise<string> {
  const id = randomUUID();
  await db.query(
    `INSERT INTO accounts (id, external_id, name, kind, test_mode, test_clock_at, created_at, referral_code)
     VALUES ($1, $2, 'legacy', 'ORGANIZATION', $3, $4, $5, $6)`,
    [id, `legacy-${id}`, opts.testClockAt !== undefined, opts.testClockAt ?? null, opts.createdAt ?? new Date(), `R${id.slice(0, 8)}`],
  );
  return id;
}

describe('booting several servers at once', () => {
  it('two concurrent applyMigrations on an empty server create the database once and apply each migration once', async () => {
    const db = await scratch('concurrent');
    const results = await Promise.allSettled([applyMigrations(db.url), applyMigrations(db.url)]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
    const applied = results.map((r) => (r as PromiseFulfilledResult<{ applied: string[] }>).value.applied);
    const names = await migrationNames();
    // One of them applied everything, the other found the database up to date.
    expect([...applied].sort((a, b) => a.length - b.length)).toEqual([[], names]);
    const { rows } = await db.pool().query(
      `SELECT migration_name, count(*)::int AS n, bool_and(finished_at IS NOT NULL AND rolled_back_at IS NULL) AS ok
         FROM _prisma_migrations GROUP BY 1 ORDER BY 1`,
    );
    expect(rows).toEqual(names.map((migration_name) => ({ migration_name, n: 1, ok: true })));
  });
});

describe('usage rollups backfilled from the events of an older release (migration usage_rollups)', () => {
  interface Ev { account: string; at: number; category: string; tier: string | null; model: string | null; cost: bigint; refunded: boolean }

  /** The rollups from a full scan of the events, in JS (hours and months in UTC). */
  function expected(events: Ev[]) {
    const hourly = new Map<string, { credits: bigint; events: number }>();
    const monthly = new Map<string, { credits: bigint; events: number }>();
    const add = (m: typeof hourly, k: string, cost: bigint) => {
      const cur = m.get(k) ?? { credits: 0n, events: 0 };
      m.set(k, { credits: cur.credits + cost, events: cur.events + 1 });
    };
    for (const e of events.filter((x) => !x.refunded)) {
      const hour = Math.floor(e.at / 3_600_000) * 3_600_000;
      const d = new Date(e.at);
      const month = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1);
      add(hourly, [e.account, hour, e.category, e.tier ?? '', e.model ?? ''].join('|'), e.cost);
      add(monthly, [e.account, month, e.category].join('|'), e.cost);
    }
    return { hourly, monthly };
  }

  async function stored(pool: pg.Pool) {
    const hourly = new Map<string, { credits: bigint; events: number }>();
    const monthly = new Map<string, { credits: bigint; events: number }>();
    const h = await pool.query(`SELECT account_id, hour, category, tier, model, credits_micro_credits::text AS c, events FROM usage_rollups_hourly WHERE events > 0`);
    for (const r of h.rows) hourly.set([r.account_id, (r.hour as Date).getTime(), r.category, r.tier, r.model].join('|'), { credits: BigInt(r.c), events: r.events });
    const m = await pool.query(`SELECT account_id, month, category, credits_micro_credits::text AS c, events FROM usage_rollups_monthly WHERE events > 0`);
    for (const r of m.rows) monthly.set([r.account_id, (r.month as Date).getTime(), r.category].join('|'), { credits: BigInt(r.c), events: r.events });
    return { hourly, monthly };
  }

  async function scan(pool: pg.Pool): Promise<Ev[]> {
    const { rows } = await pool.query(`SELECT account_id, occurred_at, category, tier, model, cost_micro_credits::text AS cost, refunded_at IS NOT NULL AS refunded FROM usage_events`);
    return rows.map((r) => ({ account: r.account_id, at: (r.occurred_at as Date).getTime(), category: r.category, tier: r.tier, model: r.model, cost: BigInt(r.cost), refunded: r.refunded }));
  }

  it('the backfill and the triggers after it equal a full scan, across hour and month boundaries, with refunded events and no tier/model', async () => {
    const db = await scratch('rollups');
    await migrateBefore(db.url, '20261122015816_usage_rollups');
    const pool = db.pool();
    const [a, b] = [await insertAccount(pool), await insertAccount(pool)];
    const { rows: pb } = await pool.query(`INSERT INTO price_books (name, byok_fee_percent, rules) VALUES ('legacy', 0, '[]') RETURNING version`);
    const version = pb[0].version as number;
    // 600 events over ~3 days from Oct 31 22:00 UTC (a month boundary), two accounts, some
    // refunded, some without tier or model, plus events on and just before an hour boundary.
    await pool.query(
      `INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, category, model, tier, cost_micro_credits, lines, price_book_version, refunded_at, refund_reason)
       SELECT gen_random_uuid(), CASE WHEN i % 3 = 0 THEN $2::uuid ELSE $1::uuid END, 'k' || i, 'h',
              timestamptz '2026-10-31 22:00:00+00' + i * interval '7 minutes 13.337 seconds',
              (ARRAY['llm', 'image', 'unit'])[1 + i % 3], CASE WHEN i % 5 = 0 THEN NULL ELSE (ARRAY['gpt', 'claude'])[1 + i % 2] END,
              CASE WHEN i % 7 = 0 THEN NULL ELSE 'std' END, (i::bigint * 7919003) % 9000000000 + (i % 4), '[]', $3,
              CASE WHEN i % 11 = 0 THEN timestamptz '2026-11-05 00:00:00+00' END, CASE WHEN i % 11 = 0 THEN 'legacy refund' END
         FROM generate_series(1, 600) i`,
      [a, b, version],
    );
    await pool.query(
      `INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, category, cost_micro_credits, lines, price_book_version)
       VALUES (gen_random_uuid(), $1, 'edge-1', 'h', '2026-10-31T23:59:59.999Z', 'llm', 5, '[]', $2),
              (gen_random_uuid(), $1, 'edge-2', 'h', '2026-11-01T00:00:00.000Z', 'llm', 7, '[]', $2),
              (gen_random_uuid(), $1, 'edge-3', 'h', '2026-11-01T00:00:00.000Z', 'llm', 0, '[]', $2)`,
      [a, version],
    );

    await applyMigrations(db.url);
    expect(await stored(pool)).toEqual(expected(await scan(pool)));

    // The triggers go on from the backfilled rows: refunds of legacy events take them out again
    // (a missing or short rollup row would go negative: CHECK) and new events add to them.
    await pool.query(`UPDATE usage_events SET refunded_at = now(), refund_reason = 'after upgrade' WHERE refunded_at IS NULL AND idempotency_key ~ '^k[0-9]*[05]$'`);
    await pool.query(
      `INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, category, model, tier, cost_micro_credits, lines, price_book_version)
       VALUES (gen_random_uuid(), $1, 'new-1', 'h', '2026-11-01T00:30:00Z', 'llm', 'gpt', 'std', 123, '[]', $2)`,
      [b, version],
    );
    expect(await stored(pool)).toEqual(expected(await scan(pool)));
  });
});

describe('voided grants of an older release (migration period_credits_voids)', () => {
  it('voided_micro_credits is what voidGrant takes back now (the remaining at the void), and the period credits and reconcile agree', async () => {
    const db = await scratch('voids');
    await migrateBefore(db.url, '20261211010000_period_credits_voids');
    const pool = db.pool();
    const t = (s: string) => new Date(`2026-11-${s}Z`);
    const account = await insertAccount(pool, { createdAt: t('01T00:00:00'), testClockAt: t('20T00:00:00') });
    await pool.query(`UPDATE accounts SET billing_anchor_at = created_at WHERE id = $1`, [account]);
    const grants = { partlyUsed: randomUUID(), used: randomUUID(), kept: randomUUID(), expired: randomUUID() };
    const batchIds = new Map<string, string>(Object.values(grants).map((g) => [g, randomUUID()]));
    const batch = (g: string) => batchIds.get(g)!;
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`INSERT INTO balances (account_id, total_micro_credits, version) VALUES ($1, 30000000, 9)`, [account]);
      const grant = async (id: string, amount: number, type: 'FREE' | 'PAID', status: string, remaining: number, expiresAt: Date | null, voidedAt: Date | null) => {
        await client.query(
          `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at, voided_at, void_reason)
           VALUES ($1, $2, $3::"GrantSource", $4::"CreditType", $5, $8, 'h', $6, $7::timestamptz, CASE WHEN $7::timestamptz IS NOT NULL THEN 'mistake' END)`,
          [id, account, type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE', type, credits(amount).toString(), t('02T00:00:00'), voidedAt, `grant-${id}`],
        );
        await client.query(
          `INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, expires_at, status)
           VALUES ($1, $2, $3, $4::"CreditType", $5::"GrantSource", $6, $7, $8, $9, $10::"BatchStatus")`,
          [batch(id), account, id, type, type === 'FREE' ? 'PROMO_CODE' : 'PURCHASE', credits(amount).toString(), credits(remaining).toString(), t('02T00:00:00'), expiresAt, status],
        );
      };
      await grant(grants.partlyUsed, 100, 'FREE', 'VOIDED', 0, null, t('05T00:00:00'));
      await grant(grants.used, 50, 'PAID', 'VOIDED', 0, null, t('06T00:00:00'));
      await grant(grants.kept, 30, 'PAID', 'ACTIVE', 30, null, null);
      await grant(grants.expired, 20, 'FREE', 'EXPIRED', 0, t('04T00:00:00'), t('06T00:00:00'));
      // The ledger the older voidGrant / charges / expiry wrote, in order (balance after each).
      const entries: Array<[string, string, number, number, string]> = [
        [grants.partlyUsed, 'GRANT', 100, 100, '02T00:00:00'],
        [grants.used, 'GRANT', 50, 150, '02T00:00:00'],
        [grants.kept, 'GRANT', 30, 180, '02T00:00:00'],
        [grants.expired, 'GRANT', 20, 200, '02T00:00:00'],
        [grants.partlyUsed, 'CONSUME', -40, 160, '03T00:00:00'],
        [grants.used, 'CONSUME', -50, 110, '03T00:00:00'],
        [grants.expired, 'EXPIRE', -20, 90, '04T00:00:00'],
        [grants.partlyUsed, 'VOID', -60, 30, '05T00:00:00'],
        [grants.used, 'VOID', 0, 30, '06T00:00:00'],
        [grants.expired, 'VOID', 0, 30, '06T00:00:00'],
      ];
      for (const [g, type, amount, after, at] of entries) {
        await client.query(
          `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id, created_at)
           VALUES (gen_random_uuid(), $1, $2::"LedgerEntryType", $3, $4, $5, $6)`,
          [account, type, credits(amount).toString(), credits(after).toString(), batch(g), t(at)],
        );
      }
      await client.query('COMMIT');
    } finally {
      client.release();
    }

    await applyMigrations(db.url);
    const { rows } = await pool.query(`SELECT id, voided_micro_credits::text AS v FROM credit_grants WHERE account_id = $1`, [account]);
    const voided = Object.fromEntries(rows.map((r) => [r.id, r.v]));
    expect(voided).toEqual({ [grants.partlyUsed]: credits(60).toString(), [grants.used]: '0', [grants.kept]: null, [grants.expired]: '0' });
    expect((await reconcileAccount(pool, account)).consistent).toBe(true);
    // The period (from Nov 1) had 200 granted, 60 of it taken back by a void: 140, 30 left.
    const balance = await readBalance(pool, account, t('20T00:00:00'));
    expect(balance.periodMicroCredits).toBe(credits(140));
    expect(balance.availableMicroCredits).toBe(credits(30));
  });
});

describe('grants voided by older servers during the rollout (migration void_amount_older_servers)', () => {
  it('voided grants still without an amount get it from their VOID entry; amounts the current code wrote stay', async () => {
    const db = await scratch('voidcatchup');
    await migrateBefore(db.url, '20261212030100_void_amount_older_servers');
    const pool = db.pool();
    const account = await insertAccount(pool);
    const [byOlder, byCurrent] = [randomUUID(), randomUUID()];
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`INSERT INTO balances (account_id, total_micro_credits, version) VALUES ($1, 0, 6)`, [account]);
      // Each grant: 100 granted, 40 spent, the other 60 voided (VOID entry); the current code also
      // wrote the amount on its grant, the older server did not.
      let after = 0;
      for (const [grant, voided] of [[byOlder, null], [byCurrent, credits(60).toString()]] as const) {
        const batchId = randomUUID();
        await client.query(
          `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, voided_at, void_reason, voided_micro_credits)
           VALUES ($1, $2, 'PURCHASE', 'PAID', 100000000, $3, 'h', now(), 'mistake', $4)`,
          [grant, account, `g-${grant}`, voided],
        );
        await client.query(
          `INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, status)
           VALUES ($1, $2, $3, 'PAID', 'PURCHASE', 100000000, 0, now(), 'VOIDED')`,
          [batchId, account, grant],
        );
        for (const [type, amount] of [['GRANT', 100], ['CONSUME', -40], ['VOID', -60]] as const) {
          after += amount;
          await client.query(
            `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id)
             VALUES (gen_random_uuid(), $1, $2::"LedgerEntryType", $3, $4, $5)`,
            [account, type, credits(amount).toString(), credits(after).toString(), batchId],
          );
        }
      }
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    await applyMigrations(db.url);
    const { rows } = await pool.query(`SELECT id, voided_micro_credits::text AS v FROM credit_grants WHERE account_id = $1`, [account]);
    expect(Object.fromEntries(rows.map((r) => [r.id, r.v]))).toEqual({ [byOlder]: credits(60).toString(), [byCurrent]: credits(60).toString() });
    expect((await reconcileAccount(pool, account)).consistent).toBe(true);
  });
});

describe('plan subscriptions of an older release (migration plan_capped_roll)', () => {
  const MIGRATION = '20261212020909_plan_capped_roll';

  /** The migration's backfill statement, as shipped. */
  async function backfillSql(): Promise<string> {
    const sql = /UPDATE "plan_subscriptions"[\s\S]*?;/.exec(await migrationSql(MIGRATION));
    if (!sql) throw new Error('no backfill in the migration');
    return sql[0];
  }

  async function cappedRolls(pool: pg.Pool | pg.PoolClient, accounts: string[]) {
    const { rows } = await pool.query(
      `SELECT account_id, capped_roll_at, capped_roll_cap_micro_credits::text AS cap FROM plan_subscriptions WHERE account_id = ANY($1::uuid[])`,
      [accounts],
    );
    return Object.fromEntries(rows.map((r) => [r.account_id as string, { at: r.capped_roll_at as Date | null, cap: r.cap as string | null }]));
  }

  it('the backfill remembers the capped roll the row describes, as rollBillingPeriods writes it', async () => {
    const db = await scratch('capped');
    await migrateBefore(db.url, MIGRATION);
    const pool = db.pool();
    const plan = async (name: string, rollover: 'RESET' | 'ROLLOVER', cap: number | null) => {
      const id = randomUUID();
      await pool.query(
        `INSERT INTO plans (id, name, monthly_micro_credits, rollover, rollover_cap_micro_credits, price_usd) VALUES ($1, $2, $3, $4::"RolloverPolicy", $5, 1)`,
        [id, name, credits(100).toString(), rollover, cap === null ? null : credits(cap).toString()],
      );
      return id;
    };
    const [capped, reset, uncapped] = [await plan('capped', 'ROLLOVER', 50), await plan('reset', 'RESET', null), await plan('uncapped', 'ROLLOVER', null)];
    const jan = new Date('2026-01-01T00:00:00Z');
    const mar = new Date('2026-03-01T00:00:00Z');
    const legacy = async (planId: string, granted: Date, canceled: Date | null) => {
      const id = await insertAccount(pool, { createdAt: jan, testClockAt: new Date('2026-03-15T00:00:00Z') });
      await pool.query(
        `INSERT INTO plan_subscriptions (account_id, plan_id, active, started_at, granted_period_start, canceled_at) VALUES ($1, $2, $3, $4, $5, $6)`,
        [id, planId, canceled === null, jan, granted, canceled],
      );
      return id;
    };
    const rows = {
      cappedRolled: await legacy(capped, mar, null),
      cappedNotRolled: await legacy(capped, jan, null),
      cappedRolledThenCanceled: await legacy(capped, mar, new Date('2026-03-10T00:00:00Z')),
      resetRolled: await legacy(reset, mar, null),
      uncappedRolled: await legacy(uncapped, mar, null),
    };
    await applyMigrations(db.url);
    const after = await cappedRolls(pool, Object.values(rows));
    expect(after[rows.cappedRolled]).toEqual({ at: mar, cap: credits(50).toString() });
    expect(after[rows.cappedRolledThenCanceled]).toEqual({ at: mar, cap: credits(50).toString() });
    for (const id of [rows.cappedNotRolled, rows.resetRolled, rows.uncappedRolled]) expect(after[id]).toEqual({ at: null, cap: null });

    // The same rule against what the current code writes: subscriptions made and rolled by the
    // services, their capped roll erased and backfilled again, give what the services wrote.
    const services = createTestServices(3, db.url);
    try {
      const mk = (name: string, rollover: 'RESET' | 'ROLLOVER', cap: number | null) =>
        createPlan(services, { name: `${name} ${randomUUID()}`, monthlyMicroCredits: credits(100), rollover, rolloverCapMicroCredits: cap === null ? null : credits(cap), priceUsd: '1' });
      const [cappedPlan, otherCapped, resetPlan, uncappedPlan] = [await mk('capped', 'ROLLOVER', 50), await mk('capped 2', 'ROLLOVER', 20), await mk('reset', 'RESET', null), await mk('uncapped', 'ROLLOVER', null)];
      const start = new Date('2026-05-01T00:00:00Z');
      const accounts: string[] = [];
      const scenario = async (steps: (id: string) => Promise<void>) => {
        const id = await createFundedAccount(services, { testClockStart: start });
        await steps(id);
        accounts.push(id);
      };
      await scenario(async (id) => { await subscribeToPlan(services, id, cappedPlan.id); await advanceTestClock(services, id, new Date('2026-07-02T00:00:00Z')); });
      await scenario(async (id) => { await subscribeToPlan(services, id, cappedPlan.id); await advanceTestClock(services, id, new Date('2026-06-02T00:00:00Z')); await cancelSubscription(services, id); });
      await scenario(async (id) => { await subscribeToPlan(services, id, cappedPlan.id); });
      await scenario(async (id) => { await subscribeToPlan(services, id, resetPlan.id); await advanceTestClock(services, id, new Date('2026-06-02T00:00:00Z')); });
      await scenario(async (id) => { await subscribeToPlan(services, id, uncappedPlan.id); await advanceTestClock(services, id, new Date('2026-06-02T00:00:00Z')); });
      await scenario(async (id) => {
        await subscribeToPlan(services, id, cappedPlan.id);
        await advanceTestClock(services, id, new Date('2026-06-02T00:00:00Z'));
        await subscribeToPlan(services, id, otherCapped.id); // a new period from Jun 2, rolled on Jul 2
        await advanceTestClock(services, id, new Date('2026-07-03T00:00:00Z'));
      });
      const written = await cappedRolls(pool, accounts);
      expect(Object.values(written).filter((w) => w.at !== null)).toHaveLength(3); // the scenarios do roll capped plans
      const client = await pool.connect();
      try {
        await client.query('BEGIN');
        await client.query(`UPDATE plan_subscriptions SET capped_roll_at = NULL, capped_roll_cap_micro_credits = NULL WHERE account_id = ANY($1::uuid[])`, [accounts]);
        await client.query(await backfillSql());
        expect(await cappedRolls(client, accounts)).toEqual(written);
      } finally {
        await client.query('ROLLBACK');
        client.release();
      }
    } finally {
      await services.close();
    }
  });
});

describe('capped rolls run by older servers during the rollout (migration capped_roll_older_servers)', () => {
  it('rows an older server rolled after plan_capped_roll get their roll; rows the current code wrote stay as they are', async () => {
    const db = await scratch('cappedcatchup');
    await migrateBefore(db.url, '20261212030000_capped_roll_older_servers');
    const pool = db.pool();
    const plan = async (name: string, cap: number) => {
      const id = randomUUID();
      await pool.query(
        `INSERT INTO plans (id, name, monthly_micro_credits, rollover, rollover_cap_micro_credits, price_usd) VALUES ($1, $2, 100000000, 'ROLLOVER', $3, 1)`,
        [id, name, credits(cap).toString()],
      );
      return id;
    };
    const [a, b] = [await plan('a', 50), await plan('b', 20)];
    const [jan, feb, mar, apr] = ['01', '02', '03', '04'].map((m) => new Date(`2026-${m}-01T00:00:00Z`)) as [Date, Date, Date, Date];
    const row = async (planId: string, started: Date, granted: Date, rollAt: Date | null, cap: number | null) => {
      const id = await insertAccount(pool, { createdAt: jan, testClockAt: apr });
      await pool.query(
        `INSERT INTO plan_subscriptions (account_id, plan_id, active, started_at, granted_period_start, capped_roll_at, capped_roll_cap_micro_credits)
         VALUES ($1, $2, TRUE, $3, $4, $5, $6)`,
        [id, planId, started, granted, rollAt, cap === null ? null : credits(cap).toString()],
      );
      return id;
    };
    const rows = {
      rolledByOlderServer: await row(a, jan, mar, null, null), // plan_capped_roll found it unrolled; the older server rolled it since
      rolledAgainByOlderServer: await row(a, jan, apr, mar, 50), // a roll of the current code, then one of an older server
      rolledByCurrentCode: await row(a, jan, mar, mar, 50),
      switchedAfterCappedRoll: await row(b, mar, mar, feb, 50), // plan a rolled on Feb 1, then a switch to b: a's cap stays
    };
    await applyMigrations(db.url);
    const { rows: after } = await pool.query(
      `SELECT account_id, capped_roll_at, capped_roll_cap_micro_credits::text AS cap FROM plan_subscriptions`,
    );
    const byId = Object.fromEntries(after.map((r) => [r.account_id, { at: r.capped_roll_at, cap: r.cap }]));
    expect(byId[rows.rolledByOlderServer]).toEqual({ at: mar, cap: credits(50).toString() });
    expect(byId[rows.rolledAgainByOlderServer]).toEqual({ at: apr, cap: credits(50).toString() });
    expect(byId[rows.rolledByCurrentCode]).toEqual({ at: mar, cap: credits(50).toString() });
    expect(byId[rows.switchedAfterCappedRoll]).toEqual({ at: feb, cap: credits(50).toString() });
  });
});

describe('promo codes redeemed by test-mode accounts of an older release (migration promo_test_redemptions)', () => {
  it('each code is recounted from its redemptions: live ones in redemptions, test-mode ones in test_redemptions', async () => {
    const db = await scratch('promo');
    await migrateBefore(db.url, '20261208030000_promo_test_redemptions');
    const pool = db.pool();
    const live = [await insertAccount(pool), await insertAccount(pool)];
    const test = [await insertAccount(pool, { testClockAt: new Date('2026-06-01T00:00:00Z') }), await insertAccount(pool, { testClockAt: new Date('2026-06-01T00:00:00Z') })];
    const code = async (name: string, max: number | null, by: string[]) => {
      await pool.query(`INSERT INTO promo_codes (code, credits_micro_credits, max_redemptions, redemptions) VALUES ($1, 1000000, $2, $3)`, [name, max, by.length]);
      for (const account of by) {
        await pool.query(`INSERT INTO promo_redemptions (id, code, account_id, grant_id) VALUES (gen_random_uuid(), $1, $2, gen_random_uuid())`, [name, account]);
      }
    };
    await code('FULL', 3, [live[0]!, live[1]!, test[0]!]);
    await code('LIVE_ONLY', null, [live[0]!, live[1]!]);
    await code('TEST_ONLY', 2, [test[0]!, test[1]!]);
    await code('UNUSED', 5, []);
    await applyMigrations(db.url);
    const { rows } = await pool.query(`SELECT code, redemptions, test_redemptions FROM promo_codes ORDER BY code`);
    expect(rows).toEqual([
      { code: 'FULL', redemptions: 2, test_redemptions: 1 },
      { code: 'LIVE_ONLY', redemptions: 2, test_redemptions: 0 },
      { code: 'TEST_ONLY', redemptions: 0, test_redemptions: 2 },
      { code: 'UNUSED', redemptions: 0, test_redemptions: 0 },
    ]);
  });
});

describe('payments of an older release (migrations payment_request, payment_last_sent_at)', () => {
  it('PENDING payments get the method they would be sent with and a last send no later than the upgrade; legacy test-clock top-ups are past the key window', async () => {
    const db = await scratch('payments');
    await migrateBefore(db.url, '20261206010000_payment_request');
    const pool = db.pool();
    const pack = randomUUID();
    await pool.query(`INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES ($1, 'pack', 10000000, 5)`, [pack]);
    const liveAccount = await insertAccount(pool);
    const testAccount = await insertAccount(pool, { testClockAt: new Date(Date.now() + 10 * 86_400_000) });
    for (const [account, ref] of [[liveAccount, 'pm_live'], [testAccount, 'pm_test']] as const) {
      await pool.query(`INSERT INTO payment_methods (account_id, provider, reference) VALUES ($1, 'stripe', $2)`, [account, ref]);
    }
    const payment = async (account: string, purpose: string, status: string, createdAt: Date) => {
      const id = randomUUID();
      await pool.query(
        `INSERT INTO payments (id, account_id, purpose, idempotency_key, pack_id, amount_usd, status, grant_id, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, 5, $6, CASE WHEN $6 = 'SUCCEEDED' THEN gen_random_uuid() END, $7, $7)`,
        [id, account, purpose, `k-${id}`, pack, status, createdAt],
      );
      return id;
    };
    const hourAgo = new Date(Date.now() - 3_600_000);
    const p = {
      pending: await payment(liveAccount, 'PURCHASE', 'PENDING', hourAgo),
      succeeded: await payment(liveAccount, 'PURCHASE', 'SUCCEEDED', hourAgo),
      failed: await payment(liveAccount, 'AUTO_TOP_UP', 'FAILED', hourAgo),
      testTopUp: await payment(testAccount, 'AUTO_TOP_UP', 'PENDING', new Date(Date.now() + 9 * 86_400_000)),
    };
    const before = new Date();
    await applyMigrations(db.url);
    const { rows } = await pool.query(`SELECT id, payment_method_ref, last_sent_at, created_at, updated_at FROM payments`);
    const byId = Object.fromEntries(rows.map((r) => [r.id, r]));
    expect(byId[p.pending].payment_method_ref).toBe('pm_live');
    expect(byId[p.testTopUp].payment_method_ref).toBe('pm_test');
    expect(byId[p.succeeded].payment_method_ref).toBeNull();
    expect(byId[p.failed].payment_method_ref).toBeNull();
    for (const id of [p.pending, p.testTopUp]) expect(byId[id].last_sent_at.getTime()).toBeGreaterThanOrEqual(before.getTime() - 1000);
    for (const id of [p.succeeded, p.failed]) expect(byId[id].last_sent_at).toEqual(byId[id].updated_at);
    expect(byId[p.pending].created_at).toEqual(hourAgo);
    expect(byId[p.testTopUp].created_at.getTime()).toBeLessThanOrEqual(Date.now() - 24 * 3_600_000);
  });
});

describe('webhook delivery log of an older release (migration webhook_url_redacted)', () => {
  it("rows keep no path nor query of WEBHOOK_URL, in the url or an error echoing it; older workers' rows are redacted as they are written", async () => {
    const db = await scratch('webhookurl');
    await migrateBefore(db.url, '20261215020000_webhook_url_redacted');
    const pool = db.pool();
    const token = 'XXXXpathToken4d1b';
    const query = 'qsecret9f3a71';
    // The older code stored new URL(WEBHOOK_URL).toString() without user:password.
    const slack = `https://hooks.example.com/services/T000/B000/${token}?token=${query}&v=1`;
    const insert = (url: string, status: string, code: number | null, error: string | null) =>
      pool.query(
        `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code, error)
         VALUES (gen_random_uuid(), 'credit_alert.raised', $1, gen_random_uuid(), $2, 1, $3, $4, $5)`,
        [randomUUID(), url, status, code, error],
      );
    await insert(slack, 'FAILED', 404, `HTTP 404: Cannot POST /services/T000/B000/${token}`);
    await insert(slack, 'FAILED', 400, `HTTP 400: bad request /services/T000/B000/${token}?token=${query}&v=1 (query ?token=${query}&v=1)`);
    await insert(slack, 'FAILED', null, `fetch failed: ${slack}`);
    await insert('http://127.0.0.1:8080/', 'DELIVERED', 200, null);
    await applyMigrations(db.url);

    const { rows } = await pool.query('SELECT url, error FROM webhook_deliveries ORDER BY response_code NULLS FIRST');
    expect(rows).toEqual([
      { url: 'https://hooks.example.com/…', error: 'fetch failed: https://hooks.example.com/…' },
      { url: 'http://127.0.0.1:8080/', error: null },
      { url: 'https://hooks.example.com/…', error: 'HTTP 400: bad request /… (query …)' },
      { url: 'https://hooks.example.com/…', error: 'HTTP 404: Cannot POST /…' },
    ]);

    // A worker of the older release still running during the roll writes the URL whole: the row takes it out.
    await insert(slack, 'SENDING', null, null);
    const sending = await pool.query(`SELECT url FROM webhook_deliveries WHERE status = 'SENDING'`);
    expect(sending.rows).toEqual([{ url: 'https://hooks.example.com/…' }]);
    expect(JSON.stringify((await pool.query('SELECT * FROM webhook_deliveries')).rows)).not.toMatch(new RegExp(`${token}|${query}`));

    // The database's form is the code's (src/services/webhooks.ts redactWebhookUrl) for the URLs the code stores.
    for (const url of [
      slack,
      'https://receiver.example',
      'https://receiver.example/',
      'https://receiver.example/?',
      'https://receiver.example?token=abc',
      'https://receiver.example/#fragment',
      'https://receiver.example:8443/first-segment-token',
      'https://user:pw@receiver.example/x',
      'http://[::1]:8080/hook%20path?a=%2F',
      'https://receiver.example/…',
      'not a url',
    ]) {
      const stored = URL.canParse(url) ? new URL(url).href : url;
      const sql = await pool.query('SELECT webhook_url_redacted($1) AS r', [stored]);
      expect(sql.rows[0].r, stored).toBe(redactWebhookUrl(stored));
    }
  });
});

describe('refunds applied by an older release, failing after the upgrade (migration refund_failures)', () => {
  it('the backfilled refund_event_at makes them applied: a failed full refund gives back what its void took, a failed partial refund its share', async () => {
    const db = await scratch('refundfail');
    await migrateBefore(db.url, '20261215010000_refund_failures');
    const pool = db.pool();
    const pack = randomUUID();
    await pool.query(`INSERT INTO credit_packs (id, name, micro_credits, price_usd) VALUES ($1, 'pack', 40000000, 4)`, [pack]);
    const account = await insertAccount(pool, { createdAt: new Date(Date.now() - 86_400_000) });
    await pool.query(`UPDATE accounts SET billing_anchor_at = created_at WHERE id = $1`, [account]);
    // Stripe's times are whole seconds; the older server applied each refund a moment after Stripe made it.
    const refundMade = new Date(Math.floor(Date.now() / 1000) * 1000 - 7_200_000);
    const applied = new Date(refundMade.getTime() + 1_500);
    const bought = new Date(refundMade.getTime() - 3_600_000);
    const ids = { full: randomUUID(), partial: randomUUID(), fullGrant: randomUUID(), partialGrant: randomUUID(), partialRest: randomUUID() };
    const batchOf = new Map<string, string>(Object.values(ids).map((g) => [g, randomUUID()]));
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await client.query(`INSERT INTO balances (account_id, total_micro_credits, version) VALUES ($1, 20000000, 5)`, [account]);
      const grant = async (id: string, amount: number, key: string, at: Date, voidedAt: Date | null) => {
        await client.query(
          `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at, voided_at, void_reason, voided_micro_credits)
           VALUES ($1, $2, 'PURCHASE', 'PAID', $3, $4, 'h', $5, $6::timestamptz, CASE WHEN $6::timestamptz IS NOT NULL THEN 'refunded' END, CASE WHEN $6::timestamptz IS NOT NULL THEN $3::bigint END)`,
          [id, account, credits(amount).toString(), key, at, voidedAt],
        );
        await client.query(
          `INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, status)
           VALUES ($1, $2, $3, 'PAID', 'PURCHASE', $4, $5, $6, $7::"BatchStatus")`,
          [batchOf.get(id), account, id, credits(amount).toString(), voidedAt ? '0' : credits(amount).toString(), at, voidedAt ? 'VOIDED' : 'ACTIVE'],
        );
      };
      // Two $4 packs of 40 credits: one refunded in full (its grant voided), one half refunded
      // (its grant voided and the other half granted again), by the older release.
      await grant(ids.fullGrant, 40, `purchase-${ids.full}`, bought, applied);
      await grant(ids.partialGrant, 40, `purchase-${ids.partial}`, bought, applied);
      await grant(ids.partialRest, 20, `payment:${ids.partial}:refund:200`, applied, null);
      const entries: Array<[string, string, number, number, Date]> = [
        [ids.fullGrant, 'GRANT', 40, 40, bought],
        [ids.partialGrant, 'GRANT', 40, 80, bought],
        [ids.fullGrant, 'VOID', -40, 40, applied],
        [ids.partialGrant, 'VOID', -40, 0, applied],
        [ids.partialRest, 'GRANT', 20, 20, applied],
      ];
      for (const [g, type, amount, after, at] of entries) {
        await client.query(
          `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id, created_at)
           VALUES (gen_random_uuid(), $1, $2::"LedgerEntryType", $3, $4, $5, $6)`,
          [account, type, credits(amount).toString(), credits(after).toString(), batchOf.get(g), at],
        );
      }
      const payment = async (id: string, grantId: string, liveGrantId: string, refundedCents: number, reversed: boolean, taken: number) =>
        client.query(
          `INSERT INTO payments (id, account_id, purpose, idempotency_key, pack_id, amount_usd, status, provider_ref, grant_id, live_grant_id, created_at, updated_at,
                                 refunded_cents, refunded_at, reversed_at, reversed_micro_credits, refund_taken_micro_credits)
           VALUES ($1, $2, 'PURCHASE', $3, $4, 4, 'SUCCEEDED', $5, $6, $7, $8, $9, $10, $9, CASE WHEN $11 THEN $9::timestamptz END, CASE WHEN $11 THEN 40000000 END, $12)`,
          [id, account, `k-${id}`, pack, `pi_${id.replaceAll('-', '')}`, grantId, liveGrantId, bought, applied, refundedCents, reversed, credits(taken).toString()],
        );
      await payment(ids.full, ids.fullGrant, ids.fullGrant, 400, true, 0);
      await payment(ids.partial, ids.partialGrant, ids.partialRest, 200, false, 20);
      await client.query('COMMIT');
    } finally {
      client.release();
    }

    await applyMigrations(db.url);
    expect((await expectLedgerInvariant(pool, account)).totalMicroCredits).toBe(credits(20)); // the legacy rows are a consistent ledger
    const { rows } = await pool.query('SELECT id, refund_event_at FROM payments WHERE account_id = $1', [account]);
    for (const r of rows) expect(r.refund_event_at).toEqual(applied);

    const services = createTestServices(3, db.url);
    try {
      const failed = (paymentId: string, amountCents: bigint) =>
        applyReversalEvent(
          services,
          {
            kind: 'refund_failed',
            eventId: `evt_${randomUUID()}`,
            eventType: 'charge.refund.updated',
            providerRef: `pi_${paymentId.replaceAll('-', '')}`,
            currency: 'usd',
            livemode: true,
            amountCents,
            refundedCents: 0n,
            disputeRef: null,
            refundRef: `re_${randomUUID().replaceAll('-', '')}`,
            refundCreatedAt: refundMade,
            createdAt: new Date(Date.now() - 60_000),
          },
          (testMode) => !testMode,
        );
      expect(await failed(ids.full, 400n)).toMatchObject({ result: 'restored', restoredMicroCredits: credits(40) });
      expect(await failed(ids.partial, 200n)).toMatchObject({ result: 'restored', restoredMicroCredits: credits(20) });
      const after = await pool.query(
        'SELECT id, refunded_cents::text, refunded_at, reversed_at, refund_taken_micro_credits::text AS taken FROM payments WHERE account_id = $1 ORDER BY id',
        [account],
      );
      for (const r of after.rows) expect(r).toMatchObject({ refunded_cents: '0', refunded_at: null, reversed_at: null, taken: '0' });
      // 20 left, 40 and 20 given back (the partial refund's rest of 20 carried into its give-back).
      const balance = await expectLedgerInvariant(pool, account);
      expect(balance.totalMicroCredits).toBe(credits(80));
      expect((await reconcileAccount(pool, account)).consistent).toBe(true);
    } finally {
      await services.close();
    }
  });
});
