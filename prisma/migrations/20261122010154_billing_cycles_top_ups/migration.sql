-- CreateEnum
CREATE TYPE "RolloverPolicy" AS ENUM ('RESET', 'ROLLOVER');

-- AlterTable
ALTER TABLE "accounts" ADD COLUMN     "billing_anchor_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP;

-- CreateTable
CREATE TABLE "plans" (
    "id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "monthly_micro_credits" BIGINT NOT NULL,
    "rollover" "RolloverPolicy" NOT NULL,
    "rollover_cap_micro_credits" BIGINT,
    "price_usd" DECIMAL(18,6) NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "plans_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "plan_subscriptions" (
    "account_id" UUID NOT NULL,
    "plan_id" UUID NOT NULL,
    "active" BOOLEAN NOT NULL DEFAULT true,
    "started_at" TIMESTAMPTZ(3) NOT NULL,
    "granted_period_start" TIMESTAMPTZ(3) NOT NULL,
    "canceled_at" TIMESTAMPTZ(3),

    CONSTRAINT "plan_subscriptions_pkey" PRIMARY KEY ("account_id")
);

-- CreateTable
CREATE TABLE "credit_packs" (
    "id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "micro_credits" BIGINT NOT NULL,
    "bonus_micro_credits" BIGINT NOT NULL DEFAULT 0,
    "price_usd" DECIMAL(18,6) NOT NULL,
    "expires_after_days" INTEGER,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "credit_packs_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "payment_methods" (
    "account_id" UUID NOT NULL,
    "provider" TEXT NOT NULL,
    "reference" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "payment_methods_pkey" PRIMARY KEY ("account_id")
);

-- CreateTable
CREATE TABLE "payments" (
    "id" UUID NOT NULL,
    "account_id" UUID NOT NULL,
    "purpose" TEXT NOT NULL,
    "idempotency_key" TEXT NOT NULL,
    "pack_id" UUID NOT NULL,
    "amount_usd" DECIMAL(18,6) NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "provider_ref" TEXT,
    "error" TEXT,
    "grant_id" UUID,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "payments_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "auto_top_up_settings" (
    "account_id" UUID NOT NULL,
    "enabled" BOOLEAN NOT NULL,
    "threshold_micro_credits" BIGINT NOT NULL,
    "pack_id" UUID NOT NULL,
    "max_per_period" INTEGER NOT NULL,
    "consecutive_failures" INTEGER NOT NULL DEFAULT 0,
    "last_attempt_at" TIMESTAMPTZ(3),
    "last_error" TEXT,
    "paused_at" TIMESTAMPTZ(3),
    "updated_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "auto_top_up_settings_pkey" PRIMARY KEY ("account_id")
);

-- CreateTable
CREATE TABLE "auto_top_ups" (
    "id" UUID NOT NULL,
    "account_id" UUID NOT NULL,
    "period_start" TIMESTAMPTZ(3) NOT NULL,
    "status" TEXT NOT NULL DEFAULT 'PENDING',
    "attempts" INTEGER NOT NULL DEFAULT 0,
    "payment_id" UUID,
    "error" TEXT,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "finished_at" TIMESTAMPTZ(3),

    CONSTRAINT "auto_top_ups_pkey" PRIMARY KEY ("id")
);

-- CreateTable
CREATE TABLE "webhook_deliveries" (
    "id" UUID NOT NULL,
    "event_type" TEXT NOT NULL,
    "event_id" TEXT NOT NULL,
    "account_id" UUID NOT NULL,
    "url" TEXT NOT NULL,
    "attempt" INTEGER NOT NULL,
    "status" TEXT NOT NULL,
    "response_code" INTEGER,
    "error" TEXT,
    "created_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "webhook_deliveries_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE UNIQUE INDEX "plans_name_key" ON "plans"("name");

-- CreateIndex
CREATE UNIQUE INDEX "credit_packs_name_key" ON "credit_packs"("name");

-- CreateIndex
CREATE UNIQUE INDEX "payments_grant_id_key" ON "payments"("grant_id");

-- CreateIndex
CREATE UNIQUE INDEX "payments_account_id_idempotency_key_key" ON "payments"("account_id", "idempotency_key");

-- CreateIndex
CREATE UNIQUE INDEX "auto_top_ups_payment_id_key" ON "auto_top_ups"("payment_id");

-- CreateIndex
CREATE INDEX "auto_top_ups_account_id_period_start_idx" ON "auto_top_ups"("account_id", "period_start");

-- CreateIndex
CREATE INDEX "webhook_deliveries_event_id_idx" ON "webhook_deliveries"("event_id");

-- AddForeignKey
ALTER TABLE "plan_subscriptions" ADD CONSTRAINT "plan_subscriptions_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "plan_subscriptions" ADD CONSTRAINT "plan_subscriptions_plan_id_fkey" FOREIGN KEY ("plan_id") REFERENCES "plans"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "payment_methods" ADD CONSTRAINT "payment_methods_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "payments" ADD CONSTRAINT "payments_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "payments" ADD CONSTRAINT "payments_pack_id_fkey" FOREIGN KEY ("pack_id") REFERENCES "credit_packs"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "auto_top_up_settings" ADD CONSTRAINT "auto_top_up_settings_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "auto_top_up_settings" ADD CONSTRAINT "auto_top_up_settings_pack_id_fkey" FOREIGN KEY ("pack_id") REFERENCES "credit_packs"("id") ON DELETE RESTRICT ON UPDATE CASCADE;

-- AddForeignKey
ALTER TABLE "auto_top_ups" ADD CONSTRAINT "auto_top_ups_account_id_fkey" FOREIGN KEY ("account_id") REFERENCES "accounts"("id") ON DELETE CASCADE ON UPDATE CASCADE;

-- AddColumn (alerts of one change share their created_at; seq is their order)
ALTER TABLE "credit_alerts" ADD COLUMN "seq" BIGSERIAL NOT NULL;
CREATE UNIQUE INDEX "credit_alerts_seq_key" ON "credit_alerts"("seq");

-- Hand-written: existing accounts keep their billing periods (anchored at creation).
UPDATE "accounts" SET "billing_anchor_at" = "created_at";

-- Hand-written: invariants the database enforces.
ALTER TABLE "plans" ADD CONSTRAINT "plans_monthly_positive" CHECK ("monthly_micro_credits" > 0);
ALTER TABLE "plans" ADD CONSTRAINT "plans_cap_only_for_rollover" CHECK ("rollover_cap_micro_credits" IS NULL OR ("rollover" = 'ROLLOVER' AND "rollover_cap_micro_credits" >= 0));
ALTER TABLE "plans" ADD CONSTRAINT "plans_price_not_negative" CHECK ("price_usd" >= 0);
ALTER TABLE "plan_subscriptions" ADD CONSTRAINT "plan_subscriptions_canceled" CHECK (("canceled_at" IS NULL) = "active");
ALTER TABLE "credit_packs" ADD CONSTRAINT "credit_packs_amounts" CHECK ("micro_credits" > 0 AND "bonus_micro_credits" >= 0 AND "price_usd" >= 0);
ALTER TABLE "credit_packs" ADD CONSTRAINT "credit_packs_expiry" CHECK ("expires_after_days" IS NULL OR "expires_after_days" > 0);
ALTER TABLE "payments" ADD CONSTRAINT "payments_purpose" CHECK ("purpose" IN ('PURCHASE', 'AUTO_TOP_UP'));
ALTER TABLE "payments" ADD CONSTRAINT "payments_status" CHECK ("status" IN ('PENDING', 'SUCCEEDED', 'FAILED'));
ALTER TABLE "payments" ADD CONSTRAINT "payments_grant_iff_succeeded" CHECK (("grant_id" IS NOT NULL) = ("status" = 'SUCCEEDED'));
ALTER TABLE "payments" ADD CONSTRAINT "payments_amount" CHECK ("amount_usd" >= 0);
ALTER TABLE "auto_top_up_settings" ADD CONSTRAINT "auto_top_up_settings_values" CHECK ("threshold_micro_credits" >= 0 AND "max_per_period" >= 1 AND "consecutive_failures" >= 0);
ALTER TABLE "auto_top_ups" ADD CONSTRAINT "auto_top_ups_status" CHECK ("status" IN ('PENDING', 'SUCCEEDED', 'FAILED', 'SKIPPED'));
ALTER TABLE "webhook_deliveries" ADD CONSTRAINT "webhook_deliveries_status" CHECK ("status" IN ('DELIVERED', 'FAILED'));
-- Single flight: at most one top-up in progress per account.
CREATE UNIQUE INDEX "auto_top_ups_one_pending" ON "auto_top_ups" ("account_id") WHERE "status" = 'PENDING';
-- The expiry sweeps find due rows without scanning everything.
CREATE INDEX "credit_batches_active_expiry" ON "credit_batches" ("expires_at") WHERE "status" = 'ACTIVE' AND "expires_at" IS NOT NULL;
CREATE INDEX "reservations_active_expiry" ON "reservations" ("expires_at") WHERE "status" = 'ACTIVE';

ALTER TABLE "outbox_events" DROP CONSTRAINT "outbox_events_topic_check";
ALTER TABLE "outbox_events" ADD CONSTRAINT "outbox_events_topic_check" CHECK ("topic" IN ('balance', 'usage', 'alert', 'job'));

-- Hand-written: balance_figures gets the total at the period start as the SUM of the
-- total-changing ledger entries dated before it, plus expiries dated exactly at it (credit
-- that expired at the boundary, e.g. RESET subscription credit, is not part of the new period,
-- whenever the expiry worker got to it; EXPIRE entries are dated at the batch's expiresAt).
-- The ledger invariant (sum of those entries = total) makes this the total at that instant.
CREATE OR REPLACE FUNCTION "balance_figures"(p_account uuid, p_now timestamptz, p_period_start timestamptz)
RETURNS TABLE (free bigint, paid bigint, reserved bigint, next_at timestamptz, next_amount bigint, total_at_start bigint, granted bigint)
LANGUAGE sql STABLE AS $$
  WITH spendable AS (
    SELECT type, remaining_micro_credits AS remaining, expires_at FROM credit_batches
     WHERE account_id = p_account AND status = 'ACTIVE' AND (expires_at IS NULL OR expires_at > p_now)
  ), next_exp AS (
    SELECT MIN(expires_at) AS at FROM spendable WHERE expires_at IS NOT NULL
  )
  SELECT
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'FREE')::bigint,
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable WHERE type = 'PAID')::bigint,
    (SELECT COALESCE(SUM(GREATEST(amount_micro_credits - consumed_micro_credits, 0)), 0) FROM reservations
      WHERE account_id = p_account AND status = 'ACTIVE' AND expires_at > p_now)::bigint,
    (SELECT at FROM next_exp),
    (SELECT COALESCE(SUM(remaining), 0) FROM spendable, next_exp WHERE spendable.expires_at = next_exp.at)::bigint,
    -- Two index ranges on (account_id, created_at): before the start, and expiries at it.
    (SELECT CASE WHEN x.before IS NULL AND x.at_start IS NULL THEN NULL ELSE COALESCE(x.before, 0) + COALESCE(x.at_start, 0) END
       FROM (SELECT (SELECT SUM(amount_micro_credits) FROM ledger_entries
                      WHERE account_id = p_account AND created_at < p_period_start AND type NOT IN ('RESERVE', 'RELEASE')) AS before,
                    (SELECT SUM(amount_micro_credits) FROM ledger_entries
                      WHERE account_id = p_account AND created_at = p_period_start AND type = 'EXPIRE') AS at_start) x)::bigint,
    (SELECT COALESCE(SUM(amount_micro_credits), 0) FROM credit_grants
      WHERE account_id = p_account AND created_at >= p_period_start AND created_at <= p_now)::bigint
$$;

-- Hand-written: the billing period containing p_now, as src/ledger/billing-period.ts
-- monthlyPeriodAt computes it: calendar months from the anchor (UTC), clamped to the end of
-- shorter months; before the anchor, the first period. A test checks both agree.
CREATE FUNCTION "billing_period"(p_anchor timestamptz, p_now timestamptz)
RETURNS TABLE (period_start timestamptz, period_end timestamptz)
LANGUAGE sql STABLE AS $$
  WITH k AS (
    SELECT GREATEST(0, ((EXTRACT(YEAR FROM p_now AT TIME ZONE 'UTC') - EXTRACT(YEAR FROM p_anchor AT TIME ZONE 'UTC')) * 12
                     + EXTRACT(MONTH FROM p_now AT TIME ZONE 'UTC') - EXTRACT(MONTH FROM p_anchor AT TIME ZONE 'UTC'))::int) AS m
  ), adj AS (
    SELECT CASE
             WHEN p_now < p_anchor THEN 0
             WHEN ((p_anchor AT TIME ZONE 'UTC') + make_interval(months => m)) AT TIME ZONE 'UTC' > p_now THEN m - 1
             ELSE m
           END AS m
      FROM k
  )
  SELECT ((p_anchor AT TIME ZONE 'UTC') + make_interval(months => m)) AT TIME ZONE 'UTC',
         ((p_anchor AT TIME ZONE 'UTC') + make_interval(months => m + 1)) AT TIME ZONE 'UTC'
    FROM adj
$$;

-- Hand-written: everything that follows a committed change of an account's balance, called by
-- AccountTx.finish in the same statement as the balance update (so in the same transaction):
--   1. the outbox row `balance` with the snapshot at the new version (live credit bars);
--   2. credit alerts (only once the period has credit, periodCredits > 0: an account that never
--      had any is not "running low"): for each Settings.alert_thresholds t with percentRemaining <= t, one
--      CreditAlert per (account, billing period, t) (unique key), its outbox row `alert` and a
--      `job` row to deliver the signed webhook;
--   3. auto top-up: when enabled and available < threshold and fewer than max_per_period
--      top-ups were started this period, one PENDING top-up (partial unique index: single
--      flight) and a `job` row to charge it.
-- percentRemaining = floor(10000 * available / periodCredits) / 100, clamped to [0, 100], 0 when
-- periodCredits <= 0 (src/ledger/billing-period.ts percentRemaining).
CREATE FUNCTION "balance_changed"(p_account uuid, p_now timestamptz, p_version bigint, p_updated_at timestamptz, p_debt bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
  per record;
  f record;
  v_available bigint;
  v_period_credits bigint;
  v_bp bigint;
  v_thresholds int[];
  v_alert record;
  s record;
  v_started int;
  v_topup uuid;
BEGIN
  SELECT b.period_start, b.period_end INTO per
    FROM accounts a, billing_period(a.billing_anchor_at, p_now) b WHERE a.id = p_account;
  SELECT * INTO f FROM balance_figures(p_account, p_now, per.period_start);
  INSERT INTO outbox_events (account_id, topic, payload) VALUES (p_account, 'balance', jsonb_build_object(
    'accountId', p_account::text, 'version', p_version::text, 'updatedAt', p_updated_at, 'asOf', p_now,
    'periodStart', per.period_start, 'periodEnd', per.period_end,
    'free', f.free::text, 'paid', f.paid::text, 'reserved', f.reserved::text, 'debt', p_debt::text,
    'nextAt', f.next_at, 'nextAmount', f.next_amount::text,
    'totalAtStart', f.total_at_start::text, 'granted', f.granted::text,
    'planName', (SELECT pl.name FROM plan_subscriptions ps JOIN plans pl ON pl.id = ps.plan_id WHERE ps.account_id = p_account AND ps.active)));

  v_available := f.free + f.paid - p_debt - f.reserved;
  v_period_credits := GREATEST(COALESCE(f.total_at_start, 0), 0) + f.granted;
  v_bp := CASE WHEN v_period_credits <= 0 OR v_available <= 0 THEN 0
               WHEN v_available >= v_period_credits THEN 10000
               ELSE floor(v_available::numeric * 10000 / v_period_credits)::bigint END;

  SELECT alert_thresholds INTO v_thresholds FROM settings WHERE id = 1;
  FOR v_alert IN
    INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start, created_at)
    SELECT gen_random_uuid(), p_account, t, v_bp / 100.0, v_available, per.period_start, p_now
      FROM unnest(COALESCE(v_thresholds, '{}')) AS t
     WHERE v_period_credits > 0 AND v_bp <= t * 100
    ON CONFLICT (account_id, period_start, threshold) DO NOTHING
    RETURNING id, threshold
  LOOP
    INSERT INTO outbox_events (account_id, topic, payload) VALUES
      (p_account, 'alert', jsonb_build_object('accountId', p_account::text, 'alertId', v_alert.id::text)),
      (p_account, 'job', jsonb_build_object('name', 'deliver-webhook', 'jobId', 'webhook-credit_alert-' || v_alert.id::text,
         'data', jsonb_build_object('eventType', 'credit_alert.raised', 'eventId', v_alert.id::text, 'accountId', p_account::text)));
  END LOOP;

  SELECT * INTO s FROM auto_top_up_settings WHERE account_id = p_account AND enabled;
  IF FOUND AND v_available < s.threshold_micro_credits THEN
    SELECT count(*) INTO v_started FROM auto_top_ups
     WHERE account_id = p_account AND period_start = per.period_start AND status IN ('PENDING', 'SUCCEEDED');
    IF v_started < s.max_per_period THEN
      INSERT INTO auto_top_ups (id, account_id, period_start, status, created_at)
      VALUES (gen_random_uuid(), p_account, per.period_start, 'PENDING', p_now)
      ON CONFLICT (account_id) WHERE status = 'PENDING' DO NOTHING
      RETURNING id INTO v_topup;
      IF v_topup IS NOT NULL THEN
        INSERT INTO outbox_events (account_id, topic, payload) VALUES (p_account, 'job', jsonb_build_object(
          'name', 'auto-top-up', 'jobId', 'auto-top-up-' || v_topup::text,
          'data', jsonb_build_object('topUpId', v_topup::text, 'accountId', p_account::text)));
      END IF;
    END IF;
  END IF;
END
$$;
