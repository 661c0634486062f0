/**
 * `quote` with a reservationId reads the account's balance and the hold in ONE snapshot
 * (src/services/quote-usage.ts): a capture, settle or release committing while it reads cannot
 * give an answer that matches no single moment.
 *
 * The race is made deterministic without sleeps: quoteUsage runs on a pool whose statements are
 * gated by their text. A statement that reads the balance (`balance_figures`) but not the hold
 * waits until the release below has committed; a statement that reads the hold (`reservations`)
 * runs at once, and the release commits as soon as it has finished. When quote read the two in
 * separate statements (each its own snapshot, from the pool), it saw the hold before the release
 * and the balance after it, counting the released credit twice. Read in one statement, the
 * release commits after quote's only read, and the answer is the one of the moment before it.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { reserveCredits } from '../../src/services/reserve-credits.js';
import { releaseReservation } from '../../src/services/release-reservation.js';
import { quoteUsage } from '../../src/services/quote-usage.js';
import { credits } from '../../src/ledger/credits.js';
import type { ServiceContext } from '../../src/services/context.js';

let s: TestServices;

beforeAll(() => {
  s = createTestServices(4);
});

afterAll(async () => {
  await s.close();
});

/** The text of a pg query call's first argument (a string or a QueryConfig). */
const textOf = (q: unknown): string => (typeof q === 'string' ? q : ((q as { text?: string })?.text ?? ''));

describe('quote with a reservationId', () => {
  it('answers as of one moment when the hold is released while it reads (never counting the released credit twice)', async () => {
    // 10 credits, 6 held: available 4. A capture of 12 would draw the hold's 6 and the 4 available
    // and leave 2 of debt: not covered. After the release the hold no longer holds: a capture
    // against it is refused, also not covered. No moment covers 12.
    const accountId = await createFundedAccount(s, { paid: 10 });
    const hold = await reserveCredits(s, { accountId, amountMicroCredits: credits(6), ttlSeconds: 3_600, idempotencyKey: 'hold' });
    const input = { accountId, idempotencyKey: 'q', category: 'units', quantities: { units: '12' }, reservationId: hold.reservationId };
    // Control, before anything races: the same figures outside the race.
    expect((await quoteUsage(s, input)).affordable).toBe(false);

    let released!: () => void;
    const releaseCommitted = new Promise<void>((resolve) => (released = resolve));
    const statements: string[] = [];
    let releaseStarted = false;
    const releaseOnce = async () => {
      if (releaseStarted) return;
      releaseStarted = true;
      await releaseReservation(s, hold.reservationId);
      released();
    };
    /** Runs one of quote's statements under the gate (module comment). */
    const gated = async <T>(text: string, run: () => Promise<T>): Promise<T> => {
      statements.push(text);
      const readsHold = /\breservations\b/.test(text);
      if (/balance_figures/.test(text) && !readsHold) await releaseCommitted;
      const result = await run();
      if (readsHold) await releaseOnce();
      return result;
    };
    const wrapClient = (client: pg.PoolClient): pg.PoolClient =>
      new Proxy(client, {
        get(target, prop, receiver) {
          if (prop === 'query') return (q: unknown, ...rest: unknown[]) => gated(textOf(q), () => (target.query as (...a: unknown[]) => Promise<unknown>)(q, ...rest));
          const v = Reflect.get(target, prop, receiver);
          return typeof v === 'function' ? v.bind(target) : v;
        },
      });
    const pool = new Proxy(s.pool, {
      get(target, prop, receiver) {
        if (prop === 'query') return (q: unknown, ...rest: unknown[]) => gated(textOf(q), () => (target.query as (...a: unknown[]) => Promise<unknown>)(q, ...rest));
        if (prop === 'connect') return async () => wrapClient(await target.connect());
        const v = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const ctx: ServiceContext = { ...s, pool };

    const raced = await quoteUsage(ctx, input);
    expect(releaseStarted, 'quote read the hold (the gate opened)').toBe(true);
    await releaseCommitted;
    expect(raced.affordable, `quote's statements: ${statements.map((t) => t.replace(/\s+/g, ' ').slice(0, 80)).join(' | ')}`).toBe(false);
    // After the release: the hold no longer holds.
    expect((await quoteUsage(s, input)).affordable).toBe(false);
  });
});
