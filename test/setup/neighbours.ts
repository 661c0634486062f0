/**
 * Other accounts' rows for audits that check one account's operations do not read them
 * (test/integration/neighbour-growth-audit.test.ts): many accounts with a few rows in every table
 * that grows, either all outside or all inside the subsets that global indexes keep.
 */
import type pg from 'pg';

/** The tables {@link addOtherAccounts} writes to (drawdowns too, keyed by event). */
export const NEIGHBOUR_TABLES = [
  'accounts',
  'balances',
  'payments',
  'credit_grants',
  'credit_alerts',
  'auto_top_ups',
  'refund_credits',
  'reservations',
  'credit_batches',
  'ledger_entries',
  'usage_events',
  'drawdowns',
  'budget_spend',
  'webhook_deliveries',
  'audit_events',
  'plan_subscriptions',
  'auto_top_up_settings',
] as const;

/**
 * Inserts `accounts` accounts with `rows` rows each in every table of NEIGHBOUR_TABLES, in one
 * committed transaction of `admin` (a client outside any transaction), triggers and foreign-key
 * checks off (session_replication_role = replica): the rows are only there to be in the tables
 * and their indexes. `due`: every row in the subsets global indexes keep (ACTIVE batches expiring
 * from a day ago, not swept yet, to 60 days ahead, PENDING and refunded payments, ACTIVE holds,
 * test-mode accounts, active plan subscriptions, paused auto top-ups,
 * SENDING webhook attempts, PENDING top-ups, events with debt), dated in the last day; else none
 * of them (batches used up, payments settled, holds settled, webhooks delivered), dated two
 * months ago. Needs a credit pack (the payments' pack_id) and a published price book.
 * @throws the driver's error when an insert fails (the transaction is then left open on `admin`).
 */
export async function addOtherAccounts(admin: pg.Client, accounts: number, rows: number, due: boolean): Promise<void> {
  const at = due ? `now() - random() * interval '1 day'` : `now() - interval '60 days' - random() * interval '1 day'`;
  await admin.query('BEGIN');
  await admin.query('SET LOCAL session_replication_role = replica');
  await admin.query(
    `CREATE TEMP TABLE n_acc ON COMMIT DROP AS
     SELECT gen_random_uuid() AS id, 'neighbour-' || gen_random_uuid() AS ext, ${at} AS t FROM generate_series(1, $1)`,
    [accounts],
  );
  await admin.query(
    `CREATE TEMP TABLE n_row ON COMMIT DROP AS
     SELECT a.id AS account_id, k, gen_random_uuid() AS grant_id, gen_random_uuid() AS batch_id, gen_random_uuid() AS event_id,
            gen_random_uuid() AS payment_id, ${at} AS t
       FROM n_acc a, generate_series(1, $1) k`,
    [rows],
  );
  await admin.query(
    `INSERT INTO accounts (id, external_id, name, kind, referral_code, created_at, billing_anchor_at, test_mode, test_clock_at)
     SELECT id, ext, 'neighbour', 'ORGANIZATION', ext, t - interval '90 days', t - interval '90 days', ${due ? 'true, t' : 'false, NULL'} FROM n_acc`,
  );
  await admin.query(
    `INSERT INTO balances (account_id, total_micro_credits, updated_at, opening_period_start, opening_total_micro_credits, opening_period_end)
     SELECT id, 0, t, date_trunc('day', t), 0, date_trunc('day', t) + interval '1 month' FROM n_acc`,
  );
  await admin.query(
    `INSERT INTO credit_grants (id, account_id, source, type, amount_micro_credits, idempotency_key, request_hash, created_at)
     SELECT grant_id, account_id, ${due ? `'WELCOME_BONUS', 'FREE'` : `'PURCHASE', 'PAID'`}, 1000000, 'n-g-' || grant_id, 'x', t FROM n_row`,
  );
  await admin.query(
    `INSERT INTO credit_batches (id, account_id, grant_id, type, source, allocated_micro_credits, remaining_micro_credits, added_at, expires_at, status, updated_at)
     SELECT batch_id, account_id, grant_id, ${
       due
         ? `'FREE', 'WELCOME_BONUS', 1000000, 1000000, t, t + interval '1 minute' + random() * interval '60 days', 'ACTIVE'`
         : `'PAID', 'PURCHASE', 1000000, 0, t, NULL, 'EXHAUSTED'`
     }, t FROM n_row`,
  );
  await admin.query(
    `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, batch_id, created_at)
     SELECT gen_random_uuid(), account_id, 'GRANT', 1000000, 1000000, batch_id, t FROM n_row`,
  );
  await admin.query(
    `INSERT INTO usage_events (id, account_id, idempotency_key, request_hash, occurred_at, recorded_at, category, agent_id, units, cost_micro_credits, lines, price_book_version, debt_micro_credits)
     SELECT event_id, account_id, 'n-u-' || event_id, 'x', t, t, 'units', 'agent-1', 1, 1000000, '[]', (SELECT max(version) FROM price_books), ${due ? 'CASE WHEN k % 5 = 0 THEN 1000 ELSE 0 END' : '0'} FROM n_row`,
  );
  await admin.query(
    `INSERT INTO ledger_entries (id, account_id, type, amount_micro_credits, balance_after_micro_credits, usage_event_id, created_at)
     SELECT gen_random_uuid(), account_id, 'CONSUME', -1000000, 0, event_id, t FROM n_row`,
  );
  await admin.query(`INSERT INTO drawdowns (id, usage_event_id, batch_id, position, amount_micro_credits) SELECT gen_random_uuid(), event_id, batch_id, 0, 1000000 FROM n_row`);
  await admin.query(
    `INSERT INTO refund_credits (usage_event_id, left_at, account_id, refunded_at, amount_micro_credits) SELECT event_id, t, account_id, t + interval '1 minute', 1000 FROM n_row WHERE k % ${due ? 5 : 2} = 0`,
  );
  await admin.query(
    `INSERT INTO reservations (id, account_id, amount_micro_credits, consumed_micro_credits, status, expires_at, created_at, closed_at, idempotency_key, request_hash, agent_id)
     SELECT gen_random_uuid(), account_id, 3000000, ${
       due ? `0, 'ACTIVE', t + interval '1 minute' + random() * interval '1 day', t, NULL` : `2000000, 'SETTLED', t + interval '1 hour', t, t + interval '10 minutes'`
     }, 'n-r-' || event_id, 'x', 'agent-1' FROM n_row`,
  );
  await admin.query(
    `INSERT INTO payments (id, account_id, purpose, idempotency_key, pack_id, amount_usd, payment_method_ref, status, provider_ref, grant_id, created_at, updated_at, last_sent_at, refunded_cents, refunded_at)
     SELECT payment_id, account_id, 'PURCHASE', 'n-p-' || payment_id, (SELECT id FROM credit_packs LIMIT 1), 10, 'pm_1', ${
       due
         ? `CASE WHEN k % 2 = 0 THEN 'PENDING' ELSE 'SUCCEEDED' END, 'pi_' || payment_id, CASE WHEN k % 2 = 0 THEN NULL ELSE grant_id END, t, t, t,
            CASE WHEN k % 2 = 0 THEN 0 ELSE 500 END, CASE WHEN k % 2 = 0 THEN NULL ELSE t END`
         : `'SUCCEEDED', 'pi_' || payment_id, grant_id, t, t, t, 0, NULL`
     } FROM n_row`,
  );
  await admin.query(
    `INSERT INTO auto_top_ups (id, account_id, period_start, status, attempts, created_at, finished_at)
     SELECT gen_random_uuid(), account_id, date_trunc('day', t), ${due ? `CASE WHEN k = 1 THEN 'PENDING' ELSE 'FAILED' END, 1, t, CASE WHEN k = 1 THEN NULL ELSE t END` : `'FAILED', 3, t, t`} FROM n_row`,
  );
  await admin.query(
    `INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start, created_at)
     SELECT gen_random_uuid(), account_id, k, k, 0, date_trunc('day', t), t FROM n_row`,
  );
  await admin.query(
    `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code, created_at)
     SELECT gen_random_uuid(), 'credit_alert.raised', event_id::text, account_id, 'https://example.com/hook', 1, ${due ? `'SENDING', NULL` : `'DELIVERED', 200`}, t FROM n_row`,
  );
  await admin.query(
    `INSERT INTO audit_events (id, created_at, actor_kind, actor_name, action, account_id, subject_type, subject_id)
     SELECT gen_random_uuid(), t, 'system', 'neighbour', 'auto_top_up.updated', account_id, 'auto_top_up', account_id FROM n_row`,
  );
  await admin.query(
    `INSERT INTO budget_spend (account_id, subject_kind, subject_id, period_start, spent_micro_credits)
     SELECT account_id, 'AGENT', 'agent-' || k, date_trunc('day', t), 1000 FROM n_row`,
  );
  await admin.query(
    `INSERT INTO plan_subscriptions (account_id, plan_id, active, started_at, granted_period_start, canceled_at, next_period_start)
     SELECT id, gen_random_uuid(), ${due ? 'true' : 'false'}, t - interval '90 days', date_trunc('day', t), ${due ? 'NULL' : 't'}, date_trunc('day', t) + interval '1 month' FROM n_acc`,
  );
  await admin.query(
    `INSERT INTO auto_top_up_settings (account_id, enabled, threshold_micro_credits, pack_id, max_per_period, consecutive_failures, paused_at, updated_at)
     SELECT id, true, 1000000, (SELECT id FROM credit_packs LIMIT 1), 5, ${due ? '3, t' : '0, NULL'}, t FROM n_acc`,
  );
  await admin.query('COMMIT');
}


/** The other accounts of the neighbour audits' quiet database (phase 1): accounts, and rows of each per table. */
export const QUIET_NEIGHBOURS = { accounts: 3_000, rows: 4 } as const;
/** The other accounts added before phase 2 (all their rows in the global indexes' subsets): 50,000 rows per table. */
export const GROWTH_NEIGHBOURS = { accounts: 2_000, rows: 25 } as const;

/**
 * One line per name for the neighbour audits' NEIGHBOUR_AUDIT_PRINT: `<name>: <table key>
 * <phase 1>/<phase 2>/<phase 3>, ...` for each table key read in some phase (pages left out).
 * @param phases the three phases' reads of each name (rows-read.ts rowsReadInTransaction keys).
 */
export function phaseReadLines(names: readonly string[], phases: ReadonlyArray<(name: string) => Map<string, number> | undefined>): string[] {
  return names.map((name) => {
    const maps = phases.map((read) => read(name) ?? new Map<string, number>());
    const keys = [...new Set(maps.flatMap((m) => [...m.keys()]))].filter((t) => !t.endsWith('(blocks)') && maps.some((m) => (m.get(t) ?? 0) > 0)).sort();
    return `${name}: ${keys.map((t) => `${t} ${maps.map((m) => m.get(t) ?? 0).join('/')}`).join(', ')}`;
  });
}
