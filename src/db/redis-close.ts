/**
 * Closing Redis connections at shutdown without waiting for a Redis that is gone.
 *
 * ioredis queues commands while it is disconnected (the offline queue) and, with
 * `maxRetriesPerRequest: null` (BullMQ's connections, the live hub's subscriber), keeps them until
 * Redis comes back: a `quit()` sent then is queued behind them and settles only when Redis
 * returns, so a process stopped with SIGTERM during a Redis outage never exited (it waited for
 * the orchestrator's SIGKILL). Here QUIT is sent only to a connection that is up, and waited for
 * a bounded time; otherwise the connection is dropped (`disconnect()`: what Redis has not
 * answered is lost, which is what the outage already meant; the outbox rows stay in PostgreSQL).
 */
import type { Redis } from 'ioredis';

/** How long a QUIT to a connected Redis may take before the connection is dropped, in milliseconds. */
export const REDIS_QUIT_WAIT_MS = 2_000;

/**
 * Resolves or rejects as `work` does, or rejects with an Error saying `what` did not answer once
 * `waitMs` milliseconds have passed (`work` keeps running; its outcome is then ignored, and a
 * rejection after the deadline is not left unhandled). Used so nothing waits on a Redis that is
 * down or silent (the outbox relay's drain, shutdown).
 * @throws Error `<what> did not answer within <waitMs> ms`, or what `work` rejects with.
 */
export function answerWithin<T>(work: Promise<T>, waitMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not answer within ${waitMs} ms`)), waitMs);
  });
  work.catch(() => undefined);
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/**
 * Waits for `work` to settle, at most `waitMs` milliseconds ({@link answerWithin}). `work` keeps
 * running after a timeout; its rejection is ignored here (the caller keeps its own handle).
 * @returns true when it settled (fulfilled or rejected) in time, false after `waitMs`.
 */
export function settlesWithin(work: Promise<unknown>, waitMs: number): Promise<boolean> {
  return answerWithin(work.then(() => true, () => true), waitMs, 'work').catch(() => false);
}

/**
 * Closes `client` for shutdown: QUIT when it is connected (`status` ready), waiting at most
 * `waitMs` for Redis's answer; then, or at once when it is not connected (Redis unreachable,
 * reconnecting, never connected), `disconnect()`, which stops reconnecting and rejects what is
 * queued. Never throws; resolves within about `waitMs`.
 */
export async function closeRedis(client: Redis, waitMs = REDIS_QUIT_WAIT_MS): Promise<void> {
  if (client.status === 'end') return;
  if (client.status === 'ready') await settlesWithin(client.quit(), waitMs);
  if ((client.status as string) !== 'end') client.disconnect();
}
