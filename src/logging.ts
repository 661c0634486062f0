/**
 * The processes' logger (pino) and what it keeps out of log lines. Operators ship logs to third
 * parties, so a line never carries a credential nor a customer's payment details:
 * - `err` (and the `error` / `reason` strings some lines carry) goes through pino's own error
 *   serializer, then {@link sanitizeLogged}: the user:password of any URL in its text (a fetch
 *   refusing `https://user:pass@host`, a driver echoing its connection URL) becomes `[redacted]`,
 *   and the objects Stripe's SDK hangs on its errors (`payment_method` with the card holder's
 *   billing details, `payment_intent`, `setup_intent`, `source`) are logged as their id only.
 * - pino's `redact` censors credential headers wherever a line would carry a request's or
 *   response's headers ({@link REDACTED_PATHS}).
 * Use {@link createLogger} in every process entry (src/main.ts, workers/main.ts) and in tests
 * that look at the log.
 */
import { pino, stdSerializers, type DestinationStream, type Logger } from 'pino';

/** What a secret is replaced with in a log line. */
export const REDACTED = '[redacted]';

/**
 * Paths pino's `redact` censors with {@link REDACTED}: credential headers of a request or
 * response logged as `req`/`res`/`headers` (or inside `err`), in Node's lower-case spelling.
 */
export const REDACTED_PATHS: readonly string[] = ['req', 'res', 'err', 'err.cause'].flatMap((at) =>
  ['authorization', 'cookie', 'set-cookie', '"stripe-signature"', '"proxy-authorization"'].flatMap((h) => [`${at}.headers.${h}`]),
).concat(['headers.authorization', 'headers.cookie', 'headers["set-cookie"]', 'headers["stripe-signature"]', 'headers["proxy-authorization"]']);

/** The userinfo (`user:password@`) of URLs in free text: scheme, `//`, then everything up to the last `@` of the authority. */
const URL_USERINFO_RE = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/?#]*@/gi;

/**
 * `text` with the user:password part of every URL in it replaced by {@link REDACTED}
 * (`https://user:pass@host/x` → `https://[redacted]@host/x`); the rest is kept.
 */
export function redactUrlCredentials(text: string): string {
  return text.replace(URL_USERINFO_RE, `$1${REDACTED}@`);
}

/**
 * Keys under which Stripe's SDK puts whole API objects on its errors (StripeError: the
 * PaymentMethod with `billing_details`, name, e-mail and address of the card holder; the
 * PaymentIntent or SetupIntent with its last error's PaymentMethod; a legacy source). Logged as
 * their id (Stripe's ids are not secret), or {@link REDACTED} when they have none.
 */
const PAYMENT_OBJECT_KEYS = new Set(['payment_method', 'payment_intent', 'setup_intent', 'source', 'raw']);

/** How deep {@link sanitizeLogged} walks (an error's causes and their fields). */
const MAX_DEPTH = 8;

/**
 * A logged value with what must not leave the process taken out (module comment): strings have
 * URL credentials redacted; objects and arrays are copied with their strings treated so, and
 * Stripe's payment objects ({@link PAYMENT_OBJECT_KEYS}) replaced by their id. Never throws;
 * the input is not changed.
 */
export function sanitizeLogged(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redactUrlCredentials(value);
  if (value === null || typeof value !== 'object' || depth >= MAX_DEPTH) return value;
  if (Array.isArray(value)) return value.map((v) => sanitizeLogged(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    if (PAYMENT_OBJECT_KEYS.has(key) && v !== null && typeof v === 'object') {
      const id = (v as { id?: unknown }).id;
      out[key] = typeof id === 'string' ? id : REDACTED;
    } else {
      out[key] = sanitizeLogged(v, depth + 1);
    }
  }
  return out;
}

/** pino's error serializer (with causes), then {@link sanitizeLogged}; other values (`err: err.message`) are sanitized as they are. */
function serializeError(err: unknown): unknown {
  return sanitizeLogged(err instanceof Error ? stdSerializers.errWithCause(err) : err);
}

/**
 * A pino logger with the sanitizing serializers and redaction of this module.
 * @param options `level` (LOG_LEVEL), `base` fields of every line (e.g. `{ service }`; pino's
 *   default pid and hostname when omitted), and `destination` (default stdout).
 */
export function createLogger(options: { level: string; base?: Record<string, unknown>; destination?: DestinationStream }): Logger {
  return pino(
    {
      level: options.level,
      ...(options.base ? { base: options.base } : {}),
      serializers: { err: serializeError, error: serializeError, reason: serializeError },
      redact: { paths: [...REDACTED_PATHS], censor: REDACTED },
    },
    options.destination,
  );
}
