-- Hand-written: the account total at the start of its current billing period, kept on the
-- balance row, so that figuring a balance (every charge's `balance_changed`, every balance
-- read) no longer sums the account's whole ledger history before the period start. Before this,
-- every charge of an account with millions of past ledger entries read all of them.
--
--   opening_period_start          the billing period start the opening total is for
--   opening_total_micro_credits   the total at that instant, as balance_figures defines it: the
--                                 SUM of the total-changing ledger entries (all but RESERVE and
--                                 RELEASE) dated before it, plus EXPIRE entries dated exactly at it
--
-- Written only by AccountTx.finishMany (src/services/account-tx.ts), the one writer of ledger
-- entries, in the statement that writes the entries and the balance: for the period of the
-- account's "now", the stored opening (same period) or, for a new period, the total before the
-- statement minus the entries dated after the period start (for a period that just began, only
-- its first entries), plus this statement's entries dated before it (expiries are dated at their
-- expiresAt, which may precede the period). reconcileAccount (src/services/read-balance.ts:
-- tests, the reconcile worker) checks it against the SUM.
ALTER TABLE "balances" ADD COLUMN "opening_period_start" TIMESTAMPTZ(3);
ALTER TABLE "balances" ADD COLUMN "opening_total_micro_credits" BIGINT;
ALTER TABLE "balances" ADD CONSTRAINT "balances_opening_pair"
  CHECK (("opening_period_start" IS NULL) = ("opening_total_micro_credits" IS NULL));

-- The two ways to the opening, as PL/pgSQL functions: never inlined, so the planner of the
-- statements that call them (balance_figures, AccountTx.finishMany) neither estimates their
-- scans (on an account with millions of entries a scan that never runs still cost enough to
-- JIT-compile the whole statement on every call: ~40 ms) nor plans them when they are not called.
--
-- ledger_total_at: the definition, a SUM over the ledger before p_start (NULL when there is no
-- entry before or at it, as before). Reads every entry of the account before p_start.
CREATE FUNCTION "ledger_total_at"(p_account uuid, p_start timestamptz)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_before numeric;
  v_at_start numeric;
BEGIN
  -- Two index ranges on (account_id, created_at): before the start, and expiries at it.
  SELECT SUM(amount_micro_credits) INTO v_before FROM ledger_entries
   WHERE account_id = p_account AND created_at < p_start AND type NOT IN ('RESERVE', 'RELEASE');
  SELECT SUM(amount_micro_credits) INTO v_at_start FROM ledger_entries
   WHERE account_id = p_account AND created_at = p_start AND type = 'EXPIRE';
  IF v_before IS NULL AND v_at_start IS NULL THEN
    RETURN NULL;
  END IF;
  RETURN (COALESCE(v_before, 0) + COALESCE(v_at_start, 0))::bigint;
END
$$;

-- ledger_opening_from_total: the same total from the other end, given the account's total
-- p_total (= SUM of all its total-changing entries, the ledger invariant): p_total minus the
-- entries dated after p_start and the non-EXPIRE entries dated at it. Reads only the entries
-- dated from p_start on: for a period that just began, its first few.
CREATE FUNCTION "ledger_opening_from_total"(p_account uuid, p_start timestamptz, p_total bigint)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_after numeric;
  v_at_start numeric;
BEGIN
  SELECT COALESCE(SUM(amount_micro_credits), 0) INTO v_after FROM ledger_entries
   WHERE account_id = p_account AND created_at > p_start AND type NOT IN ('RESERVE', 'RELEASE');
  SELECT COALESCE(SUM(amount_micro_credits), 0) INTO v_at_start FROM ledger_entries
   WHERE account_id = p_account AND created_at = p_start AND type NOT IN ('RESERVE', 'RELEASE', 'EXPIRE');
  RETURN (p_total - v_after - v_at_start)::bigint;
END
$$;

-- balance_figures: total_at_start from the balance row when it is for p_period_start; otherwise
-- (no write of this account in that period yet, e.g. a read just after the period rolled) the
-- SUM over the ledger as before.
CREATE OR REPLACE FUNCTION "balance_figures"(p_account uuid, p_now timestamptz, p_period_start timestamptz)
RETURNS TABLE (free bigint, paid bigint, reserved bigint, next_at timestamptz, next_amount bigint, total_at_start bigint, granted bigint)
LANGUAGE sql STABLE AS $$
  WITH spendable AS (
    SELECT type, remaining_micro_credits AS remaining, expires_at FROM credit_batches
     WHERE account_id = p_account AND status = 'ACTIVE' AND (expires_at IS NULL OR expires_at > p_now)
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
    COALESCE((SELECT total FROM opening), ledger_total_at(p_account, p_period_start)),
    (SELECT COALESCE(SUM(amount_micro_credits), 0) FROM credit_grants
      WHERE account_id = p_account AND created_at >= p_period_start AND created_at <= p_now)::bigint
$$;
