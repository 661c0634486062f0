-- Hand-written: where the outbox relay puts a `job` row whose job name it does not know.
--
-- Why: during a rolling upgrade two versions run at once, and a newer API can write a job (its
-- outbox row, topic `job`) that an older relay has no queue options for. The relay drains the
-- outbox in one transaction per batch, so that row failed the whole batch, every time: the live
-- balance updates, alerts and other jobs behind it waited until a relay that knew the name
-- drained it (test/integration/outbox.test.ts). Leaving it in outbox_events, skipped by the
-- relay's selection, would not do either: the selection walks the outbox in id order, so every
-- drain would read every skipped row again (measured: 10,000 of them made a 500-row selection
-- take 2 ms instead of 0.1 ms), for as long as no relay that knows the name runs.
--
-- So the relay moves such a row here, in the transaction that takes its batch, keeping its outbox
-- id; a relay that knows the name takes it back, in the round trip that takes its own batch, and
-- enqueues it. Rows are looked up by name only.
-- CreateTable
CREATE TABLE "outbox_unknown_jobs" (
    "id" BIGINT NOT NULL,
    "account_id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL,
    "parked_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "outbox_unknown_jobs_pkey" PRIMARY KEY ("id")
);

-- CreateIndex
CREATE INDEX "outbox_unknown_jobs_name_idx" ON "outbox_unknown_jobs"("name");
