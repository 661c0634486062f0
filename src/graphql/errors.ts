/**
 * The error model at the API edge (architecture: "Error model"): LedgerErrors become GraphQL
 * errors with `extensions.code`; GraphQL errors that already carry a code pass through; a
 * database that is unreachable, lost or out of time is UNAVAILABLE; anything else is a bug,
 * masked to the client as INTERNAL_SERVER_ERROR and logged with the request id.
 */
import { GraphQLError } from 'graphql';
import { LedgerError } from '../ledger/errors.js';
import { isDatabaseUnavailable } from '../db/pg.js';

/** Builds a client-facing GraphQL error with a stable code. */
export function codedError(code: string, message: string, extra: Record<string, unknown> = {}): GraphQLError {
  return new GraphQLError(message, { extensions: { code, ...extra } });
}

/** Unwraps GraphQLError.originalError chains. */
function rootCause(error: unknown): unknown {
  let e = error;
  for (let i = 0; i < 5 && e instanceof GraphQLError && e.originalError; i++) e = e.originalError;
  return e;
}

/**
 * Refusals that would tell a public visitor about the platform's billing (issue #5): for
 * requests on behalf of public visitors they are answered with a neutral UNAVAILABLE and
 * NEUTRAL_MESSAGE, and the real reason is only logged.
 */
export const BILLING_REFUSALS: ReadonlySet<string> = new Set(['INSUFFICIENT_CREDITS', 'BUDGET_EXCEEDED']);

/** What public visitors read instead of a billing refusal (no amounts, no reason). */
export const NEUTRAL_MESSAGE = 'This service is temporarily unavailable. Please try again later.';

/**
 * What a client reads when the database could not be reached, dropped the connection or ran out
 * of time in the middle of its request (UNAVAILABLE). The outcome of a money-moving request may
 * be unknown (the COMMIT may have succeeded and only its answer been lost), so it says how to
 * find out safely.
 */
export const DATABASE_UNAVAILABLE_MESSAGE =
  'The ledger database is temporarily unavailable. Retry with the same idempotency key: a request that was recorded is replayed, never applied twice.';

/**
 * Codes graphql-yoga/graphql-js give to a request that is malformed: the client's fault.
 * OPERATION_RESOLUTION_FAILURE is @graphql-tools/executor's for an operationName the document
 * does not define, or several operations and no operationName (and yoga's for a mutation sent
 * with GET); it is not in the contract's closed list, so it is answered as BAD_USER_INPUT too.
 */
const CLIENT_FAULT_CODES = new Set(['GRAPHQL_VALIDATION_FAILED', 'GRAPHQL_PARSE_FAILED', 'BAD_REQUEST', 'BAD_USER_INPUT', 'OPERATION_RESOLUTION_FAILURE']);

/**
 * Maps any error thrown while executing to what the client may see.
 * - a LedgerError anywhere in the chain: its code and message;
 * - a GraphQL error with a code: kept, except parse/validation codes, which become
 *   BAD_USER_INPUT (the contract's code for malformed input);
 * - a GraphQL error from graphql-js itself (argument/variable coercion, unknown fields): the
 *   client's fault, BAD_USER_INPUT with graphql-js's message;
 * - a database that cannot be reached, dropped the connection or ran out of time (statement,
 *   lock or idle-in-transaction timeout; db/pg.ts `isDatabaseUnavailable`): UNAVAILABLE with
 *   DATABASE_UNAVAILABLE_MESSAGE and the request id, and `audience.onUnavailable` is called with
 *   it for logging (not a bug, so not `onUnexpected`);
 * - anything else is a bug: masked as INTERNAL_SERVER_ERROR with the request id, and
 *   `onUnexpected` is called with it for logging;
 * - with `audience.publicAudience`, billing refusals (BILLING_REFUSALS) become a neutral
 *   UNAVAILABLE; `onNeutralized` receives the real error for logging.
 */
export function maskError(
  error: unknown,
  requestId: string | undefined,
  onUnexpected: (err: unknown) => void,
  audience: { publicAudience: boolean; onNeutralized?: (err: LedgerError) => void; onUnavailable?: (err: unknown) => void } = { publicAudience: false },
): GraphQLError {
  const cause = rootCause(error);
  const gql = error instanceof GraphQLError ? error : null;
  const at = { nodes: gql?.nodes, path: gql?.path };
  if (cause instanceof LedgerError) {
    if (audience.publicAudience && BILLING_REFUSALS.has(cause.code)) {
      audience.onNeutralized?.(cause);
      return new GraphQLError(NEUTRAL_MESSAGE, { ...at, extensions: { code: 'UNAVAILABLE', requestId } });
    }
    return new GraphQLError(cause.message, { ...at, extensions: { ...(cause.details ?? {}), code: cause.code } });
  }
  const coded = [gql, cause].find((e): e is GraphQLError => e instanceof GraphQLError && typeof e.extensions?.code === 'string');
  if (coded) {
    const code = coded.extensions.code as string;
    const { http: _http, ...rest } = coded.extensions as Record<string, unknown>;
    if (CLIENT_FAULT_CODES.has(code)) return new GraphQLError((gql ?? coded).message, { ...at, extensions: { ...rest, code: 'BAD_USER_INPUT' } });
    if (coded === gql) return gql;
    return new GraphQLError(coded.message, { ...at, extensions: coded.extensions });
  }
  if (cause instanceof GraphQLError) {
    return new GraphQLError((gql ?? cause).message, { ...at, extensions: { code: 'BAD_USER_INPUT' } });
  }
  if (isDatabaseUnavailable(cause)) {
    audience.onUnavailable?.(cause);
    return new GraphQLError(DATABASE_UNAVAILABLE_MESSAGE, { ...at, extensions: { code: 'UNAVAILABLE', requestId } });
  }
  onUnexpected(cause);
  return new GraphQLError('Unexpected error.', { ...at, extensions: { code: 'INTERNAL_SERVER_ERROR', requestId } });
}
