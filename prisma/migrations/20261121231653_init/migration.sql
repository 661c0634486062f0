-- CreateEnum
CREATE TYPE "AccountKind" AS ENUM ('ORGANIZATION', 'USER');

-- CreateEnum
CREATE TYPE "CreditType" AS ENUM ('FREE', 'PAID');

-- CreateEnum
CREATE TYPE "GrantSource" AS ENUM ('WELCOME_BONUS', 'PROMO_CODE', 'REFERRAL', 'PURCHASE', 'SUBSCRIPTION', 'AUTO_TOP_UP', 'ADJUSTMENT');

-- CreateEnum
CREATE TYPE "BatchStatus" AS ENUM ('ACTIVE', 'EXHAUSTED', 'EXPIRED', 'VOIDED');

-- CreateEnum
CREATE TYPE "LedgerEntryType" AS ENUM ('GRANT', 'CONSUME', 'EXPIRE', 'RESERVE', 'RELEASE', 'REFUND', 'VOID', 'ADJUST', 'DEBT_REPAY');

-- CreateEnum
CREATE TYPE "ReservationStatus" AS ENUM ('ACTIVE', 'SETTLED', 'RELEASED', 'EXPIRED');

-- CreateTable
CREATE TABLE "accounts" (
    "id" UUID NOT NULL,
    "external_id" TEXT NOT NULL,
    "name" TEXT NOT NULL,
    "kind" "AccountKind" NOT NULL,
    "test_mode" BOOLEAN NOT NULL DEFAULT false,
    "test_clock_at" TIMESTAMPTZ(3),
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "referral_code" TEXT NOT NULL,

    CONSTRAINT "accounts_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "balances" (
    "account_id" UUID NOT NULL,
    "total_micro_credits" BIGINT NOT NULL DEFAULT 0,
    "debt_micro_credits" BIGINT NOT NULL DEFAULT 0,
    "version" BIGINT NOT NULL DEFAULT 0,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "balances_pkey" PRIMARY KEY ("account_id")
);

-- CreateTable
CREATE TABLE "credit_grants" (
    "id" UUID NOT NULL,
    "seq" BIGSERIAL NOT NULL,
    "account_id" UUID NOT NULL,
    "source" "GrantSource" NOT NULL,
    "type" "CreditType" NOT NULL,
    "amount_micro_credits" BIGINT NOT NULL,
    "reference" TEXT,
    "idempotency_key" TEXT NOT NULL,
    "request_hash" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "voided_at" TIMESTAMPTZ(3),
    "void_reason" TEXT,

    CONSTRAINT "credit_grants_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "credit_batches" (
    "id" UUID NOT NULL,
    "account_id" UUID NOT NULL,
    "grant_id" UUID NOT NULL,
    "type" "CreditType" NOT NULL,
    "source" "GrantSource" NOT NULL,
    "allocated_micro_credits" BIGINT NOT NULL,
    "remaining_micro_credits" BIGINT NOT NULL,
    "added_at" TIMESTAMPTZ(3) NOT NULL,
    "expires_at" TIMESTAMPTZ(3),
    "status" "BatchStatus" NOT NULL DEFAULT 'ACTIVE',
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "credit_batches_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "usage_events" (
    "id" UUID NOT NULL,
    "seq" BIGSERIAL NOT NULL,
    "account_id" UUID NOT NULL,
    "idempotency_key" TEXT NOT NULL,
    "request_hash" TEXT NOT NULL,
    "occurred_at" TIMESTAMPTZ(3) NOT NULL,
    "recorded_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "category" TEXT NOT NULL,
    "model" TEXT,
    "tier" TEXT,
    "sku" TEXT,
    "agent_id" TEXT,
    "user_id" TEXT,
    "task_id" TEXT,
    "conversation_id" TEXT,
    "message_id" TEXT,
    "input_tokens" INTEGER,
    "output_tokens" INTEGER,
    "reasoning_tokens" INTEGER,
    "cache_read_tokens" INTEGER,
    "cache_write_tokens" INTEGER,
    "seconds" DECIMAL(30,9),
    "units" DECIMAL(30,9),
    "provider_cost_usd" DECIMAL(30,12),
    "byok" BOOLEAN NOT NULL DEFAULT false,
    "cost_micro_credits" BIGINT NOT NULL,
    "debt_micro_credits" BIGINT NOT NULL DEFAULT 0,
    "lines" JSONB NOT NULL,
    "reservation_id" UUID,
    "price_book_version" INTEGER NOT NULL,
    "refunded_at" TIMESTAMPTZ(3),
    "refund_reason" TEXT,
    "metadata" JSONB,

    CONSTRAINT "usage_events_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "drawdowns" (
    "id" UUID NOT NULL,
    "usage_event_id" UUID NOT NULL,
    "batch_id" UUID NOT NULL,
    "position" INTEGER NOT NULL,
    "amount_micro_credits" BIGINT NOT NULL,

    CONSTRAINT "drawdowns_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "ledger_entries" (
    "id" UUID NOT NULL,
    "seq" BIGSERIAL NOT NULL,
    "account_id" UUID NOT NULL,
    "type" "LedgerEntryType" NOT NULL,
    "amount_micro_credits" BIGINT NOT NULL,
    "balance_after_micro_credits" BIGINT NOT NULL,
    "batch_id" UUID,
    "usage_event_id" UUID,
    "reservation_id" UUID,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "note" TEXT,

    CONSTRAINT "ledger_entries_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "reservations" (
    "id" UUID NOT NULL,
    "account_id" UUID NOT NULL,
    "amount_micro_credits" BIGINT NOT NULL,
    "consumed_micro_credits" BIGINT NOT NULL DEFAULT 0,
    "status" "ReservationStatus" NOT NULL DEFAULT 'ACTIVE',
    "expires_at" TIMESTAMPTZ(3) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "closed_at" TIMESTAMPTZ(3),
    "idempotency_key" TEXT NOT NULL,
    "request_hash" TEXT NOT NULL,

    CONSTRAINT "reservations_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "price_books" (
    "version" SERIAL NOT NULL,
    "name" TEXT NOT NULL,
    "byok_fee_percent" DECIMAL(12,6) NOT NULL,
    "rules" JSONB NOT NULL,
    "published_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "price_books_pkey" PRIMARY KEY ("version")
);

-- CreateTable
CREATE TABLE "settings" (
    "id" INTEGER NOT NULL DEFAULT 1,
    "credit_usd_value" DECIMAL(20,10) NOT NULL DEFAULT 0.01,
    "welcome_bonus_micro_credits" BIGINT NOT NULL DEFAULT 0,
    "welcome_bonus_expires_after_days" INTEGER,
    "referral_reward_micro_credits" BIGINT NOT NULL DEFAULT 0,
    "referral_max_rewards_per_account" INTEGER NOT NULL DEFAULT 10,
    "alert_thresholds" INTEGER[] DEFAULT ARRAY[25, 15, 0]::INTEGER[],
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "settings_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "api_keys" (
    "id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "prefix" TEXT NOT NULL,
    "hash" TEXT NOT NULL,
    "scopes" TEXT[],
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "revoked_at" TIMESTAMPTZ(3),

    CONSTRAINT "api_keys_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "accounts_external_id_key" ON "accounts"("external_id");

-- CreateIndex
CREATE UNIQUE INDEX "accounts_referral_code_key" ON "accounts"("referral_code");

-- CreateIndex
CREATE UNIQUE INDEX "credit_grants_seq_key" ON "credit_grants"("seq");

-- CreateIndex
CREATE INDEX "credit_grants_account_id_seq_idx" ON "credit_grants"("account_id", "seq");

-- CreateIndex
CREATE UNIQUE INDEX "credit_grants_account_id_idempotency_key_key" ON "credit_grants"("account_id", "idempotency_key");

-- CreateIndex
CREATE UNIQUE INDEX "credit_batches_grant_id_key" ON "credit_batches"("grant_id");

-- CreateIndex
CREATE INDEX "credit_batches_account_id_status_idx" ON "credit_batches"("account_id", "status");

-- CreateIndex
CREATE UNIQUE INDEX "usage_events_seq_key" ON "usage_events"("seq");

-- CreateIndex
CREATE INDEX "usage_events_account_id_seq_idx" ON "usage_events"("account_id", "seq");

-- CreateIndex
CREATE INDEX "usage_events_account_id_task_id_idx" ON "usage_events"("account_id", "task_id");

-- CreateIndex
CREATE INDEX "usage_events_account_id_occurred_at_idx" ON "usage_events"("account_id", "occurred_at");

-- CreateIndex
CREATE UNIQUE INDEX "usage_events_account_id_idempotency_key_key" ON "usage_events"("account_id", "idempotency_key");

-- CreateIndex
CREATE INDEX "drawdowns_batch_id_idx" ON "drawdowns"("batch_id");

-- CreateIndex
CREATE UNIQUE INDEX "drawdowns_usage_event_id_batch_id_key" ON "drawdowns"("usage_event_id", "batch_id");

-- CreateIndex
CREATE UNIQUE INDEX "ledger_entries_seq_key" ON "ledger_entries"("seq");

-- CreateIndex
CREATE INDEX "ledger_entries_account_id_seq_idx" ON "ledger_entries"("account_id", "seq");

-- CreateIndex
CREATE INDEX "reservations_account_id_status_idx" ON "reservations"("account_id", "status");

-- CreateIndex
CREATE UNIQUE INDEX "reservations_account_id_idempotency_key_key" ON "reservations"("account_id", "idempotency_key");

-- CreateIndex
CREATE UNIQUE INDEX "api_keys_hash_key" ON "api_keys"("hash");

-- AddForeignKey
ALTER TABLE "balances" ADD CONSTRAINT "balances_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "credit_grants" ADD CONSTRAINT "credit_grants_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "credit_batches" ADD CONSTRAINT "credit_batches_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "credit_batches" ADD CONSTRAINT "credit_batches_grant_id_fkey" FOREIGN KEY ("grant_id") REFERENCES "credit_grants"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "usage_events" ADD CONSTRAINT "usage_events_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "usage_events" ADD CONSTRAINT "usage_events_reservation_id_fkey" FOREIGN KEY ("reservation_id") REFERENCES "reservations"("id") ON DELETE SET NULL ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "usage_events" ADD CONSTRAINT "usage_events_price_book_version_fkey" FOREIGN KEY ("price_book_version") REFERENCES "price_books"("version") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "drawdowns" ADD CONSTRAINT "drawdowns_usage_event_id_fkey" FOREIGN KEY ("usage_event_id") REFERENCES "usage_events"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "drawdowns" ADD CONSTRAINT "drawdowns_batch_id_fkey" FOREIGN KEY ("batch_id") REFERENCES "credit_batches"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "ledger_entries" ADD CONSTRAINT "ledger_entries_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "ledger_entries" ADD CONSTRAINT "ledger_entries_batch_id_fkey" FOREIGN KEY ("batch_id") REFERENCES "credit_batches"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "ledger_entries" ADD CONSTRAINT "ledger_entries_usage_event_id_fkey" FOREIGN KEY ("usage_event_id") REFERENCES "usage_events"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "ledger_entries" ADD CONSTRAINT "ledger_entries_reservation_id_fkey" FOREIGN KEY ("reservation_id") REFERENCES "reservations"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "reservations" ADD CONSTRAINT "reservations_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- ---------------------------------------------------------------------------------------------
-- Invariants enforced by the database (written by hand; Prisma's schema language cannot say them).
-- Amounts are micro-credits (1 credit = 1,000,000).
-- ---------------------------------------------------------------------------------------------

ALTER TABLE "balances"
  ADD CONSTRAINT "balances_debt_non_negative" CHECK ("debt_micro_credits" >= 0),
  ADD CONSTRAINT "balances_version_non_negative" CHECK ("version" >= 0);

ALTER TABLE "credit_grants"
  ADD CONSTRAINT "credit_grants_amount_positive" CHECK ("amount_micro_credits" > 0),
  ADD CONSTRAINT "credit_grants_idempotency_key_length" CHECK (length("idempotency_key") BETWEEN 1 AND 200);

ALTER TABLE "credit_batches"
  ADD CONSTRAINT "credit_batches_allocated_positive" CHECK ("allocated_micro_credits" > 0),
  ADD CONSTRAINT "credit_batches_remaining_in_range" CHECK ("remaining_micro_credits" >= 0 AND "remaining_micro_credits" <= "allocated_micro_credits"),
  -- An ACTIVE batch has credit left; every other status holds none.
  ADD CONSTRAINT "credit_batches_status_matches_remaining" CHECK (("status" = 'ACTIVE') = ("remaining_micro_credits" > 0)),
  ADD CONSTRAINT "credit_batches_expiry_after_added" CHECK ("expires_at" IS NULL OR "expires_at" > "added_at");

ALTER TABLE "usage_events"
  ADD CONSTRAINT "usage_events_cost_non_negative" CHECK ("cost_micro_credits" >= 0),
  ADD CONSTRAINT "usage_events_debt_in_range" CHECK ("debt_micro_credits" >= 0 AND "debt_micro_credits" <= "cost_micro_credits"),
  ADD CONSTRAINT "usage_events_tokens_non_negative" CHECK (
    coalesce("input_tokens", 0) >= 0 AND coalesce("output_tokens", 0) >= 0 AND coalesce("reasoning_tokens", 0) >= 0
    AND coalesce("cache_read_tokens", 0) >= 0 AND coalesce("cache_write_tokens", 0) >= 0),
  ADD CONSTRAINT "usage_events_quantities_non_negative" CHECK (coalesce("seconds", 0) >= 0 AND coalesce("units", 0) >= 0 AND coalesce("provider_cost_usd", 0) >= 0),
  ADD CONSTRAINT "usage_events_idempotency_key_length" CHECK (length("idempotency_key") BETWEEN 1 AND 200);

ALTER TABLE "drawdowns"
  ADD CONSTRAINT "drawdowns_amount_positive" CHECK ("amount_micro_credits" > 0),
  ADD CONSTRAINT "drawdowns_position_non_negative" CHECK ("position" >= 0);

ALTER TABLE "reservations"
  ADD CONSTRAINT "reservations_amount_positive" CHECK ("amount_micro_credits" > 0),
  ADD CONSTRAINT "reservations_consumed_non_negative" CHECK ("consumed_micro_credits" >= 0),
  ADD CONSTRAINT "reservations_closed_when_not_active" CHECK (("status" = 'ACTIVE') = ("closed_at" IS NULL));

ALTER TABLE "ledger_entries"
  -- Hold entries change `reserved`: RESERVE adds, RELEASE removes; the others change the total.
  ADD CONSTRAINT "ledger_entries_sign_by_type" CHECK (
    CASE "type"
      WHEN 'GRANT' THEN "amount_micro_credits" >= 0
      WHEN 'DEBT_REPAY' THEN "amount_micro_credits" > 0
      WHEN 'REFUND' THEN "amount_micro_credits" > 0
      WHEN 'RESERVE' THEN "amount_micro_credits" > 0
      WHEN 'CONSUME' THEN "amount_micro_credits" <= 0
      WHEN 'EXPIRE' THEN "amount_micro_credits" <= 0
      WHEN 'VOID' THEN "amount_micro_credits" <= 0
      WHEN 'RELEASE' THEN "amount_micro_credits" < 0
      ELSE TRUE
    END);

ALTER TABLE "price_books"
  ADD CONSTRAINT "price_books_byok_fee_non_negative" CHECK ("byok_fee_percent" >= 0);

ALTER TABLE "settings"
  ADD CONSTRAINT "settings_single_row" CHECK ("id" = 1),
  ADD CONSTRAINT "settings_credit_usd_value_positive" CHECK ("credit_usd_value" > 0),
  ADD CONSTRAINT "settings_amounts_non_negative" CHECK ("welcome_bonus_micro_credits" >= 0 AND "referral_reward_micro_credits" >= 0);

INSERT INTO "settings" ("id", "welcome_bonus_micro_credits", "welcome_bonus_expires_after_days", "referral_reward_micro_credits")
VALUES (1, 100000000, 30, 50000000)
ON CONFLICT ("id") DO NOTHING;

ALTER TABLE "api_keys"
  ADD CONSTRAINT "api_keys_scopes_known" CHECK ("scopes" <@ ARRAY['admin', 'usage:write', 'credits:write', 'read']::text[]);

-- The balance invariant, checked at COMMIT of every transaction that touched a balance row:
-- total = sum(remaining of ACTIVE batches) - debt. Every money-moving write updates the
-- balance row (it also takes its lock there), so no change of credit escapes this check.
CREATE FUNCTION "check_balance_invariant"() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  batch_sum bigint;
  cur record;
BEGIN
  SELECT total_micro_credits, debt_micro_credits INTO cur FROM balances WHERE account_id = NEW.account_id;
  IF NOT FOUND THEN RETURN NULL; END IF;
  SELECT COALESCE(SUM(remaining_micro_credits), 0) INTO batch_sum
    FROM credit_batches WHERE account_id = NEW.account_id AND status = 'ACTIVE';
  IF batch_sum - cur.debt_micro_credits <> cur.total_micro_credits THEN
    RAISE EXCEPTION 'balance invariant violated for account %: batches % - debt % <> total %',
      NEW.account_id, batch_sum, cur.debt_micro_credits, cur.total_micro_credits
      USING ERRCODE = '23514';
  END IF;
  RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER "balances_invariant"
  AFTER INSERT OR UPDATE ON "balances"
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION "check_balance_invariant"();
