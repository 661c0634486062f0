/**
 * The error model at the API edge (architecture: "Error model"): LedgerErrors become GraphQL
 * errors with `extensions.code`; GraphQL errors that already carry a code pass through; anything
 * else is a bug, masked to the client as INTERNAL_SERVER_ERROR and logged with the request id.
 */
import { GraphQLError } from 'graphql';
import { LedgerError } from '../ledger/errors.js';

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
 * Maps any error thrown while executing to what the client may see.
 * @param onUnexpected called with the original error for errors that get masked.
 */
export function maskError(error: unknown, requestId: string | undefined, onUnexpected: (err: unknown) => void): GraphQLError {
  const cause = rootCause(error);
  const gql = error instanceof GraphQLError ? error : null;
  if (cause instanceof LedgerError) {
    return new GraphQLError(cause.message, {
      nodes: gql?.nodes,
      path: gql?.path,
      extensions: { code: cause.code, ...(cause.details ? { details: cause.details } : {}) },
    });
  }
  if (cause instanceof GraphQLError && typeof cause.extensions?.code === 'string') {
    if (cause === gql) return cause;
    return new GraphQLError(cause.message, { nodes: gql?.nodes, path: gql?.path, extensions: cause.extensions });
  }
  if (gql && !gql.originalError) {
    // Parse/validation errors from graphql-js itself: the client's fault.
    return new GraphQLError(gql.message, { nodes: gql.nodes, path: gql.path, extensions: { code: 'BAD_USER_INPUT', ...gql.extensions } });
  }
  onUnexpected(cause);
  return new GraphQLError('Unexpected error.', {
    nodes: gql?.nodes,
    path: gql?.path,
    extensions: { code: 'INTERNAL_SERVER_ERROR', requestId },
  });
}
