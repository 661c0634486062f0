-- A delivery attempt is logged before its POST, as SENDING, and completed after it
-- (DELIVERED or FAILED) in its own short statement, so no connection is held while the receiver
-- answers (src/services/webhooks.ts deliverWebhook). At most one attempt of an event is in flight:
-- the partial unique index is the claim (a second run finds it and backs off).
ALTER TABLE "webhook_deliveries" DROP CONSTRAINT "webhook_deliveries_status";
ALTER TABLE "webhook_deliveries" ADD CONSTRAINT "webhook_deliveries_status" CHECK ("status" IN ('SENDING', 'DELIVERED', 'FAILED'));
CREATE UNIQUE INDEX "webhook_deliveries_one_sending" ON "webhook_deliveries" ("event_type", "event_id") WHERE "status" = 'SENDING';
