/**
 * atInstant (src/live/at-instant.ts): a timer for an instant beyond Node's longest timer delay
 * (2^31-1 ms). Live connections of a 30-day end-user token close at its exp with it; a plain
 * setTimeout of that delay would fire after 1 ms and close them at once. Fake timers stand in
 * for the clock (vi.useFakeTimers also fakes Date.now).
 */
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MAX_TIMER_DELAY_MS, atInstant } from '../../src/live/at-instant.js';

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(new Date('2026-01-01T00:00:00Z'));
});
afterEach(() => {
  vi.useRealTimers();
});

describe('atInstant', () => {
  it('fires once at an instant 30 days ahead (beyond one timer), not before', () => {
    const fn = vi.fn();
    atInstant(new Date(Date.now() + 30 * 86_400_000), fn);
    vi.advanceTimersByTime(MAX_TIMER_DELAY_MS); // the first step
    expect(fn).not.toHaveBeenCalled();
    vi.advanceTimersByTime(30 * 86_400_000 - MAX_TIMER_DELAY_MS - 1);
    expect(fn).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(fn).toHaveBeenCalledTimes(1);
    vi.advanceTimersByTime(60 * 86_400_000);
    expect(fn).toHaveBeenCalledTimes(1);
  });

  it('fires at once for an instant that has passed, and never once cancelled', () => {
    const past = vi.fn();
    atInstant(new Date(Date.now() - 1), past);
    expect(past).toHaveBeenCalledTimes(1);
    const cancelled = vi.fn();
    const timer = atInstant(new Date(Date.now() + 30 * 86_400_000), cancelled);
    vi.advanceTimersByTime(MAX_TIMER_DELAY_MS + 5);
    timer.cancel();
    vi.advanceTimersByTime(60 * 86_400_000);
    expect(cancelled).not.toHaveBeenCalled();
  });
});
