-- Hand-written: balance_figures' total_at_start leaves out credit that expired at or before the
-- period start even while its EXPIRE entry is not written yet.
--
-- Why: the total at the start of a billing period (the base of periodCredits and
-- percentRemaining, and so of the credit alerts) is defined by the ledger: entries dated before
-- the start plus EXPIREs dated at it (migration period_opening_total). An expiry is recorded by a
-- worker (expire-due at the batch's expiresAt, or a plan's roll) and dated at expiresAt, so until
-- it has run the ledger still holds that credit before the start, while the batch no longer pays
-- (`expires_at > now`) and is left out of free/paid/available. A change of the account in that
-- window (a charge landing just after a RESET plan's period end, before the roll; any charge in a
-- new period after an expiry job that did not run) computed periodCredits with the expired credit
-- in it and available without it: percentRemaining far too low, and credit alerts raised at
-- once for the new period, which then used up its one alert per threshold (a RESET plan of 1,000
-- with 100 purchased: 99 of 100 read as 9 % and raised 25 and 15; test/integration/
-- credit-alerts.test.ts).
--
-- Such a batch (ACTIVE, expires_at <= the period start) will be given an EXPIRE of exactly its
-- remaining, dated at its expires_at, that is counted in the opening; so the figure subtracts
-- that remaining now. Once the EXPIRE is written the batch is no longer ACTIVE and the stored
-- opening (or the ledger sum) already holds it: the figure is the same before and after. The
-- stored opening itself stays the ledger's SUM (reconcileAccount checks it). The account's ACTIVE
-- batches are read once, as before (spendable ones are those not past p_now).
CREATE OR REPLACE FUNCTION "balance_figures"(p_account uuid, p_now timestamptz, p_period_start timestamptz)
RETURNS TABLE (free bigint, paid bigint, reserved bigint, next_at timestamptz, next_amount bigint, total_at_start bigint, granted bigint)
LANGUAGE sql STABLE AS $$
  WITH active AS (
    SELECT type, remaining_micro_credits AS remaining, expires_at FROM credit_batches
     WHERE account_id = p_account AND status = 'ACTIVE'
  ), spendable AS (
    SELECT * FROM active WHERE expires_at IS NULL OR expires_at > p_now
  ), next_exp AS (
    SELECT MIN(expires_at) AS at FROM spendable WHERE expires_at IS NOT NULL
  ), opening AS (
    SELECT opening_total_micro_credits AS total FROM balances
     WHERE account_id = p_account AND opening_period_start = p_period_start
  )
  SELECT
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'FREE')::bigint,
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'PAID')::bigint,
    (SELECT COALESCE(SUM(GREATEST(amount_micro_credits - consumed_micro_credits, 0)), 0) FROM reservations
      WHERE account_id = p_account AND status = 'ACTIVE' AND expires_at > p_now)::bigint,
    (SELECT at FROM next_exp),
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable, next_exp WHERE spendable.expires_at = next_exp.at)::bigint,
    (COALESCE((SELECT total FROM opening), ledger_total_at(p_account, p_period_start))
      -- expired at or before the start, EXPIRE not recorded yet (see above)
      - (SELECT COALESCE(SUM(remaining), 0) FROM active WHERE expires_at <= p_period_start))::bigint,
    (SELECT COALESCE(SUM(amount_micro_credits), 0) FROM credit_grants
      WHERE account_id = p_account AND created_at >= p_period_start AND created_at <= p_now)::bigint
$$;
