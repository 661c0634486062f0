/**
 * Live-update test clients: graphql-ws over a real WebSocket and graphql-sse over real HTTP,
 * each collecting the events of one subscription. `waitFor` resolves when the collected events
 * satisfy a condition, checked on every event (no sleeping); its timeout only turns a hang into
 * a failure with the events seen so far.
 */
import WebSocket from 'ws';
import { createClient as createWsClient, type Client as WsClient } from 'graphql-ws';
import { createClient as createSseClient } from 'graphql-sse';

/** One subscription's collected results. */
export interface LiveSub<T = any> {
  /** `data` payloads in arrival order. */
  events: T[];
  /** GraphQL errors delivered (each `errors` array flattened). */
  errors: Array<{ message: string; extensions?: { code?: string } }>;
  /** Set when the transport closed, with the WebSocket close code/reason (SSE: code 0). */
  closedWith: { code: number; reason: string } | null;
  /** True once the server completed the subscription. */
  completed: boolean;
  /** Resolves when `pred(this)` holds; rejects after `timeoutMs` with what was seen. */
  waitFor(pred: (sub: LiveSub<T>) => boolean, what: string, timeoutMs?: number): Promise<void>;
  dispose(): Promise<void>;
}

function collector<T>() {
  const waiters = new Set<() => void>();
  const sub: LiveSub<T> = {
    events: [],
    errors: [],
    closedWith: null,
    completed: false,
    waitFor(pred, what, timeoutMs = 15_000) {
      if (pred(sub)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const check = () => {
          if (!pred(sub)) return;
          waiters.delete(check);
          clearTimeout(timer);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(
            new Error(
              `timed out waiting for ${what}: ${sub.events.length} events (last ${JSON.stringify(sub.events.at(-1))}), errors ${JSON.stringify(sub.errors)}, closed ${JSON.stringify(sub.closedWith)}, completed ${sub.completed}`,
            ),
          );
        }, timeoutMs);
        waiters.add(check);
      });
    },
    dispose: async () => undefined,
  };
  const changed = () => [...waiters].forEach((w) => w());
  return {
    sub,
    changed,
    // The `next` and `complete` handlers both transports share.
    next: (result: { data?: unknown; errors?: readonly unknown[] | null }) => {
      if (result.data) sub.events.push(result.data as T);
      if (result.errors) sub.errors.push(...(result.errors as unknown as LiveSub['errors']));
      changed();
    },
    complete: () => {
      sub.completed = true;
      changed();
    },
  };
}

/** The ws:// URL of a server's http://.../graphql URL. */
export function wsUrl(httpUrl: string): string {
  return httpUrl.replace(/^http/, 'ws');
}

/**
 * Extra settings of a {@link wsSubscribe} connection: `headers` are sent on the HTTP upgrade
 * request (as a server-side proxy would add them; a browser cannot), `connectionParams` are
 * merged into the connection_init payload next to `authorization`.
 */
export interface WsOptions {
  headers?: Record<string, string>;
  connectionParams?: Record<string, unknown>;
}

/** A `ws` WebSocket class that sends `headers` on its upgrade request (graphql-ws calls `new Impl(url, protocol)`). */
function webSocketWithHeaders(headers: Record<string, string>): unknown {
  return class extends WebSocket {
    constructor(address: string | URL, protocols?: string | string[]) {
      super(address, protocols, { headers });
    }
  };
}

/**
 * Subscribes over graphql-ws (one connection per call). `authorization` goes into
 * connectionParams (omitted when null); `options` adds upgrade headers or connectionParams.
 */
export function wsSubscribe<T = any>(httpUrl: string, authorization: string | null, query: string, variables: Record<string, unknown> = {}, options: WsOptions = {}): LiveSub<T> & { client: WsClient } {
  const { sub, changed, next, complete } = collector<T>();
  const client = createWsClient({
    url: wsUrl(httpUrl),
    webSocketImpl: options.headers ? webSocketWithHeaders(options.headers) : WebSocket,
    connectionParams: { ...(authorization === null ? {} : { authorization }), ...options.connectionParams },
    retryAttempts: 0,
    lazy: false,
    onNonLazyError: () => undefined,
    on: {
      closed: (event) => {
        const e = event as { code: number; reason: string };
        sub.closedWith = { code: e.code, reason: String(e.reason) };
        changed();
      },
    },
  });
  const dispose = client.subscribe<T>(
    { query, variables },
    {
      next,
      error: (err) => {
        if (Array.isArray(err)) sub.errors.push(...(err as LiveSub['errors']));
        else if (err && typeof err === 'object' && 'code' in err) sub.closedWith ??= { code: (err as { code: number }).code, reason: String((err as { reason?: string }).reason) };
        else sub.errors.push({ message: String((err as Error)?.message ?? err) });
        changed();
      },
      complete,
    },
  );
  sub.dispose = async () => {
    dispose();
    await client.dispose();
  };
  return Object.assign(sub, { client });
}

/** Subscribes over SSE (graphql-sse client, distinct connections mode). */
export function sseSubscribe<T = any>(httpUrl: string, authorization: string | null, query: string, variables: Record<string, unknown> = {}): LiveSub<T> {
  const { sub, changed, next, complete } = collector<T>();
  const client = createSseClient({ url: httpUrl, headers: authorization === null ? {} : { authorization }, retryAttempts: 0 });
  const dispose = client.subscribe<T>(
    { query, variables },
    {
      next,
      error: (err) => {
        sub.errors.push({ message: String((err as Error)?.message ?? err) });
        sub.closedWith = { code: 0, reason: String((err as Error)?.message ?? err) };
        changed();
      },
      complete,
    },
  );
  sub.dispose = async () => {
    dispose();
    client.dispose();
  };
  return sub;
}

/**
 * Sends one GraphQL request (POST) to the server at `graphqlUrl` with `Bearer <token>` and
 * returns its `data` (for servers started as processes, e.g. demo/server-process.ts startServer).
 * @throws Error carrying the response's `errors` (JSON) when it has any.
 */
export async function postGraphql(graphqlUrl: string, token: string, query: string, variables: Record<string, unknown> = {}): Promise<any> {
  const res = await fetch(graphqlUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = (await res.json()) as { data?: any; errors?: unknown[] };
  if (body.errors) throw new Error(JSON.stringify(body.errors));
  return body.data;
}

/** The balanceChanged subscription document. */
export const BALANCE_SUB = `subscription ($id: ID!) { balanceChanged(accountId: $id) { accountId available total reserved free paid version updatedAt percentRemaining periodCredits } }`;
/** The usageRecorded subscription document. */
export const USAGE_SUB = `subscription ($id: ID!) { usageRecorded(accountId: $id) { id idempotencyKey cost category } }`;
/** The creditAlerts subscription document. */
export const ALERTS_SUB = `subscription ($id: ID!) { creditAlerts(accountId: $id) { id accountId threshold percentRemaining available } }`;

/** Live streams the server at `graphqlUrl` has started since boot (/readyz `live.streamsStarted`; only grows). */
export async function streamsStarted(graphqlUrl: string): Promise<number> {
  const res = await fetch(new URL('/readyz', graphqlUrl));
  const body = (await res.json()) as { live: { streamsStarted: number } };
  return body.live.streamsStarted;
}

/**
 * Waits until the server has started at least `count` live streams since boot: a stream that
 * has started delivers every change committed after it (usageRecorded and creditAlerts have no
 * snapshot to wait for instead). Each check is one /readyz request.
 * @throws Error after 15 s without reaching `count`.
 */
export async function waitForStreamsStarted(graphqlUrl: string, count: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (let n = await streamsStarted(graphqlUrl); n < count; n = await streamsStarted(graphqlUrl)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} started live streams: ${n}`);
  }
}

/** Resyncs the live hub of the server at `graphqlUrl` has done since boot (/readyz `live.resyncs`: Redis reconnects after which every subscription re-read what it may have missed). */
export async function liveResyncs(graphqlUrl: string): Promise<number> {
  const res = await fetch(new URL('/readyz', graphqlUrl));
  const body = (await res.json()) as { live: { resyncs: number } };
  return body.live.resyncs;
}

/**
 * Waits until the server's live hub has resynced at least `count` times since boot (its
 * subscriber connection came back, re-subscribed and asked every subscription to catch up).
 * Each check is one /readyz request.
 * @throws Error after 15 s without reaching `count`.
 */
export async function waitForResyncs(graphqlUrl: string, count: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (let n = await liveResyncs(graphqlUrl); n < count; n = await liveResyncs(graphqlUrl)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} live resyncs: ${n}`);
  }
}

/** API key revocations the live hub of the server at `graphqlUrl` has heard announced on Redis since boot (/readyz `live.revocationsReceived`). */
export async function revocationsReceived(graphqlUrl: string): Promise<number> {
  const res = await fetch(new URL('/readyz', graphqlUrl));
  const body = (await res.json()) as { live: { revocationsReceived?: number } };
  const n = body.live.revocationsReceived;
  if (typeof n !== 'number') throw new Error(`/readyz of ${graphqlUrl} reports no live.revocationsReceived`);
  return n;
}

/**
 * Waits until the server's live hub has heard at least `count` key revocations since boot: from
 * then on the key is out of that instance's lookup cache. Each check is one /readyz request.
 * @throws Error after 15 s without reaching `count`.
 */
export async function waitForRevocationsReceived(graphqlUrl: string, count: number): Promise<void> {
  const deadline = Date.now() + 15_000;
  for (let n = await revocationsReceived(graphqlUrl); n < count; n = await revocationsReceived(graphqlUrl)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} announced revocations: ${n}`);
  }
}
