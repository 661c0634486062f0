-- GET /metrics reports the failed (and canceled) refunds of the last 7 days (src/metrics/server-metrics.ts,
-- collector `payments`: creditpool_payments_refunds_failed, …_refunds_failed_not_applied,
-- creditpool_payments_refund_failed_micro_credits), by when each was received (received_at).
--
-- Why an index: payment_refund_failures keeps one row per failed refund for good; without it every
-- scrape of every instance would read the whole table to find the few of the window. With it the
-- scrape reads just those. The table is small (failed refunds are a small share of refunds), so
-- building the index (a SHARE lock on this table only: a refund failure being applied waits) is quick.
CREATE INDEX "payment_refund_failures_received_at" ON "payment_refund_failures"("received_at");
