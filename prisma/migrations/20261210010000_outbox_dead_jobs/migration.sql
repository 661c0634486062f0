-- Hand-written: where the outbox relay puts a `job` row of a known job name whose payload it
-- cannot enqueue (a dead letter).
--
-- Why: such a row (a jobId that is not a string, is an integer or has a ":", a runAt that is not a
-- date, data that is not an object, no jobId: written by a bug or by hand) made BullMQ refuse the
-- relay's whole batch, and the relay drains the outbox in one transaction per batch, in id order:
-- that batch failed at every drain, so every live balance update, alert and job of every account
-- behind it waited forever (test/integration/outbox.test.ts). It is the row's own fault, so no
-- relay of any version will ever enqueue it; outbox_unknown_jobs (which relays that know the name
-- take back) would loop on it.
--
-- So the relay moves such a row here, in the transaction that takes its batch, keeping its outbox
-- id, its payload exactly as written and why it could not be enqueued. Relays never read this
-- table: an operator inspects it, and re-queues a corrected row by moving it back into
-- outbox_events, or deletes it if its work is not wanted (README "Workers").
-- CreateTable
CREATE TABLE "outbox_dead_jobs" (
    "id" BIGINT NOT NULL,
    "account_id" UUID NOT NULL,
    "name" TEXT NOT NULL,
    "payload" JSONB NOT NULL,
    "reason" TEXT NOT NULL,
    "created_at" TIMESTAMPTZ(3) NOT NULL,
    "parked_at" TIMESTAMPTZ(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,

    CONSTRAINT "outbox_dead_jobs_pkey" PRIMARY KEY ("id")
);
