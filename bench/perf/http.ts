/**
 * A lean keep-alive GraphQL-over-HTTP client for the perf bench (bench/perf.ts).
 *
 * node:http with a keep-alive Agent sized to the load's concurrency: each in-flight request
 * holds one reused TCP connection, so N concurrent loops use N connections, like N clients of a
 * connection-pooling SDK. It is cheaper per request than the global fetch, which matters on a
 * 2-core machine where the load generator shares the cores with the server and PostgreSQL.
 * Query texts are plain strings (no TypedDocumentNode/print on the hot path).
 */
import { Agent, request } from 'node:http';

/** A GraphQL error as the server sends it. */
export interface GqlError {
  message: string;
  extensions?: { code?: string };
}

/** The outcome of one operation. `errorCode` is null when the response had no error. */
export interface GqlResult<T> {
  data: T | null;
  errors: GqlError[];
  /** extensions.code of the first error, HTTP_<status>, NETWORK_ERROR, TIMEOUT or BAD_RESPONSE; null when ok. */
  errorCode: string | null;
  status: number;
}

/** A client bound to one endpoint, credential and connection pool. */
export interface PerfClient {
  /** Runs one operation; never throws (transport failures come back as errorCode). */
  gql<T = Record<string, unknown>>(query: string, variables?: Record<string, unknown>, timeoutMs?: number): Promise<GqlResult<T>>;
  /** Closes the pooled connections. */
  close(): void;
}

/**
 * Creates a keep-alive client for `graphqlUrl`.
 * @param graphqlUrl e.g. http://127.0.0.1:4000/graphql
 * @param token bearer token (the admin key)
 * @param maxSockets connection pool size (the load's concurrency)
 */
export function createPerfClient(graphqlUrl: string, token: string, maxSockets: number): PerfClient {
  const url = new URL(graphqlUrl);
  const agent = new Agent({ keepAlive: true, maxSockets, maxFreeSockets: maxSockets, scheduling: 'lifo' });
  const baseHeaders = {
    'content-type': 'application/json',
    accept: 'application/graphql-response+json, application/json',
    authorization: `Bearer ${token}`,
  };
  const gql = <T>(query: string, variables: Record<string, unknown> = {}, timeoutMs = 60_000): Promise<GqlResult<T>> =>
    new Promise((resolve) => {
      const body = JSON.stringify({ query, variables });
      let settled = false;
      const done = (r: GqlResult<T>) => {
        if (!settled) {
          settled = true;
          resolve(r);
        }
      };
      const fail = (code: string, message: string, status = 0) => done({ data: null, errors: [{ message }], errorCode: code, status });
      const req = request(
        {
          agent,
          host: url.hostname,
          port: url.port,
          path: url.pathname,
          method: 'POST',
          headers: { ...baseHeaders, 'content-length': Buffer.byteLength(body) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (e) => fail('NETWORK_ERROR', e.message, res.statusCode ?? 0));
          res.on('end', () => {
            const status = res.statusCode ?? 0;
            let json: { data?: T | null; errors?: GqlError[] };
            try {
              json = JSON.parse(Buffer.concat(chunks).toString('utf8')) as typeof json;
            } catch {
              fail(`HTTP_${status}`, `non-JSON body (HTTP ${status})`, status);
              return;
            }
            const errors = Array.isArray(json.errors) ? json.errors : [];
            const first = errors[0];
            done({
              data: json.data ?? null,
              errors,
              errorCode: first ? (first.extensions?.code ?? 'UNKNOWN') : json.data == null ? 'BAD_RESPONSE' : null,
              status,
            });
          });
        },
      );
      req.setTimeout(timeoutMs, () => {
        req.destroy();
        fail('TIMEOUT', `no answer within ${timeoutMs} ms`);
      });
      req.on('error', (e) => fail('NETWORK_ERROR', e.message));
      req.end(body);
    });
  return { gql, close: () => agent.destroy() };
}
