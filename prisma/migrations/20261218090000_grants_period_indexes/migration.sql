-- The period's granted credit read from the period's grants and voids instead of every grant the
-- account ever had (issue #6, "fast history"). balance_figures runs on every balance change
-- (balances_changed: the snapshot, the alerts) and every balance read, and its `granted` term was
-- one pass over ALL the account's credit_grants: an account on auto top-up gets a grant per
-- top-up, thousands a year, and each charge read them all (~1 µs a row: 3,000 grants ≈ 3 ms of
-- PostgreSQL per charge, growing for ever). Now two sums bounded by these indexes: grants created
-- in [period start, now] and voids dated in it. Same figure: the old pass summed exactly these
-- rows (SUM skips a void's NULL amount, as the CASE's NULL was skipped). The function is redefined
-- with that term once, by the next migration (balance_opening_from_total), which changes its
-- opening fallback too.
--
-- The grant limit of grantCredits (SUM of the period's grants, src/services/grant-credits.ts)
-- reads through the first index too; it read all the account's grants as well.
--
-- Built without CONCURRENTLY (README "Limits"): grants and voids wait while they build.

-- CreateIndex
CREATE INDEX "credit_grants_account_id_created_at_idx" ON "credit_grants"("account_id", "created_at");

-- Partial: few grants are ever voided. Not in schema.prisma (Prisma cannot say WHERE).
CREATE INDEX "credit_grants_voided_at" ON "credit_grants"("account_id", "voided_at") WHERE "voided_at" IS NOT NULL;
