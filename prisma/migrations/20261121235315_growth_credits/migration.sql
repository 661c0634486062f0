-- AlterTable
ALTER TABLE "api_keys" ADD COLUMN     "audience" TEXT NOT NULL DEFAULT 'INTERNAL';

-- AlterTable
ALTER TABLE "credit_grants" ADD COLUMN     "note" TEXT;

-- AlterTable
ALTER TABLE "reservations" ADD COLUMN     "agent_id" TEXT,
ADD COLUMN     "user_id" TEXT;

-- CreateTable
CREATE TABLE "promo_codes" (
    "code" TEXT NOT NULL,
    "credits_micro_credits" BIGINT NOT NULL,
    "expires_after_days" INTEGER,
    "max_redemptions" INTEGER,
    "redemptions" INTEGER NOT NULL DEFAULT 0,
    "valid_until" TIMESTAMPTZ(3),
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "promo_codes_pkey" PRIMARY KEY ("code")
);

-- CreateTable
CREATE TABLE "promo_redemptions" (
    "id" UUID NOT NULL,
    "code" TEXT NOT NULL,
    "account_id" UUID NOT NULL,
    "grant_id" UUID NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "promo_redemptions_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "referrals" (
    "id" UUID NOT NULL,
    "referrer_account_id" UUID NOT NULL,
    "referee_account_id" UUID NOT NULL,
    "referrer_rewarded" BOOLEAN NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "referrals_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "spending_budgets" (
    "id" UUID NOT NULL,
    "account_id" UUID NOT NULL,
    "subject_kind" TEXT NOT NULL,
    "subject_id" TEXT NOT NULL,
    "limit_micro_credits" BIGINT NOT NULL,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "spending_budgets_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "promo_redemptions_grant_id_key" ON "promo_redemptions"("grant_id");

-- CreateIndex
CREATE UNIQUE INDEX "promo_redemptions_code_account_id_key" ON "promo_redemptions"("code", "account_id");

-- CreateIndex
CREATE UNIQUE INDEX "referrals_referee_account_id_key" ON "referrals"("referee_account_id");

-- CreateIndex
CREATE INDEX "referrals_referrer_account_id_referrer_rewarded_idx" ON "referrals"("referrer_account_id", "referrer_rewarded");

-- CreateIndex
CREATE UNIQUE INDEX "spending_budgets_account_id_subject_kind_subject_id_key" ON "spending_budgets"("account_id", "subject_kind", "subject_id");

-- CreateIndex
CREATE INDEX "usage_events_account_id_agent_id_recorded_at_idx" ON "usage_events"("account_id", "agent_id", "recorded_at");

-- CreateIndex
CREATE INDEX "usage_events_account_id_user_id_recorded_at_idx" ON "usage_events"("account_id", "user_id", "recorded_at");

-- AddForeignKey
ALTER TABLE "promo_redemptions" ADD CONSTRAINT "promo_redemptions_code_fkey" FOREIGN KEY ("code") REFERENCES "promo_codes"("code") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "promo_redemptions" ADD CONSTRAINT "promo_redemptions_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "referrals" ADD CONSTRAINT "referrals_referrer_account_id_fkey" FOREIGN KEY ("referrer_account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "referrals" ADD CONSTRAINT "referrals_referee_account_id_fkey" FOREIGN KEY ("referee_account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "spending_budgets" ADD CONSTRAINT "spending_budgets_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- ---------------------------------------------------------------------------------------------
-- Invariants of growth credits and spending controls (hand-written).
-- ---------------------------------------------------------------------------------------------
ALTER TABLE "promo_codes"
  ADD CONSTRAINT "promo_codes_code_format" CHECK ("code" ~ '^[A-Z0-9_-]{3,64}$'),
  ADD CONSTRAINT "promo_codes_credits_positive" CHECK ("credits_micro_credits" > 0),
  ADD CONSTRAINT "promo_codes_expiry_days_positive" CHECK ("expires_after_days" IS NULL OR "expires_after_days" > 0),
  ADD CONSTRAINT "promo_codes_max_positive" CHECK ("max_redemptions" IS NULL OR "max_redemptions" > 0),
  -- Never more redemptions than allowed, whatever the code does.
  ADD CONSTRAINT "promo_codes_redemptions_in_range" CHECK ("redemptions" >= 0 AND ("max_redemptions" IS NULL OR "redemptions" <= "max_redemptions"));

ALTER TABLE "referrals"
  ADD CONSTRAINT "referrals_not_self" CHECK ("referrer_account_id" <> "referee_account_id");

ALTER TABLE "spending_budgets"
  ADD CONSTRAINT "spending_budgets_subject_kind" CHECK ("subject_kind" IN ('AGENT', 'USER')),
  ADD CONSTRAINT "spending_budgets_limit_non_negative" CHECK ("limit_micro_credits" >= 0);

ALTER TABLE "api_keys"
  ADD CONSTRAINT "api_keys_audience" CHECK ("audience" IN ('INTERNAL', 'PUBLIC'));
