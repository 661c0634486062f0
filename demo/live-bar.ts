/**
 * The demo's live credit bar: one `balanceChanged` subscription over WebSocket (graphql-ws), as
 * a browser tab would hold it, watching the demo account while the trace is replayed. At the end
 * it reports how many updates arrived, whether versions were contiguous (no update lost, none
 * out of order), whether the last one equals the balance read over HTTP, and the latency from
 * the charge's transaction timestamp (Balance.updatedAt, taken just before commit) to receipt.
 */
import WebSocket from 'ws';
import { createClient } from 'graphql-ws';

/** What the bar saw. */
export interface LiveBarReport {
  updates: number;
  /** Versions after the first that were not exactly previous + 1. */
  gaps: number;
  /** Updates whose version was not newer than the previous one. */
  backwards: number;
  lastVersion: string | null;
  lastAvailable: string | null;
  /** Milliseconds from Balance.updatedAt to receipt (p50, p99, max) over all updates but the snapshot. */
  latencyMs: { p50: number; p99: number; max: number } | null;
}

/** A running bar: `waitForVersion` resolves when `version` arrived (or rejects after `timeoutMs`). */
export interface LiveBar {
  waitForVersion(version: string, timeoutMs?: number): Promise<void>;
  report(): LiveBarReport;
  close(): Promise<void>;
}

const DOC = `subscription ($id: ID!) { balanceChanged(accountId: $id) { version available percentRemaining updatedAt } }`;

/**
 * Subscribes to the account's balance on `graphqlUrl` (http:// is turned into ws://) with the
 * bearer `token`; resolves once the first event (the current balance) arrived.
 * @throws Error when the connection is refused or no snapshot arrives within 15 s.
 */
export async function openLiveBar(graphqlUrl: string, token: string, accountId: string): Promise<LiveBar> {
  const client = createClient({ url: graphqlUrl.replace(/^http/, 'ws'), webSocketImpl: WebSocket, connectionParams: { authorization: `Bearer ${token}` }, retryAttempts: 0 });
  const versions: bigint[] = [];
  const latencies: number[] = [];
  let last: { version: string; available: string } | null = null;
  const waiters = new Set<() => void>();
  let failure: Error | null = null;
  const dispose = client.subscribe<{ balanceChanged: { version: string; available: string; updatedAt: string } }>(
    { query: DOC, variables: { id: accountId } },
    {
      next: ({ data, errors }) => {
        if (errors) failure = new Error(`live bar: ${JSON.stringify(errors)}`);
        if (!data) return;
        const b = data.balanceChanged;
        if (versions.length > 0) latencies.push(Date.now() - Date.parse(b.updatedAt));
        versions.push(BigInt(b.version));
        last = { version: b.version, available: b.available };
        for (const w of [...waiters]) w();
      },
      error: (err) => {
        failure = new Error(`live bar: ${err instanceof Error ? err.message : JSON.stringify(err)}`);
        for (const w of [...waiters]) w();
      },
      complete: () => undefined,
    },
  );
  const waitFor = (pred: () => boolean, what: string, timeoutMs: number) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (failure) return done(failure);
        if (pred()) done(null);
      };
      const done = (err: Error | null) => {
        waiters.delete(check);
        clearTimeout(timer);
        if (err) reject(err);
        else resolve();
      };
      const timer = setTimeout(() => done(new Error(`live bar: no ${what} within ${timeoutMs} ms`)), timeoutMs);
      waiters.add(check);
      check();
    });
  await waitFor(() => versions.length > 0, 'snapshot', 15_000);
  return {
    waitForVersion: (version, timeoutMs = 15_000) => waitFor(() => versions.length > 0 && versions[versions.length - 1]! >= BigInt(version), `update to version ${version}`, timeoutMs),
    report() {
      let gaps = 0;
      let backwards = 0;
      for (let i = 1; i < versions.length; i++) {
        if (versions[i]! <= versions[i - 1]!) backwards++;
        else if (versions[i]! !== versions[i - 1]! + 1n) gaps++;
      }
      const sorted = [...latencies].sort((x, y) => x - y);
      const q = (p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
      const l = last as { version: string; available: string } | null;
      return {
        updates: versions.length,
        gaps,
        backwards,
        lastVersion: l?.version ?? null,
        lastAvailable: l?.available ?? null,
        latencyMs: sorted.length > 0 ? { p50: q(0.5), p99: q(0.99), max: sorted[sorted.length - 1]! } : null,
      };
    },
    async close() {
      dispose();
      await client.dispose();
    },
  };
}
