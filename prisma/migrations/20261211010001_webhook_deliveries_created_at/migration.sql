-- GET /metrics counts the webhook events whose delivery attempts of the last days all failed
-- (src/metrics/server-metrics.ts): through this index it reads those days' attempts, not the
-- whole delivery log, which only grows (one row per attempt, never deleted).
-- CreateIndex
CREATE INDEX "webhook_deliveries_created_at_idx" ON "webhook_deliveries"("created_at");
