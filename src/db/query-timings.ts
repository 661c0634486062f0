/**
 * Client-side wall time of the ledger pool's statements, by statement (PG_QUERY_TIMINGS=true;
 * off by default). Each query is timed from the moment node-postgres is asked to run it until
 * its promise settles, so the figure includes what pg_stat_statements cannot see: the wait for a
 * PostgreSQL backend to be scheduled, the trip over the socket, and the wait for this process's
 * event loop to read the reply. Compared with PostgreSQL's own CPU per statement, it tells a
 * latency-bound transaction from a CPU-bound one (issue #6, "profile before optimizing").
 */
import type pg from 'pg';

/** Count and summed wall time (ms) of one statement. */
export interface StatementTiming {
  count: number;
  totalMs: number;
}

/**
 * The label of a query as node-postgres receives it: a named statement's name, else its first
 * three words (e.g. "BEGIN", "SELECT pg_advisory_xact_lock($1)", "DELETE FROM outbox_events").
 */
export function statementLabel(query: unknown): string {
  if (typeof query === 'string') return firstWords(query);
  if (query && typeof query === 'object') {
    const q = query as { name?: unknown; text?: unknown };
    if (typeof q.name === 'string' && q.name) return q.name;
    if (typeof q.text === 'string') return firstWords(q.text);
  }
  return '(other)';
}

function firstWords(text: string): string {
  return text.trim().split(/\s+/, 3).join(' ');
}

/** Summed wall times by statement label; see the module comment. */
export class QueryTimings {
  private readonly byLabel = new Map<string, StatementTiming>();
  private trips = 0;

  /**
   * Round trips to PostgreSQL so far, counted on the wire: requests (a Sync of the extended
   * protocol, or a simple query) written while the connection had no request waiting for its
   * ReadyForQuery. The ledger pool pipelines (db/pg.ts createPgPool), so a query asked for while
   * another is in flight goes out behind it and adds no wait of its own; without pipeline mode
   * node-postgres holds it until the answer, and it counts.
   */
  roundTrips(): number {
    return this.trips;
  }

  /** Adds one execution of `label` that took `ms` milliseconds. */
  record(label: string, ms: number): void {
    const t = this.byLabel.get(label);
    if (t) {
      t.count++;
      t.totalMs += ms;
    } else this.byLabel.set(label, { count: 1, totalMs: ms });
  }

  /** A copy of the sums so far (label -> count and total ms, rounded to 0.01 ms). */
  snapshot(): Record<string, StatementTiming> {
    const out: Record<string, StatementTiming> = {};
    for (const [label, t] of this.byLabel) out[label] = { count: t.count, totalMs: Math.round(t.totalMs * 100) / 100 };
    return out;
  }

  /**
   * Times every query of every client `pool` connects from now on, and counts the round trips:
   * promise-style calls and callback-style ones (pool.query runs on a pooled client with a
   * callback). Submittables (a cursor) are passed through untimed and uncounted.
   */
  instrument(pool: pg.Pool): void {
    pool.on('connect', (client) => {
      this.countRoundTrips(client);
      const query = client.query.bind(client) as (...args: unknown[]) => unknown;
      (client as unknown as { query: (...args: unknown[]) => unknown }).query = (...args: unknown[]) => {
        const startedMs = performance.now();
        const label = statementLabel(args[0]);
        const done = () => this.record(label, performance.now() - startedMs);
        const last = args[args.length - 1];
        if (typeof last === 'function') {
          args[args.length - 1] = (...results: unknown[]) => {
            done();
            return (last as (...a: unknown[]) => unknown)(...results);
          };
          return query(...args);
        }
        const result = query(...args);
        if (result instanceof Promise) return result.finally(done);
        return result;
      };
    });
  }

  /** Counts `client`'s round trips (roundTrips) at its protocol connection (node-postgres's Connection). */
  private countRoundTrips(client: pg.PoolClient): void {
    const con = (client as unknown as { connection?: WireConnection }).connection;
    if (!con) return;
    let waiting = 0; // requests written whose ReadyForQuery has not come yet
    const request = () => {
      if (waiting === 0) this.trips++;
      waiting++;
    };
    const sync = con.sync.bind(con);
    const simpleQuery = con.query.bind(con);
    con.sync = () => {
      request();
      sync();
    };
    con.query = (text: string) => {
      request();
      simpleQuery(text);
    };
    // Before node-postgres's own listener, which writes the next queued query at once.
    con.prependListener('readyForQuery', () => {
      waiting = Math.max(0, waiting - 1);
    });
  }
}

/** The part of node-postgres's protocol Connection (pg/lib/connection.js) roundTrips watches. */
interface WireConnection {
  sync(): void;
  query(text: string): void;
  prependListener(event: 'readyForQuery', listener: () => void): unknown;
}
