/**
 * The contract's Subscription type: balanceChanged, usageRecorded and creditAlerts.
 *
 * Every subscription first SUBSCRIBEs this instance to the account's Redis channel (LiveHub,
 * awaiting the acknowledgement), then reads the starting point from PostgreSQL, then delivers
 * the channel's messages in order. Messages that arrive while the starting point is read are
 * buffered and delivered after it; balance updates whose version is not newer than the last one
 * sent are dropped, so a client never sees a version go backwards (a charge that lands while
 * subscribing is either in the snapshot or delivered after it, never lost).
 *
 * When the hub reconnects to Redis (messages may have been missed), balanceChanged re-reads the
 * balance and sends it when newer; usageRecorded and creditAlerts deliver what was recorded
 * since the last item sent. A subscription whose queue of undelivered updates reaches
 * LIVE_MAX_QUEUED_UPDATES (a slow client) queues no more: the messages after that are dropped,
 * and once the queued ones are sent it catches up the same way, once (so the queue holds at most
 * that many plus the catch-up; a client that takes nothing at all is cut off by the transport's
 * own limits, src/server.ts).
 * An end user's subscription ends when the token's `exp` passes, with one UNAUTHENTICATED error
 * ("token expired"), as a revoked key's does: a bare `complete` looked like a normal end to an SSE
 * client, which then never renewed its token and kept a stale credit bar (WebSockets are closed
 * with 4403 at `exp` as well, src/server.ts). A service key's subscription
 * re-checks the key (GraphQLContext.stillAuthenticated: the cached lookup every request uses)
 * before each value it sends, every CREDENTIAL_RECHECK_INTERVAL_MS, and at once when the key's
 * revocation is announced on Redis (LiveHub.watchKey; the hub has dropped the key from the lookup
 * cache first, src/auth/key-revocation.ts); once the key is revoked the stream sends one
 * UNAUTHENTICATED error and ends. That is at once in the revoking process and wherever the
 * announcement arrives; without it (Redis unreachable when the key was revoked), within
 * API_KEY_CACHE_TTL_MS + CREDENTIAL_RECHECK_INTERVAL_MS.
 *
 * Access is the same as for queries (./access.ts): another tenant's account answers NOT_FOUND,
 * exactly like a missing one, and nothing of it is ever sent.
 */
import { Repeater } from 'graphql-yoga';
import type { UsageEvent, CreditAlert } from '../generated/prisma/client.js';
import { builder } from './builder.js';
import { BalanceRef, UsageEventRef } from './types/ledger.js';
import { CreditAlertRef } from './types/alerts.js';
import { assertAccountReadable } from './access.js';
import { decodeId } from './ids.js';
import { LedgerError } from '../ledger/errors.js';
import type { GraphQLContext } from './context.js';
import type { LiveMessage } from '../outbox/topics.js';
import { readBalanceSnapshot, type BalanceView } from '../services/read-balance.js';
import { balanceFromSnapshot } from '../services/balance-figures.js';
import { atInstant } from '../live/at-instant.js';

/** How often a service key's open stream re-checks that its key is still valid, in milliseconds. */
export const CREDENTIAL_RECHECK_INTERVAL_MS = 1_000;

/** The last item of a stream whose credential stopped authenticating (see {@link liveValue}). */
const CREDENTIAL_ENDED: unique symbol = Symbol('credential-ended');

/** The last item of an end user's stream whose token reached its `exp` (see {@link liveValue}). */
const TOKEN_EXPIRED: unique symbol = Symbol('token-expired');

/** The last item of a stream that ends because its credential no longer holds. */
type Ended = typeof CREDENTIAL_ENDED | typeof TOKEN_EXPIRED;

/**
 * A stream item as the subscription field resolves it: the value itself, or, for the item
 * {@link liveStream} sends when the key was revoked or the end user's token expired, the
 * UNAUTHENTICATED error (masked like any resolver error, so every transport gets the code).
 * @throws LedgerError UNAUTHENTICATED for that last item.
 */
function liveValue<T>(item: T | Ended): T {
  if (item === CREDENTIAL_ENDED) throw new LedgerError('UNAUTHENTICATED', 'This credential is no longer valid (revoked).');
  if (item === TOKEN_EXPIRED) throw new LedgerError('UNAUTHENTICATED', 'This token has expired; subscribe again with a new one.');
  return item;
}

/**
 * Row reads shared by the subscriptions one message wakes on this instance (see {@link seqStream}):
 * per message object (the hub parses each message once and hands the same object to every
 * listener of the account), per stream kind and starting seq, the promise of the one read that the
 * first of them started after the message arrived. Keyed by the message, never reused for a
 * later one, so a shared read is never older than the commit that woke its sharers. Entries go
 * with the message once every listener is done with it.
 */
const sharedReads = new WeakMap<LiveMessage, Map<string, Promise<unknown[]>>>();

/**
 * The read `read` for (`message`, `key`): the one already started for them, else `read()` now,
 * kept for the other listeners of that message. Without a message (a start or a catch-up), `read()`.
 * @throws whatever `read` throws (every sharer gets the same error).
 */
function sharedRead<T>(message: LiveMessage | null, key: string, read: () => Promise<T[]>): Promise<T[]> {
  if (message === null) return read();
  let reads = sharedReads.get(message);
  if (!reads) {
    reads = new Map();
    sharedReads.set(message, reads);
  }
  let found = reads.get(key) as Promise<T[]> | undefined;
  if (!found) {
    found = read();
    reads.set(key, found);
  }
  return found;
}

/** How one live stream turns the starting point, messages and resyncs into values. */
interface StreamHandlers<T> {
  /** Runs once after the channel is subscribed; returns values to send first. */
  start(): Promise<T[]>;
  /** One message of the account's channel; returns values to send (often none). */
  onMessage(message: LiveMessage): Promise<T[]>;
  /** After a Redis reconnect or a dropped queue: returns what the client missed. */
  catchUp(): Promise<T[]>;
}

/**
 * Checks access and resolves the account's database id.
 * @throws LedgerError UNAUTHENTICATED without credentials, NOT_FOUND for a malformed, missing
 *   or unreadable account, UNAVAILABLE when this instance serves no live updates.
 */
async function liveAccount(ctx: GraphQLContext, globalId: string): Promise<string> {
  const accountId = decodeId(globalId, 'Account', 'account');
  await assertAccountReadable(ctx, accountId);
  if (!ctx.live) throw new LedgerError('UNAVAILABLE', 'live updates are not served by this instance');
  return accountId;
}

/** A stream of one account's live values (see the module comment). */
function liveStream<T>(ctx: GraphQLContext, accountId: string, h: StreamHandlers<T>): AsyncIterable<T | Ended> {
  const hub = ctx.live!;
  const maxQueued = ctx.env.LIVE_MAX_QUEUED_UPDATES;
  // Service keys can be revoked while a stream is open; end users' tokens end at `exp` (below).
  const recheck = ctx.principal?.kind === 'service';
  return new Repeater<T | Ended>(async (push, stop) => {
    let started = false;
    let stopped = false;
    let queued = 0;
    let dropped = false;
    const buffered: LiveMessage[] = [];
    let chain: Promise<void> = Promise.resolve();
    /** False once the key no longer authenticates; a lookup that fails (database down) keeps the stream. */
    const credentialValid = async (): Promise<boolean> => {
      try {
        return await ctx.stillAuthenticated();
      } catch (err) {
        ctx.log.warn({ err }, 'live stream: could not re-check its credential; keeping the stream');
        return true;
      }
    };
    const run = (work: () => Promise<T[]>): void => {
      queued++;
      chain = chain.then(async () => {
        queued--;
        if (stopped) return;
        try {
          const values = await work();
          if (recheck && !(await credentialValid())) {
            stopped = true;
            await push(CREDENTIAL_ENDED);
            stop();
            return;
          }
          for (const value of values) await push(value);
        } catch (err) {
          stopped = true;
          stop(err);
        }
      });
    };
    const enqueue = (message: LiveMessage): void => {
      if (dropped) return;
      if (queued >= maxQueued) {
        dropped = true; // a slow client: queue nothing more; after the queued runs, catch up once
        run(async () => {
          dropped = false;
          return h.catchUp();
        });
        return;
      }
      run(() => h.onMessage(message));
    };
    let unsubscribe: (() => void) | null = null;
    /** Set once start() is queued: the runs after it (in order) may rely on what it read. */
    let startQueued = false;
    const expiresAt = ctx.principal?.kind === 'user' ? ctx.principal.expiresAt : null;
    // At `exp`: the error, then the end; nothing queued behind it is sent (stopped).
    const expiry = expiresAt
      ? atInstant(expiresAt, () => {
          stopped = true;
          void push(TOKEN_EXPIRED);
          stop();
        })
      : null;
    const rechecks = recheck ? setInterval(() => run(async () => []), CREDENTIAL_RECHECK_INTERVAL_MS) : null;
    // A revocation announced on Redis: the same re-check, now (the key is out of the cache by then).
    const unwatch = recheck && ctx.principal?.kind === 'service' ? hub.watchKey(ctx.principal.keyId, () => run(async () => [])) : null;
    try {
      unsubscribe = await hub.subscribe(accountId, {
        onMessage: (m) => (started ? enqueue(m) : void buffered.push(m)),
        // Before start() is queued there is nothing to catch up on: start will read the current
        // state itself (a catch-up queued ahead of it would send a seq stream's rows from seq 0).
        // Once it is queued, its read may already have happened before a change whose message
        // this instance missed while disconnected, so the catch-up runs after it (runs are
        // serial). Ignoring a resync until start had *finished* left such a stream on the stale
        // start value until the account changed again (test/live/resync.test.ts).
        resync: () => (startQueued ? run(() => h.catchUp()) : undefined),
      });
      run(async () => {
        const first = await h.start();
        started = true;
        hub.noteStreamStarted();
        for (const m of buffered.splice(0)) enqueue(m);
        return first;
      });
      startQueued = true;
    } catch (err) {
      stop(err);
    }
    await stop;
    stopped = true;
    expiry?.cancel();
    if (rechecks) clearInterval(rechecks);
    unwatch?.();
    unsubscribe?.();
  });
}

/** balanceChanged: the snapshot, then every newer version. */
function balanceStream(ctx: GraphQLContext, accountId: string): AsyncIterable<BalanceView | Ended> {
  let last = -1n;
  const newer = (view: BalanceView): BalanceView[] => {
    if (view.version <= last) return [];
    last = view.version;
    return [view];
  };
  const current = async () => newer(balanceFromSnapshot(await readBalanceSnapshot(ctx.services.pool, accountId, ctx.services.clock())));
  return liveStream(ctx, accountId, {
    start: current,
    catchUp: current,
    onMessage: async (m) => (m.topic === 'balance' && BigInt(m.payload.version) > last ? newer(balanceFromSnapshot(m.payload)) : []),
  });
}

/**
 * A stream of the rows an account records with an increasing `seq` (usage events, alerts): the
 * rows recorded after the subscription started, in seq order. A message of one of `topics` (or a
 * catch-up) reads every row after the last one sent, so nothing is skipped or sent twice; the
 * message only says "look again", so one per transaction wakes the stream for all its rows.
 * The subscriptions of one account on this instance that a message wakes with the same last
 * seq share one read ({@link sharedRead}, by `kind`): a hot account watched by N clients costs
 * one read per update, not N (test/live/live-audit-2.test.ts).
 */
function seqStream<T extends { seq: bigint }>(
  ctx: GraphQLContext,
  accountId: string,
  topics: readonly LiveMessage['topic'][],
  rows: { kind: string; after(seq: bigint, take: number): Promise<T[]>; pageSize: number; lastSeq(): Promise<bigint | null> },
): AsyncIterable<T | Ended> {
  let lastSeq = 0n;
  // Every row after the last one sent, page by page: one transaction (a recordUsageBatch of up
  // to MAX_BATCH_ITEMS events) wakes the stream once for all its rows.
  const since = async (message: LiveMessage | null): Promise<T[]> => {
    const all: T[] = [];
    for (;;) {
      const from = lastSeq;
      const found = await sharedRead(message, `${rows.kind}:${from}`, () => rows.after(from, rows.pageSize));
      if (found.length > 0) lastSeq = found[found.length - 1]!.seq;
      all.push(...found);
      if (found.length < rows.pageSize) return all;
    }
  };
  return liveStream(ctx, accountId, {
    start: async () => {
      lastSeq = (await rows.lastSeq()) ?? 0n;
      return [];
    },
    catchUp: () => since(null),
    onMessage: async (m) => (topics.includes(m.topic) ? since(m) : []),
  });
}

/**
 * usageRecorded: each usage event recorded after the subscription started. Woken by `balance`
 * messages: every usage event adds a ledger entry, so the transaction that records it writes the
 * account's `balance` outbox row (AccountTx.finishMany), published after its commit; a balance
 * change without usage (a grant, a hold) costs one read that finds nothing. `usage` messages
 * come only from rows an earlier version left in the outbox (outbox/topics.ts).
 */
function usageStream(ctx: GraphQLContext, accountId: string): AsyncIterable<UsageEvent | Ended> {
  return seqStream(ctx, accountId, ['balance', 'usage'], {
    kind: 'usage',
    after: (seq, take) => ctx.prisma.usageEvent.findMany({ where: { accountId, seq: { gt: seq } }, orderBy: { seq: 'asc' }, take }),
    pageSize: 500,
    lastSeq: async () => (await ctx.prisma.usageEvent.findFirst({ where: { accountId }, orderBy: { seq: 'desc' }, select: { seq: true } }))?.seq ?? null,
  });
}

/** creditAlerts: each alert recorded after the subscription started. */
function alertStream(ctx: GraphQLContext, accountId: string): AsyncIterable<CreditAlert | Ended> {
  return seqStream(ctx, accountId, ['alert'], {
    kind: 'alert',
    after: (seq, take) => ctx.prisma.creditAlert.findMany({ where: { accountId, seq: { gt: seq } }, orderBy: { seq: 'asc' }, take }),
    pageSize: 100,
    lastSeq: async () => (await ctx.prisma.creditAlert.findFirst({ where: { accountId }, orderBy: { seq: 'desc' }, select: { seq: true } }))?.seq ?? null,
  });
}

builder.subscriptionType({
  fields: (t) => ({
    balanceChanged: t.field({
      type: BalanceRef,
      description: 'The current balance at once, then every change.',
      authScopes: { authenticated: true },
      args: { accountId: t.arg.id({ required: true }) },
      subscribe: async (_root, args, ctx) => balanceStream(ctx, await liveAccount(ctx, String(args.accountId))),
      resolve: (view: BalanceView | Ended) => liveValue(view),
    }),
    creditAlerts: t.field({
      type: CreditAlertRef,
      authScopes: { authenticated: true },
      args: { accountId: t.arg.id({ required: true }) },
      subscribe: async (_root, args, ctx) => alertStream(ctx, await liveAccount(ctx, String(args.accountId))),
      resolve: (alert: CreditAlert | Ended) => liveValue(alert),
    }),
    usageRecorded: t.field({
      type: UsageEventRef,
      authScopes: { authenticated: true },
      args: { accountId: t.arg.id({ required: true }) },
      subscribe: async (_root, args, ctx) => usageStream(ctx, await liveAccount(ctx, String(args.accountId))),
      resolve: (event: UsageEvent | Ended) => liveValue(event),
    }),
  }),
});
