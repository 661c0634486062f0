/**
 * Relay global ids at the API edge. Inputs carry global ids (base64 "Type:uuid"); a malformed
 * id, an id of another type, or a well-formed id of nothing all answer NOT_FOUND, exactly like
 * an id of another tenant.
 */
import { decodeGlobalID, encodeGlobalID } from '@pothos/plugin-relay';
import { LedgerError, badInput } from '../ledger/errors.js';
import { isUuid } from '../db/uuid.js';

/** The GraphQL type names whose ids are database uuids. */
export type NodeTypeName = 'Account' | 'CreditBatch' | 'CreditGrant' | 'UsageEvent' | 'LedgerEntry' | 'Reservation' | 'CreditAlert' | 'Plan' | 'CreditPack';

/** Encodes a database id as a global id of `typename`. */
export function toGlobalId(typename: NodeTypeName, id: string): string {
  return encodeGlobalID(typename, id);
}

/** Decodes a global id into { typename, id } or null when malformed. */
export function tryDecodeId(globalId: string): { typename: string; id: string } | null {
  try {
    const { typename, id } = decodeGlobalID(globalId);
    if (!isUuid(id)) return null;
    return { typename, id: id.toLowerCase() };
  } catch {
    return null;
  }
}

/**
 * The database id inside a global id of the expected type.
 * @throws LedgerError NOT_FOUND when malformed or of another type.
 */
export function decodeId(globalId: string, expected: NodeTypeName, what: string = expected): string {
  const decoded = tryDecodeId(globalId);
  if (!decoded || decoded.typename !== expected) throw new LedgerError('NOT_FOUND', `${what} not found`);
  return decoded.id;
}

/**
 * The connection arguments a row cursor travels in (Relay: `after` pages forward, `before` back).
 */
export interface CursorArgs {
  after?: string | null;
  before?: string | null;
}

/**
 * Checks the cursors of a connection whose cursor is its rows' uuid `id` (Account.usage, ledger,
 * grants, alerts). Such a cursor is what @pothos/plugin-prisma hands out: base64 of
 * `GPC:S:<uuid>`. The plugin itself rejects text that is not base64 of `GPC:<chunk>`, but passes
 * any other chunk (`GPC:S:abc`, `GPC:N:5`, `GPC:Z:`) to Prisma as the row id, which the uuid
 * column refuses: without this check a client's malformed cursor was an INTERNAL_SERVER_ERROR
 * (contract: malformed input is BAD_USER_INPUT). Call it from the connection's `query`, which
 * runs after the plugin's own parse and before any SQL. A well-formed cursor of no row is not an
 * error: its page is empty.
 * @throws LedgerError BAD_USER_INPUT naming `after` / `before` when it is not such a cursor.
 */
export function assertRowCursors(args: CursorArgs): void {
  for (const field of ['after', 'before'] as const) {
    const cursor = args[field];
    if (cursor === null || cursor === undefined) continue;
    const decoded = Buffer.from(cursor, 'base64').toString('utf8');
    if (!decoded.startsWith('GPC:S:') || !isUuid(decoded.slice('GPC:S:'.length))) {
      throw badInput(field, 'is not a cursor of this list (use a cursor or pageInfo cursor it returned)');
    }
  }
}

/**
 * The `query` of a connection whose rows are listed newest first by their `seq` (Account.grants,
 * ledger, alerts): checks the cursors ({@link assertRowCursors}) and orders by `seq` descending.
 * @throws LedgerError BAD_USER_INPUT for a cursor that is not one of the list's.
 */
export function newestFirstRows(args: CursorArgs): { orderBy: { seq: 'desc' } } {
  assertRowCursors(args);
  return { orderBy: { seq: 'desc' } };
}
