-- Hand-written: a grant voided by a server of the release before period_credits_voids gets its
-- voided_micro_credits too.
--
-- Why: during a rolling upgrade the servers of the previous release keep running on the migrated
-- database until they are replaced, and their voidGrant (commit aeb99a5^) sets only voided_at and
-- void_reason: a grant they voided after period_credits_voids kept voided_micro_credits NULL (the
-- backfill of that migration had already run), so balance_figures left what the void took back
-- in the period's credit, the very error that migration fixed: 100 purchased and a mistaken 1,000
-- voided read as 99 of 1,100 (9 %) after a 1-credit charge and raised the period's 25 % and 15 %
-- alerts (test/upgrade/rolling-upgrade.test.ts).
--
-- So the row derives it: when voided_at is set and voided_micro_credits is not, it is what the
-- void takes back, the remaining of the grant's batch if ACTIVE, else 0, which is what voidGrant
-- (src/services/void-grant.ts) writes. Both releases update the grant before they empty the
-- batch, in the transaction that holds the account's lock, so the batch still holds it then. The
-- current voidGrant always writes the amount itself, so the trigger changes nothing for it.
CREATE FUNCTION "credit_grants_voided_amount"() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF OLD.voided_at IS NULL AND NEW.voided_at IS NOT NULL AND NEW.voided_micro_credits IS NULL THEN
    NEW.voided_micro_credits := COALESCE((SELECT remaining_micro_credits FROM credit_batches
                                           WHERE grant_id = NEW.id AND status = 'ACTIVE'), 0);
  END IF;
  RETURN NEW;
END
$$;

CREATE TRIGGER "credit_grants_voided_amount" BEFORE UPDATE OF "voided_at" ON "credit_grants"
  FOR EACH ROW EXECUTE FUNCTION "credit_grants_voided_amount"();

-- Grants older servers voided between period_credits_voids and this migration: that migration's
-- backfill (from their VOID entries) again, for the voided grants still without an amount (the
-- current voidGrant never leaves one).
UPDATE credit_grants g SET voided_micro_credits = COALESCE((
  SELECT -SUM(l.amount_micro_credits) FROM credit_batches b
    JOIN ledger_entries l ON l.account_id = g.account_id AND l.batch_id = b.id AND l.type = 'VOID'
   WHERE b.grant_id = g.id), 0)
 WHERE g.voided_at IS NOT NULL AND g.voided_micro_credits IS NULL;
