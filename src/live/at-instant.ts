/**
 * A timer for an instant that may lie further ahead than Node's timers reach: Node runs a
 * `setTimeout` of more than 2^31-1 ms (about 24.8 days) after 1 ms instead, with a
 * TimeoutOverflowWarning (https://nodejs.org/api/timers.html#settimeoutcallback-delay-args).
 * Live connections end at their end-user token's `exp` with it (src/server.ts,
 * src/graphql/subscriptions.ts).
 */

/** Node's longest timer delay, in ms. */
export const MAX_TIMER_DELAY_MS = 2 ** 31 - 1;

/** A pending {@link atInstant} call; `cancel()` stops it (no effect once it ran). */
export interface InstantTimer {
  cancel(): void;
}

/**
 * Calls `fn` once, at `at` (a Date; at once when it has passed), however far ahead: a delay
 * beyond MAX_TIMER_DELAY_MS is waited out in steps of at most that. `now` (ms since the epoch)
 * is the clock it measures with (default Date.now).
 * @returns a handle whose cancel() stops it. Does not keep the process alive (timers are unref'd).
 */
export function atInstant(at: Date, fn: () => void, now: () => number = Date.now): InstantTimer {
  let timer: NodeJS.Timeout | undefined;
  let cancelled = false;
  const arm = (): void => {
    if (cancelled) return;
    const left = at.getTime() - now();
    if (left <= 0) {
      fn();
      return;
    }
    timer = setTimeout(arm, Math.min(left, MAX_TIMER_DELAY_MS));
    timer.unref?.();
  };
  arm();
  return {
    cancel() {
      cancelled = true;
      if (timer) clearTimeout(timer);
    },
  };
}
