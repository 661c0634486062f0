/**
 * Credit alerts (contract type CreditAlert): percentRemaining reached a threshold of
 * Settings.alertThresholds (25, 15, 0 by default). Recorded at most once per threshold per
 * billing period (unique key credit_alerts(account_id, period_start, threshold)) and published
 * through the outbox to the creditAlerts subscription in the same transaction.
 *
 * Thresholds crossed by balance changes are recorded by the SQL function `balances_changed`
 * (migration 20261122010154_billing_cycles_top_ups), in the changing transaction itself. This
 * module records one alert given explicitly (same table, same unique key, same outbox row), for
 * callers that decide the threshold themselves: depletion-alerts.ts (the 0 % alert of a refusal
 * for lack of credit, which adds the `deliver-webhook` job) and the live-update tests.
 */
import type { AccountTx } from './account-tx.js';

/** One alert to record (amounts in micro-credits). */
export interface CreditAlertInput {
  threshold: number;
  percentRemaining: number;
  availableMicroCredits: bigint;
  periodStart: Date;
}

/**
 * Records the alert unless one for the same threshold and billing period exists, and queues its
 * outbox row (topic `alert`) on `atx` (written by `atx.finish()`). Call inside the account's
 * locked transaction.
 * @returns the new alert's id, or null when it was already recorded this period.
 * @throws the database error when a CHECK fails (threshold outside 0..100, percent outside 0..100).
 */
export async function recordCreditAlert(atx: AccountTx, alert: CreditAlertInput): Promise<string | null> {
  const { rows } = await atx.tx.query(
    `INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start, created_at)
     VALUES (gen_random_uuid(), $1, $2, $3, $4, $5, $6)
     ON CONFLICT (account_id, period_start, threshold) DO NOTHING
     RETURNING id`,
    [atx.accountId, alert.threshold, alert.percentRemaining, alert.availableMicroCredits.toString(), alert.periodStart, atx.now],
  );
  const id = (rows[0]?.id as string | undefined) ?? null;
  if (id) atx.publish('alert', { accountId: atx.accountId, alertId: id });
  return id;
}
