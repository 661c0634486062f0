-- The delivery log's retention (src/services/webhook-retention.ts): the prune-webhook-log job
-- deletes the attempts of events raised and last attempted before now - WEBHOOK_LOG_RETENTION_DAYS,
-- and records here the latest such bound it applied (one row, id = true). An event older than it
-- without a logged attempt may have been delivered: redelivery refuses it, and a delivery job made
-- before it sends nothing.
-- CreateTable
CREATE TABLE "webhook_log_retention" (
    "id" BOOLEAN NOT NULL DEFAULT true,
    "pruned_before" TIMESTAMPTZ(3) NOT NULL,

    CONSTRAINT "webhook_log_retention_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "webhook_log_retention_one_row" CHECK ("id")
);
