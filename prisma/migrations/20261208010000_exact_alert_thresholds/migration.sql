-- Hand-written: balances_changed judges the alert thresholds on the exact amounts instead of on
-- the rounded-down percentRemaining.
--
-- Why: threshold t was reached when floor(10000 * available / periodCredits) <= 100 * t, that is
-- up to one basis point (0.01 % of periodCredits) early. For t = 0 that is the depletion notice
-- (webhook `depleted: true`) raised while credit was still available: 99 credits left of a
-- 1,000,000-credit period read as 0.00 % and raised the 0 % alert with Balance.depleted false
-- (and, since each threshold fires once per period, no alert was left for when the credit really
-- ran out). 25 % and 15 % likewise fired at 25.00005 % (test/integration/credit-alerts.test.ts).
-- Now t is reached when 100 * available <= t * periodCredits, exactly: the 0 % alert when
-- available <= 0 (the contract's `depleted`), 25 % when available is at most a quarter of the
-- period's credit. The figure shown (the alert's percent_remaining, Balance.percentRemaining) keeps
-- its rounding down (src/ledger/billing-period.ts). The same statements run as before (the
-- comparison only changes arithmetic), so a charge costs what it did. Everything else is exactly
-- migration 20261205203000_balances_changed's function.
CREATE OR REPLACE FUNCTION "balances_changed"(p_accounts uuid[], p_now timestamptz[], p_versions bigint[], p_updated_at timestamptz[], p_debts bigint[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  v_thresholds int[];
  v_top int;
  v_follow record;
BEGIN
  IF COALESCE(cardinality(p_accounts), 0) = 0 THEN RETURN; END IF;
  SELECT alert_thresholds INTO v_thresholds FROM settings WHERE id = 1;
  v_top := (SELECT max(t) FROM unnest(v_thresholds) AS t);

  -- The figures and snapshots of every account; then which accounts may cross an alert threshold
  -- (the exact rule of step 2 against the highest threshold) or their auto top-up's threshold.
  -- bp (percentRemaining in basis points, rounded down) is only what the alert row shows; whether
  -- a threshold t is reached is judged on the exact amounts: 100 * available <= t * periodCredits
  -- (numeric: both products can pass bigint).
  WITH c AS (
    SELECT u.account, u.now, u.version, u.updated_at, u.debt, per.period_start, per.period_end, f.*, v.available, v.period_credits,
           -- percentRemaining in basis points: floor(10000 * available / periodCredits), clamped to
           -- [0, 10000], 0 when periodCredits <= 0 (src/ledger/billing-period.ts percentRemaining).
           CASE WHEN v.period_credits <= 0 OR v.available <= 0 THEN 0
                WHEN v.available >= v.period_credits THEN 10000
                ELSE floor(v.available::numeric * 10000 / v.period_credits)::bigint END AS bp
      FROM unnest(p_accounts, p_now, p_versions, p_updated_at, p_debts) AS u(account, now, version, updated_at, debt)
      JOIN accounts a ON a.id = u.account
      CROSS JOIN LATERAL billing_period(a.billing_anchor_at, u.now) per
      CROSS JOIN LATERAL balance_figures(u.account, u.now, per.period_start) f
      CROSS JOIN LATERAL (SELECT f.free + f.paid - u.debt - f.reserved AS available,
                                 GREATEST(COALESCE(f.total_at_start, 0), 0) + f.granted AS period_credits) v
  ), snap AS (
    INSERT INTO outbox_events (account_id, topic, payload)
    SELECT c.account, 'balance', jsonb_build_object(
      'accountId', c.account::text, 'version', c.version::text, 'updatedAt', c.updated_at, 'asOf', c.now,
      'periodStart', c.period_start, 'periodEnd', c.period_end,
      'free', c.free::text, 'paid', c.paid::text, 'reserved', c.reserved::text, 'debt', c.debt::text,
      'nextAt', c.next_at, 'nextAmount', c.next_amount::text,
      'totalAtStart', c.total_at_start::text, 'granted', c.granted::text,
      'planName', (SELECT pl.name FROM plan_subscriptions ps JOIN plans pl ON pl.id = ps.plan_id WHERE ps.account_id = c.account AND ps.active))
      FROM c
  )
  -- (the aggregates of one query see its rows in one order, so these arrays stay parallel)
  SELECT array_agg(c.account) AS account, array_agg(c.now) AS now, array_agg(c.period_start) AS period_start,
         array_agg(c.available) AS available, array_agg(c.period_credits) AS period_credits, array_agg(c.bp) AS bp
    INTO v_follow
    FROM c
   WHERE (c.period_credits > 0 AND c.available::numeric * 100 <= v_top::numeric * c.period_credits)
      OR EXISTS (SELECT 1 FROM auto_top_up_settings s WHERE s.account_id = c.account AND s.enabled AND c.available < s.threshold_micro_credits);
  IF v_follow.account IS NULL THEN RETURN; END IF;

  -- Steps 2 and 3 for those accounts.
  WITH f AS (
    SELECT * FROM unnest(v_follow.account, v_follow.now, v_follow.period_start, v_follow.available, v_follow.period_credits, v_follow.bp)
           WITH ORDINALITY AS f(account, now, period_start, available, period_credits, bp, ord)
  ), th AS (
    SELECT * FROM unnest(COALESCE(v_thresholds, '{}')) WITH ORDINALITY AS th(threshold, n)
  ), alerts AS (
    INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start, created_at)
    SELECT gen_random_uuid(), f.account, th.threshold, f.bp / 100.0, f.available, f.period_start, f.now
      FROM f, th
     WHERE f.period_credits > 0 AND f.available::numeric * 100 <= th.threshold::numeric * f.period_credits
     ORDER BY f.ord, th.n
    ON CONFLICT (account_id, period_start, threshold) DO NOTHING
    RETURNING id, account_id, threshold
  ), topups AS (
    INSERT INTO auto_top_ups (id, account_id, period_start, status, created_at)
    SELECT gen_random_uuid(), f.account, f.period_start, 'PENDING', f.now
      FROM f JOIN auto_top_up_settings s ON s.account_id = f.account AND s.enabled
     WHERE f.available < s.threshold_micro_credits
       AND (SELECT count(*) FROM auto_top_ups t
             WHERE t.account_id = f.account AND t.period_start = f.period_start AND t.status IN ('PENDING', 'SUCCEEDED')) < s.max_per_period
    ON CONFLICT (account_id) WHERE status = 'PENDING' DO NOTHING
    RETURNING id, account_id
  )
  INSERT INTO outbox_events (account_id, topic, payload)
  SELECT r.account, r.topic, r.payload FROM (
    SELECT f.ord, th.n * 2 + k.k AS sub, f.account, CASE k.k WHEN 0 THEN 'alert' ELSE 'job' END AS topic,
           CASE k.k WHEN 0 THEN jsonb_build_object('accountId', f.account::text, 'alertId', a.id::text)
           ELSE jsonb_build_object('name', 'deliver-webhook', 'jobId', 'webhook-credit_alert-' || a.id::text,
                  'data', jsonb_build_object('eventType', 'credit_alert.raised', 'eventId', a.id::text, 'accountId', f.account::text)) END AS payload
      FROM alerts a JOIN f ON f.account = a.account_id JOIN th ON th.threshold = a.threshold, (VALUES (0), (1)) AS k(k)
    UNION ALL
    SELECT f.ord, 2147483647, f.account, 'job', jsonb_build_object(
             'name', 'auto-top-up', 'jobId', 'auto-top-up-' || tu.id::text,
             'data', jsonb_build_object('topUpId', tu.id::text, 'accountId', f.account::text))
      FROM topups tu JOIN f ON f.account = tu.account_id
  ) r ORDER BY r.ord, r.sub;
END
$$;
