/**
 * LiveHub: this instance's ONE Redis subscriber connection, shared by all its live clients.
 *
 * Channels are reference-counted: the first local listener of an account SUBSCRIBEs to its
 * channel (the returned promise resolves once Redis acknowledged it, so a snapshot read after it
 * cannot miss a later change), the last one UNSUBSCRIBEs. Messages are parsed once and handed to
 * every listener of the channel.
 *
 * When the subscriber connection drops and comes back, messages published meanwhile are lost to
 * this instance, so after re-subscribing every channel the hub calls each listener's `resync()`:
 * the subscription re-reads the balance from the database and sends it when it is newer than
 * what the client holds (src/graphql/subscriptions.ts).
 *
 * The same connection is always subscribed to the API key revocation channel
 * (src/auth/key-revocation.ts): for each announcement the hub calls `onKeyRevoked(keyId)` (the
 * server drops the key from its lookup cache) and then every watcher of that key
 * ({@link LiveHub.watchKey}: the key's open live streams, which re-check it at once). After a
 * reconnect, announcements may have been missed, so it calls `onKeyRevoked(null)` (drop every
 * cached key) before the listeners' resyncs, which re-check their credential too.
 */
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { accountChannel, accountIdOfChannel, type LiveMessage } from '../outbox/topics.js';
import { closeRedis } from '../db/redis-close.js';
import { keyRevocationChannel, parseKeyRevokedMessage } from '../auth/key-revocation.js';

/** One local consumer of an account's messages. */
export interface LiveListener {
  /** A message of the account (parsed JSON). Must not throw. */
  onMessage(message: LiveMessage): void;
  /** The subscriber connection was re-established; messages may have been missed. */
  resync(): void;
}

/** Counters for /readyz-style introspection and benchmarks. */
export interface LiveHubStats {
  channels: number;
  listeners: number;
  messagesReceived: number;
  resyncs: number;
  /** Live streams that finished their start (snapshot or starting point read) since boot; only grows. */
  streamsStarted: number;
  /** API key revocation announcements received since boot (src/auth/key-revocation.ts); only grows. */
  revocationsReceived: number;
}

/** What the hub's owner does about revocation announcements (see the module comment). */
export interface LiveHubOptions {
  /**
   * Key `keyId` (`api_keys.id`) was announced revoked, or, with null, announcements may have been
   * missed (the subscriber connection was down). Called before the key's watchers. Must not throw.
   */
  onKeyRevoked?(keyId: string | null): void;
}

/** See the module comment. */
export class LiveHub {
  private readonly sub: Redis;
  private streamsStarted = 0;
  private readonly channels = new Map<string, Set<LiveListener>>();
  private readonly pending = new Map<string, Promise<unknown>>();
  private disconnectedSinceReady = false;
  private closed = false;
  private messagesReceived = 0;
  private resyncs = 0;
  private revocationsReceived = 0;
  private readonly revocationChannel: string;
  private readonly keyWatchers = new Map<string, Set<() => void>>();

  constructor(
    redisUrl: string,
    private readonly prefix: string,
    private readonly log: Logger,
    private readonly options: LiveHubOptions = {},
  ) {
    this.sub = new Redis(redisUrl, {
      lazyConnect: false,
      enableOfflineQueue: true,
      autoResubscribe: false, // re-subscribed explicitly on 'ready', then resync
      maxRetriesPerRequest: null,
      // Reconnect attempts at most 250 ms apart while Redis is down, so subscribers resync within
      // ~0.25 s of its return plus the resync's reads (issue #3: "within 2 seconds"); a 1 s cap
      // used up half of that budget on a busy machine. One TCP connect per 250 ms is no load.
      retryStrategy: (times) => Math.min(50 * times, 250),
      connectionName: 'creditpool-live-subscriber',
    });
    this.sub.on('error', (err) => this.log.warn({ err: err.message }, 'live hub: redis subscriber error'));
    this.sub.on('close', () => {
      if (!this.closed) this.disconnectedSinceReady = true;
    });
    this.sub.on('ready', () => {
      if (!this.disconnectedSinceReady) return;
      this.disconnectedSinceReady = false;
      void this.resubscribeAll();
    });
    this.sub.on('message', (channel: string, raw: string) => this.dispatch(channel, raw));
    // Subscribed for the hub's whole life (queued until the connection is ready; re-subscribed
    // with the account channels after a reconnect).
    this.revocationChannel = keyRevocationChannel(prefix);
    this.sub.subscribe(this.revocationChannel).catch((err: Error) => this.log.warn({ err: err.message }, 'live hub: could not subscribe to API key revocations; re-subscribing at the next reconnect'));
  }

  /** Waits until the subscriber connection is ready (for startup and tests). */
  async ready(): Promise<void> {
    if (this.sub.status === 'ready') return;
    await new Promise<void>((resolve) => this.sub.once('ready', () => resolve()));
  }

  /**
   * Adds `listener` to the account's channel; resolves once the channel is subscribed.
   * @returns the function that removes the listener (unsubscribing the last one).
   * @throws the Redis error when SUBSCRIBE fails (the listener is not added).
   */
  async subscribe(accountId: string, listener: LiveListener): Promise<() => void> {
    const channel = accountChannel(this.prefix, accountId);
    let set = this.channels.get(channel);
    if (!set) {
      set = new Set();
      this.channels.set(channel, set);
      this.pending.set(channel, this.sub.subscribe(channel));
    }
    set.add(listener);
    try {
      await this.pending.get(channel);
    } catch (err) {
      this.remove(channel, listener);
      throw err;
    }
    return () => this.remove(channel, listener);
  }

  /**
   * Calls `onRevoked` each time key `keyId` (`api_keys.id`) is announced revoked, after the hub's
   * `onKeyRevoked` dropped it from the lookup cache (a live stream of that key re-checks it then).
   * `onRevoked` must not throw.
   * @returns the function that stops watching.
   */
  watchKey(keyId: string, onRevoked: () => void): () => void {
    const id = keyId.toLowerCase();
    let set = this.keyWatchers.get(id);
    if (!set) {
      set = new Set();
      this.keyWatchers.set(id, set);
    }
    set.add(onRevoked);
    return () => {
      const watchers = this.keyWatchers.get(id);
      if (!watchers?.delete(onRevoked)) return;
      if (watchers.size === 0) this.keyWatchers.delete(id);
    };
  }

  /** Current counters. */
  stats(): LiveHubStats {
    let listeners = 0;
    for (const set of this.channels.values()) listeners += set.size;
    return { channels: this.channels.size, listeners, messagesReceived: this.messagesReceived, resyncs: this.resyncs, streamsStarted: this.streamsStarted, revocationsReceived: this.revocationsReceived };
  }

  /**
   * Counts a live stream whose start is done: from now on it delivers every change (what a
   * client can wait for, through /readyz, before it expects a change it causes to reach it).
   */
  noteStreamStarted(): void {
    this.streamsStarted++;
  }

  /**
   * Closes the subscriber connection, without waiting for a Redis that is unreachable
   * (db/redis-close.ts: a QUIT queued while disconnected would wait for Redis to return).
   */
  async close(): Promise<void> {
    this.closed = true;
    this.channels.clear();
    await closeRedis(this.sub);
  }

  private remove(channel: string, listener: LiveListener): void {
    const set = this.channels.get(channel);
    if (!set || !set.delete(listener)) return;
    if (set.size === 0) {
      this.channels.delete(channel);
      this.pending.delete(channel);
      if (!this.closed && this.sub.status === 'ready') this.sub.unsubscribe(channel).catch(() => undefined);
    }
  }

  private dispatch(channel: string, raw: string): void {
    if (channel === this.revocationChannel) {
      this.keyRevoked(raw);
      return;
    }
    const set = this.channels.get(channel);
    if (!set || accountIdOfChannel(this.prefix, channel) === null) return;
    let message: LiveMessage;
    try {
      message = JSON.parse(raw) as LiveMessage;
    } catch {
      this.log.warn({ channel }, 'live hub: dropped a message that is not JSON');
      return;
    }
    this.messagesReceived++;
    for (const listener of set) listener.onMessage(message);
  }

  /** One revocation announcement: the cache first, then the key's live streams. */
  private keyRevoked(raw: string): void {
    const keyId = parseKeyRevokedMessage(raw);
    if (keyId === null) {
      this.log.warn('live hub: dropped an API key revocation message that names no key id');
      return;
    }
    this.revocationsReceived++;
    this.options.onKeyRevoked?.(keyId);
    for (const watcher of this.keyWatchers.get(keyId) ?? []) watcher();
  }

  private async resubscribeAll(): Promise<void> {
    const channels = [...this.channels.keys()];
    try {
      const done = this.sub.subscribe(this.revocationChannel, ...channels);
      for (const c of channels) this.pending.set(c, done);
      await done;
    } catch (err) {
      this.log.warn({ err: (err as Error).message }, 'live hub: re-subscribe failed; waiting for the next reconnect');
      this.disconnectedSinceReady = true;
      return;
    }
    // Revocations announced while disconnected were missed: every cached key is looked up again
    // (the resyncs below re-check the streams' credentials through that lookup).
    this.options.onKeyRevoked?.(null);
    this.resyncs++;
    this.log.info({ channels: channels.length }, 'live hub: re-subscribed after a reconnect; forgot cached API keys; resyncing balances');
    for (const c of channels) for (const listener of this.channels.get(c) ?? []) listener.resync();
  }
}
