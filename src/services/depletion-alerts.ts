/**
 * The depletion notice (the 0 % credit alert, webhook `credit_alert.raised` with `depleted: true`)
 * for work refused for lack of credit (README "Alerts at 25 %, 15 % and 0 %").
 *
 * `balances_changed` raises the 0 % alert when percentRemaining as shown (rounded down to
 * hundredths) reaches 0 in a transaction that changes the balance. A charge without a hold never
 * overdraws: it is refused with INSUFFICIENT_CREDITS instead, and a refusal changes nothing. So an
 * account left with, say, 0.5 % of its period's credit, whose every new charge costs more than
 * that, had its work refused and never got the notice. Here the first such refusal of a billing
 * period records that period's 0 % alert, after the refusal was decided, in a short transaction
 * of its own (the refused charge or hold still writes nothing): the same table, unique key
 * (account, period start, threshold) and outbox rows (`alert`, then the `deliver-webhook` job)
 * as balances_changed, with percentRemaining and available as they are then. Only when 0 is one
 * of Settings.alertThresholds, the period has had credit (periodCredits > 0, as balances_changed
 * requires), available credit still does not cover what was refused (a grant that landed
 * meanwhile answers the refusal better than a notice would), and what was refused is at most
 * {@link DEPLETION_NOTICE_MAX_REFUSED_PERCENT} % of the period's credit: a request bigger than
 * that (60 % left and a request for 61 %) is no sign the pool ran out, and the period has one
 * depletion notice to give.
 *
 * A flood of refusals (an agent retrying thousands of times a second) must not become a flood of
 * writes or of lock waits on the account: each process remembers, per (account, period), that
 * the alert is recorded, or the balance version at which nothing was due, and skips refusals it
 * already answered (DepletionAlerts, bounded). Refusals in several processes at once race to one
 * alert through the unique key. Whether 0 is a threshold is not part of what is remembered: a
 * settings save moves no balance version (the thresholds are platform-wide), so it is read from
 * the process's cached settings at each refusal; 0 added mid-period gives a refused account its
 * notice at its next refusal (within the settings cache's ttl in other processes).
 */
import { withTransaction } from '../db/pg.js';
import type { LedgerError } from '../ledger/errors.js';
import { insufficientCredits } from '../ledger/refusals.js';
import type { AccountTx } from './account-tx.js';
import { BoundedMap } from '../util/bounded-map.js';
import type { ServiceContext } from './context.js';
import { recordCreditAlert } from './credit-alerts.js';
import { readBalance } from './read-balance.js';
import { RefusalTopUps } from './refusal-top-ups.js';
import { webhookJob } from './webhooks.js';
// A cycle (plans.ts grants through grant-credits.ts, which imports plans.ts): used only when a check runs, never at module evaluation.
import { lockAfterDueRoll } from './plans.js';

/** Where an INSUFFICIENT_CREDITS refusal was decided (micro-credits). */
export interface CreditRefusal {
  accountId: string;
  /** Start of the billing period of the refusing transaction's now (AccountTx.period). */
  periodStart: Date;
  /** The refused cost, or the refused hold's amount. */
  neededMicroCredits: bigint;
  /** The available credit the refusal was decided against. */
  availableMicroCredits: bigint;
  /** The account's balance version the refusal was decided at (AccountTx.versionBefore). */
  version: bigint;
}

/** Refusals built by {@link creditRefusal}, by error object: what the alert needs to know of them, not shown to clients (LedgerError.details is). */
const refusals = new WeakMap<object, CreditRefusal>();

/**
 * The INSUFFICIENT_CREDITS refusal (ledger/refusals.ts insufficientCredits: same code, message and
 * extensions) of `neededMicroCredits` against `availableMicroCredits` on the locked account
 * `atx`, marked as a refusal for lack of credit so that the service answering it raises the
 * depletion notice and starts auto top-up ({@link afterCreditRefusals}). Every path that refuses for lack of credit
 * builds its refusal here (record-usage.ts applyCharge and chargeAccounts, reserve-credits.ts).
 */
export function creditRefusal(atx: AccountTx, what: 'cost' | 'hold', neededMicroCredits: bigint, availableMicroCredits: bigint): LedgerError {
  const error = insufficientCredits(what, neededMicroCredits, availableMicroCredits);
  refusals.set(error, { accountId: atx.accountId, periodStart: atx.period().start, neededMicroCredits, availableMicroCredits, version: atx.versionBefore });
  return error;
}

/** The CreditRefusal `error` was built with ({@link creditRefusal}), or undefined for any other error. */
export function creditRefusalOf(error: unknown): CreditRefusal | undefined {
  return typeof error === 'object' && error !== null ? refusals.get(error) : undefined;
}

/** The (account, billing period) a refusal belongs to, as a map key: one notice per such pair. */
function refusalKey(refusal: CreditRefusal): string {
  return `${refusal.accountId}/${refusal.periodStart.getTime()}`;
}

/**
 * A refusal raises the depletion notice only when what it refused is at most this share of the
 * period's credit (periodCredits), in percent. A project rule, not a contract one: small enough
 * that one oversized request does not spend the period's notice, large enough that a small pool
 * (a 100-credit welcome bonus) whose LLM calls cost a few credits each still gets it.
 */
export const DEPLETION_NOTICE_MAX_REFUSED_PERCENT = 5n;

/** Default bound of a DepletionAlerts: (account, period) pairs remembered, about 10 MB at most. */
export const DEFAULT_DEPLETION_ALERTS_CAPACITY = 50_000;

/**
 * What a process knows of one (account, period): its alert is recorded; nothing was due at a
 * balance version for refusals of `neededAtLeast` or more (a smaller one may still be due: see
 * DEPLETION_NOTICE_MAX_REFUSED_PERCENT); or a check is running.
 */
type Known = { raised: true } | { nothingAtVersion: bigint; neededAtLeast: bigint } | { pending: Promise<void> };

/**
 * Per process (ServiceContext.depletionAlerts): the (account, billing period) pairs whose depletion
 * notice this process has seen recorded, or for which nothing was due at a balance version, so
 * that the refusals after the first cost no statement. A bounded map: when full, remembering one
 * more forgets the oldest entry (a forgotten pair costs one more check, never a second alert:
 * the unique key keeps one).
 */
export class DepletionAlerts {
  private readonly known: BoundedMap<string, Known>;

  /** @param capacity most (account, period) pairs kept (>= 1). */
  constructor(capacity: number = DEFAULT_DEPLETION_ALERTS_CAPACITY) {
    this.known = new BoundedMap(capacity);
  }

  /**
   * Raises the depletion notice for `refusal` unless this process knows it is recorded, 0 is not
   * one of the alert thresholds in the settings it holds (`ctx.pricing.settings()`: at most its
   * ttl old, 1 s in src/main.ts, and re-read at once after a save in this process), knows nothing
   * was due at the refusal's balance version (or later) while 0 was a threshold, or is already
   * checking (then it waits for that check). Never rejects: a failure is logged (`ctx.log`) and
   * forgotten, so a later refusal tries again.
   */
  answer(ctx: ServiceContext, refusal: CreditRefusal): Promise<void> {
    const key = refusalKey(refusal);
    const known = this.known.get(key);
    if (known) {
      if ('raised' in known) return Promise.resolve();
      if ('pending' in known) return known.pending;
    }
    // Whether 0 is a threshold comes from the settings the process holds (ctx.pricing: reused for
    // at most its ttl, dropped by a save in this process), never from what this map remembers:
    // a settings save moves no balance version, so a verdict remembered "at a version" while 0
    // was no threshold stayed in force after 0 was added, and an account whose refusals change
    // nothing never got its notice from this process.
    const checked = ctx.pricing.settings().then(
      (settings) => {
        if (!settings.alertThresholds.includes(0)) return;
        const now = this.known.get(key); // another refusal may have started a check meanwhile
        if (now) {
          if ('raised' in now) return;
          if ('pending' in now) return now.pending;
          if (refusal.version <= now.nothingAtVersion && refusal.neededMicroCredits >= now.neededAtLeast) return;
        }
        return this.check(ctx, refusal, key);
      },
      (err: unknown) => {
        ctx.log?.warn({ err: (err as Error).message, accountId: refusal.accountId }, 'could not read the alert thresholds for the depletion notice of a refused charge');
      },
    );
    return checked;
  }

  /** Runs {@link raiseDepletionAlert} for `refusal` and remembers its outcome under `key`. */
  private check(ctx: ServiceContext, refusal: CreditRefusal, key: string): Promise<void> {
    const pending = raiseDepletionAlert(ctx, refusal).then(
      (outcome) => {
        // Not armed in the database (0 removed, this process's settings not yet re-read): nothing
        // to remember, the next refusal asks again once the settings say so.
        if (!outcome.armed) this.known.delete(key);
        else this.known.set(key, outcome.raised ? { raised: true } : { nothingAtVersion: outcome.version, neededAtLeast: refusal.neededMicroCredits });
      },
      (err: unknown) => {
        this.known.delete(key);
        ctx.log?.warn({ err: (err as Error).message, accountId: refusal.accountId }, 'could not record the depletion notice (0 % credit alert) of a refused charge');
      },
    );
    this.known.set(key, { pending });
    return pending;
  }

  /** Entries kept now. */
  get size(): number {
    return this.known.size;
  }
}

/**
 * Called by the services that answer charges and holds (recordUsage, recordUsageBatch,
 * reserveCredits) with the errors they are about to answer, after the refusing transaction
 * ended: for the refusals for lack of credit ({@link creditRefusal}), raises the period's
 * depletion notice through `ctx.depletionAlerts` (one per account and period, checked for the
 * smallest refusal of that account and period: a recordUsageBatch whose first refused item is
 * over DEPLETION_NOTICE_MAX_REFUSED_PERCENT and a later one is not raises it; without one: a
 * check per call, still one alert), and starts the account's auto top-up when it is due through
 * `ctx.refusalTopUps` (refusal-top-ups.ts; per account, for its smallest refusal, the likeliest
 * the pack covers; without one: a check per call, still one top-up). Both at once, each in a
 * transaction of its own when one is needed. Resolves once that is done; never rejects (the
 * refusal is the answer). Other errors (BUDGET_EXCEEDED of an agent budget, bad input, ...) are
 * ignored.
 */
export function afterCreditRefusals(ctx: ServiceContext, errors: Iterable<unknown>): Promise<void> | undefined {
  let found: Map<string, CreditRefusal> | undefined;
  let smallest: Map<string, CreditRefusal> | undefined;
  for (const error of errors) {
    const refusal = creditRefusalOf(error);
    if (!refusal) continue;
    found ??= new Map();
    smallest ??= new Map();
    // Per (account, period) the smallest refusal: the likeliest to be within
    // DEPLETION_NOTICE_MAX_REFUSED_PERCENT. A batch refusing a big item and then a small one
    // (once the big one was refused, its first refusal) raised nothing, where those two calls
    // one by one raise the notice on the small one.
    const key = refusalKey(refusal);
    const kept = found.get(key);
    if (!kept || refusal.neededMicroCredits < kept.neededMicroCredits) found.set(key, refusal);
    const least = smallest.get(refusal.accountId);
    if (!least || refusal.neededMicroCredits < least.neededMicroCredits) smallest.set(refusal.accountId, refusal);
  }
  if (!found || !smallest) return undefined;
  const alerts = ctx.depletionAlerts ?? new DepletionAlerts();
  const topUps = ctx.refusalTopUps ?? new RefusalTopUps();
  return Promise.all([...[...found.values()].map((r) => alerts.answer(ctx, r)), ...[...smallest.values()].map((r) => topUps.answer(ctx, r))]).then(() => undefined);
}

/**
 * One check, in a transaction of its own: when 0 is an alert threshold and the period's 0 % alert
 * is not recorded, locks the account (outbox ids are taken under its lock: src/outbox/relay.ts),
 * runs a plan roll that is due (plans.ts lockAfterDueRoll: the refused work's roll was rolled
 * back with it, and the period's credit without its grant missed the on-time notice), reads its balance (readBalance, at the account's now) and, when that is still the refusal's
 * period, the period has had credit, available credit is below what was refused and what was
 * refused is at most DEPLETION_NOTICE_MAX_REFUSED_PERCENT % of the period's credit, records the
 * alert (recordCreditAlert; ON CONFLICT DO NOTHING) with its `deliver-webhook` job.
 * @returns `raised`: the period's 0 % alert is recorded (now or before); `armed`: 0 is one of the
 *   thresholds in the database (when false nothing was checked); `version`: the balance version
 *   the check saw (the refusal's when it did not lock).
 * @throws the database's errors.
 */
async function raiseDepletionAlert(ctx: ServiceContext, refusal: CreditRefusal): Promise<{ raised: boolean; armed: boolean; version: bigint }> {
  return withTransaction(ctx.pool, async (tx) => {
    const { rows } = await tx.query(
      `SELECT 0 = ANY(s.alert_thresholds) AS armed,
              EXISTS (SELECT 1 FROM credit_alerts c WHERE c.account_id = $1 AND c.period_start = $2 AND c.threshold = 0) AS raised
         FROM settings s WHERE s.id = 1`,
      [refusal.accountId, refusal.periodStart],
    );
    if (rows[0]?.raised === true) return { raised: true, armed: true, version: refusal.version };
    if (rows[0]?.armed !== true) return { raised: false, armed: false, version: refusal.version };
    const wallNow = ctx.clock();
    // A due plan roll first (the refused work's was rolled back with it), so the period's credit
    // and available credit are those after the roll, as on time (plans.ts lockAfterDueRoll).
    const atx = await lockAfterDueRoll(tx, refusal.accountId, wallNow);
    const balance = await readBalance(tx, refusal.accountId, wallNow);
    const due =
      balance.periodStart.getTime() === refusal.periodStart.getTime() &&
      balance.periodMicroCredits > 0n &&
      balance.availableMicroCredits < refusal.neededMicroCredits &&
      refusal.neededMicroCredits * 100n <= balance.periodMicroCredits * DEPLETION_NOTICE_MAX_REFUSED_PERCENT;
    if (!due) return { raised: false, armed: true, version: atx.versionBefore };
    const alertId = await recordCreditAlert(atx, {
      threshold: 0,
      percentRemaining: balance.percentRemaining,
      availableMicroCredits: balance.availableMicroCredits,
      periodStart: refusal.periodStart,
    });
    if (alertId) atx.publish('job', webhookJob({ eventType: 'credit_alert.raised', eventId: alertId, accountId: refusal.accountId }));
    await atx.finish(); // no balance change: writes only the outbox rows, if any
    return { raised: true, armed: true, version: atx.versionBefore };
  });
}
