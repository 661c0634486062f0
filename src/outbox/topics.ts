/**
 * The live topics and their Redis channel: one channel per account (`<prefix>account:<id>`), so
 * an instance subscribes only to accounts its own clients watch. Each message is JSON
 * `{ "topic": ..., "payload": ... }` with amounts as decimal strings.
 */
import type { BalanceSnapshot } from '../services/balance-figures.js';

/**
 * Payload of topic `usage`: a usage event was recorded. Written only by versions before the usage
 * stream took its wake-up from `balance` messages (every usage event changes the balance); kept
 * so that rows such a version left in the outbox still wake usageRecorded during an upgrade.
 */
export interface UsagePayload {
  accountId: string;
  usageEventId: string;
}

/** Payload of topic `alert`: a credit alert was recorded (src/services/credit-alerts.ts). */
export interface AlertPayload {
  accountId: string;
  alertId: string;
}

/** One live message as published on an account's channel. */
export type LiveMessage =
  | { topic: 'balance'; payload: BalanceSnapshot }
  | { topic: 'usage'; payload: UsagePayload }
  | { topic: 'alert'; payload: AlertPayload };

/** The Redis channel of one account's live messages. */
export function accountChannel(prefix: string, accountId: string): string {
  return `${prefix}account:${accountId}`;
}

/** Parses a channel name back to its account id, or null when it is not one of `prefix`. */
export function accountIdOfChannel(prefix: string, channel: string): string | null {
  const head = `${prefix}account:`;
  return channel.startsWith(head) ? channel.slice(head.length) : null;
}
