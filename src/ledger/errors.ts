/**
 * Stable error codes of creditpool's public API (contract README, "Failures").
 * Every expected failure carries one of these as GraphQL `extensions.code`.
 */
export const ERROR_CODES = [
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'NOT_FOUND',
  'BAD_USER_INPUT',
  'INSUFFICIENT_CREDITS',
  'BUDGET_EXCEEDED',
  'IDEMPOTENCY_CONFLICT',
  'RESERVATION_NOT_ACTIVE',
  'PAYMENT_FAILED',
  'RATE_LIMITED',
  'UNAVAILABLE',
] as const;

/** One of the stable public error codes. */
export type ErrorCode = (typeof ERROR_CODES)[number];

/**
 * An expected domain failure (bad input, not enough credit, conflicting idempotency key, ...).
 * Thrown by pure ledger rules and services; the GraphQL layer maps `code` to
 * `extensions.code` exactly once. A thrown LedgerError always means "nothing was changed":
 * services throw it inside their transaction, which is then rolled back.
 */
export class LedgerError extends Error {
  /** Stable public code (see ERROR_CODES). */
  readonly code: ErrorCode;
  /** Optional machine-readable details (e.g. { field: 'amount' }); never secrets. */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = 'LedgerError';
    this.code = code;
    this.details = details;
  }
}

/** Shorthand for a BAD_USER_INPUT LedgerError naming the offending field. */
export function badInput(field: string, message: string): LedgerError {
  return new LedgerError('BAD_USER_INPUT', `${field}: ${message}`, { field });
}

/**
 * Asserts an internal invariant. A failure is a bug, not a user error: it is thrown as a
 * plain Error (masked to clients, logged with the request id). TigerBeetle style: assert
 * what must hold rather than hope.
 * @throws Error when `condition` is false.
 */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}
