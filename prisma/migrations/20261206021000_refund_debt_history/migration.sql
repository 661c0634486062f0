-- Hand-written (Prisma's schema cannot state a partial index): the rows of an account's debt
-- history, indexed by account.
--
-- Why: refundUsage gives back the part of an event's debt that later grants repaid into the
-- batches of those grants, found by replaying the account's debt history in ledger order (debt is
-- repaid first in, first out; refund-usage.ts readDebtHistory): its usage events with debt, its
-- DEBT_REPAY entries and its debt-forgiving REFUND entries (no batch). Those are few (overage
-- captures only), but without these indexes finding them read every usage event and every ledger
-- entry of the account under its lock. Measured on one account with 300,000 events and entries
-- (30 with debt), generic plans: 85 ms without, 0.5 ms with (both plans use the partial indexes).
-- Writes pay nothing but the predicate for rows outside them (almost all).
CREATE INDEX "usage_events_with_debt" ON "usage_events" ("account_id") WHERE "debt_micro_credits" > 0;
CREATE INDEX "ledger_entries_debt_changes" ON "ledger_entries" ("account_id", "seq")
  WHERE "type" = 'DEBT_REPAY' OR ("type" = 'REFUND' AND "batch_id" IS NULL);
