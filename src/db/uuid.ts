/**
 * The form of the database's ids (PostgreSQL `uuid`, written by gen_random_uuid()), checked before
 * a text from outside (a GraphQL id, an API key id, a payment provider's metadata) is compared
 * with a uuid column: PostgreSQL refuses a malformed uuid with an error instead of finding nothing.
 */
/**
 * The canonical 8-4-4-4-12 form as a pattern (lower-case hex; match it case-insensitively: `i` in
 * JavaScript, `~*` in PostgreSQL), for SQL that must check a text before casting it to uuid.
 */
export const UUID_PATTERN = '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';

const UUID_RE = new RegExp(UUID_PATTERN, 'i');

/**
 * True when `text` is a uuid in its canonical 8-4-4-4-12 hexadecimal form (either case; RFC 9562
 * section 4), the form PostgreSQL prints. Any version or variant is accepted.
 */
export function isUuid(text: string): boolean {
  return UUID_RE.test(text);
}
