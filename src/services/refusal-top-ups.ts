/**
 * Auto top-up started by a refusal for lack of credit (README "Auto top-up").
 *
 * `balances_changed` starts a top-up when a balance change makes `available` fall below the
 * threshold. A charge without a hold never overdraws: one that costs more than `available` is
 * refused with INSUFFICIENT_CREDITS and writes nothing, so no balance change crosses anything.
 * An account with auto top-up on, threshold 10 credits and 15 available, whose agent asks for a
 * 20-credit call, was refused for ever. Here, after such a refusal (a charge, an item of
 * recordUsageBatch or a hold; depletion-alerts.ts afterCreditRefusals), in a short transaction of
 * its own (the refused work still writes nothing and is answered INSUFFICIENT_CREDITS; the
 * caller retries once the top-up landed), one top-up starts: the same PENDING `auto_top_ups` row
 * and outbox `job` row (`auto-top-up-<id>`) as balances_changed records, under the account's
 * lock, with the same rules: auto top-up enabled (not off, not paused), fewer than maxPerPeriod
 * top-ups PENDING or SUCCEEDED in the billing period, none PENDING (the partial unique index
 * `auto_top_ups_one_pending` keeps one per account: a crossing and refusals, or many refusals,
 * start one). Plus rules of its own: a payment method is attached (else its job would only
 * record SKIPPED rows); and only when the pack lets the refused work through
 * (available + the pack's credits and bonus >= what was refused, available as it is then);
 * otherwise the card would be charged for credit that still cannot pay for the call. And not when
 * available credit covers the refusal by then (a grant landed meanwhile: the retry succeeds; so
 * one refusal is never charged twice). The row keeps what was refused
 * (`refused_micro_credits`), so its job (auto-top-up.ts) does not skip it for being above the
 * threshold while available credit does not cover that.
 *
 * A flood of refusals (an agent retrying thousands of times a second) must not cost a statement
 * each: like DepletionAlerts, each process remembers per account the balance version at which
 * nothing (more) was to start, and skips refusals decided at or before it (RefusalTopUps,
 * bounded). Settings live outside the balance, so a saved setting does not change the version:
 * setAutoTopUp forgets the account in its own process, and what a process remembers is checked
 * again after {@link REFUSAL_TOP_UP_RECHECK_MS} (another process's setAutoTopUp, a top-up that
 * ended without a grant).
 */
import type pg from 'pg';
import { withTransaction } from '../db/pg.js';
import { BoundedMap } from '../util/bounded-map.js';
import type { ServiceContext } from './context.js';
import type { CreditRefusal } from './depletion-alerts.js';
import { readBalance } from './read-balance.js';
// A cycle (plans.ts grants through grant-credits.ts, which imports plans.ts): used only when a check runs, never at module evaluation.
import { lockAfterDueRoll } from './plans.js';

/**
 * How long a process trusts that nothing was to start for an account at a balance version
 * (milliseconds): a flood of refusals then costs one statement per account this often. A project
 * rule: short enough that enabling or resuming auto top-up in another process, or raising its
 * cap, reaches a refused agent within seconds; long enough that a flood costs next to nothing.
 */
export const REFUSAL_TOP_UP_RECHECK_MS = 5_000;

/** Default bound of a RefusalTopUps: accounts remembered. */
export const DEFAULT_REFUSAL_TOP_UPS_CAPACITY = 50_000;

/** What one check found: `started` a top-up (id), or not; at which balance version, for refusals of at least what. */
interface CheckOutcome {
  topUpId: string | null;
  /** Refusals decided at or before this version need no check (nothing more to start). */
  version: bigint;
  /** ... when they refused at least this much (a smaller one may be covered by the pack). */
  neededAtLeast: bigint;
}

/**
 * What a process knows of one account: nothing (more) was to start for refusals of `neededAtLeast`
 * or more decided at or before `version` in the billing period `periodStartMs`, as checked at
 * `checkedAtMs` (monotonic); or a check is running.
 */
type Known = { version: bigint; neededAtLeast: bigint; periodStartMs: number; checkedAtMs: number } | { pending: Promise<void> };

/**
 * Per process (ServiceContext.refusalTopUps): the accounts whose refusals this process checked
 * for a top-up to start, so that a flood of refusals costs no statement. A bounded map: when full,
 * remembering one more forgets the oldest (a forgotten account costs one more check, never a
 * second top-up: the partial unique index keeps one PENDING).
 */
export class RefusalTopUps {
  private readonly known: BoundedMap<string, Known>;

  /**
   * @param capacity most accounts kept (>= 1).
   * @param monotonicMs a monotonic clock in milliseconds (tests pass their own), for
   *   REFUSAL_TOP_UP_RECHECK_MS.
   */
  constructor(
    capacity: number = DEFAULT_REFUSAL_TOP_UPS_CAPACITY,
    private readonly monotonicMs: () => number = () => performance.now(),
  ) {
    this.known = new BoundedMap(capacity);
  }

  /**
   * Starts the top-up `refusal` calls for ({@link startRefusalTopUp}) unless this process knows,
   * from a check less than REFUSAL_TOP_UP_RECHECK_MS ago, that nothing is to start at the
   * refusal's balance version, or is already checking the account (then it waits for that check).
   * Never rejects: a failure is logged (`ctx.log`) and forgotten, so a later refusal tries again.
   */
  answer(ctx: ServiceContext, refusal: CreditRefusal): Promise<void> {
    const key = refusal.accountId;
    const known = this.known.get(key);
    if (known) {
      if ('pending' in known) return known.pending;
      const fresh = this.monotonicMs() - known.checkedAtMs < REFUSAL_TOP_UP_RECHECK_MS;
      if (
        fresh &&
        known.periodStartMs === refusal.periodStart.getTime() &&
        refusal.version <= known.version &&
        refusal.neededMicroCredits >= known.neededAtLeast
      ) {
        return Promise.resolve();
      }
    }
    const checkedAtMs = this.monotonicMs();
    const entry: { pending: Promise<void> } = {
      pending: startRefusalTopUp(ctx, refusal).then(
        (outcome) => {
          // Not when setAutoTopUp made this process forget the account meanwhile.
          if (this.known.get(key) !== entry) return;
          this.known.set(key, { version: outcome.version, neededAtLeast: outcome.neededAtLeast, periodStartMs: refusal.periodStart.getTime(), checkedAtMs });
        },
        (err: unknown) => {
          if (this.known.get(key) === entry) this.known.delete(key);
          ctx.log?.warn({ err: (err as Error).message, accountId: refusal.accountId }, 'could not start the auto top-up of a refused charge');
        },
      ),
    };
    this.known.set(key, entry);
    return entry.pending;
  }

  /**
   * Forgets what this process knows of `accountId` (setAutoTopUp, after its commit: the next
   * refusal checks the saved settings).
   */
  forget(accountId: string): void {
    this.known.delete(accountId);
  }

  /** Entries kept now. */
  get size(): number {
    return this.known.size;
  }
}

/**
 * Whether the account's auto top-up settings let a refusal start one (enabled, so not paused;
 * none PENDING; a payment method, without which its job would only record a SKIPPED row, on
 * every re-check of a flood; fewer than maxPerPeriod PENDING or SUCCEEDED in the billing period
 * `periodStart`, as balances_changed counts), and the pack's grant (credits + bonus,
 * micro-credits); null without auto top-up settings.
 */
async function readSettings(db: pg.Pool | pg.PoolClient, accountId: string, periodStart: Date) {
  const { rows } = await db.query(
    `SELECT s.enabled, (p.micro_credits + p.bonus_micro_credits)::text AS pack,
            EXISTS (SELECT 1 FROM auto_top_ups t WHERE t.account_id = s.account_id AND t.status = 'PENDING') AS pending,
            EXISTS (SELECT 1 FROM payment_methods m WHERE m.account_id = s.account_id) AS method,
            (SELECT count(*) FROM auto_top_ups t
              WHERE t.account_id = s.account_id AND t.period_start = $2 AND t.status IN ('PENDING', 'SUCCEEDED'))::int < s.max_per_period AS under_cap
       FROM auto_top_up_settings s JOIN credit_packs p ON p.id = s.pack_id
      WHERE s.account_id = $1`,
    [accountId, periodStart],
  );
  const row = rows[0] as { enabled: boolean; pack: string; pending: boolean; method: boolean; under_cap: boolean } | undefined;
  if (!row) return null;
  return { startable: row.enabled && !row.pending && row.method && row.under_cap, packMicroCredits: BigInt(row.pack) };
}

/**
 * One check for `refusal`, never more than one statement without the account's lock: reads the
 * auto top-up settings (enabled, pack, none PENDING, a payment method, under maxPerPeriod in the
 * refusal's period)
 * and, when the pack would cover the refusal against the available credit it was refused at,
 * then, in a transaction of its own, locks the account, runs a plan roll that is due (plans.ts
 * lockAfterDueRoll: the refused work's was rolled back with it), reads its balance (readBalance, at the
 * account's now), reads the settings again for the current billing period and, when they still
 * allow it, available credit does not cover the refusal and available + the pack does, inserts
 * the PENDING top-up with `refused_micro_credits` (ON CONFLICT on the one-pending index: nothing)
 * and its outbox `job` row `auto-top-up` (AccountTx.publish, the payload balances_changed writes).
 * The balance itself does not change (no new version).
 * @returns the top-up started (or null), and the balance version and refused amount from which
 *   on nothing more is to start (see RefusalTopUps).
 * @throws the database's errors.
 */
export async function startRefusalTopUp(ctx: ServiceContext, refusal: CreditRefusal): Promise<CheckOutcome> {
  const nothing = (version: bigint, neededAtLeast: bigint): CheckOutcome => ({ topUpId: null, version, neededAtLeast });
  const first = await readSettings(ctx.pool, refusal.accountId, refusal.periodStart);
  if (!first?.startable) return nothing(refusal.version, 0n);
  if (refusal.availableMicroCredits + first.packMicroCredits < refusal.neededMicroCredits) return nothing(refusal.version, refusal.neededMicroCredits);
  return withTransaction(ctx.pool, async (tx) => {
    const wallNow = ctx.clock();
    // A due plan roll first (the refused work's was rolled back with it), so available credit is
    // the one after the roll, as on time (plans.ts lockAfterDueRoll).
    const atx = await lockAfterDueRoll(tx, refusal.accountId, wallNow);
    const periodStart = atx.period().start;
    const [settings, balance] = await Promise.all([readSettings(tx, refusal.accountId, periodStart), readBalance(tx, refusal.accountId, wallNow)]);
    const available = balance.availableMicroCredits;
    // Credit arrived since the refusal: its retry goes through; a refusal at the new version is checked anew.
    if (available >= refusal.neededMicroCredits) return nothing(refusal.version, 0n);
    if (!settings?.startable || available + settings.packMicroCredits < refusal.neededMicroCredits) return nothing(atx.versionBefore, refusal.neededMicroCredits);
    const { rows } = await tx.query(
      `INSERT INTO auto_top_ups (id, account_id, period_start, status, created_at, refused_micro_credits)
       VALUES (gen_random_uuid(), $1, $2, 'PENDING', $3, $4)
       ON CONFLICT (account_id) WHERE status = 'PENDING' DO NOTHING
       RETURNING id`,
      [refusal.accountId, periodStart, atx.now, refusal.neededMicroCredits.toString()],
    );
    const topUpId = (rows[0]?.id as string | undefined) ?? null;
    if (topUpId) {
      atx.publish('job', { name: 'auto-top-up', jobId: `auto-top-up-${topUpId}`, data: { topUpId, accountId: refusal.accountId } });
      await atx.finish(); // no balance change: writes only the outbox row
    }
    return { topUpId, version: atx.versionBefore, neededAtLeast: 0n };
  });
}
