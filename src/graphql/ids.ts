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
 * @returns the row ids the cursors name (none, one or two: `after` and `before`).
 * @throws LedgerError BAD_USER_INPUT naming `after` / `before` when it is not such a cursor.
 */
export function assertRowCursors(args: CursorArgs): string[] {
  const ids: string[] = [];
  for (const field of ['after', 'before'] as const) {
    const cursor = args[field];
    if (cursor === null || cursor === undefined) continue;
    const decoded = Buffer.from(cursor, 'base64').toString('utf8');
    const id = decoded.slice('GPC:S:'.length);
    if (!decoded.startsWith('GPC:S:') || !isUuid(id)) {
      throw badInput(field, 'is not a cursor of this list (use a cursor or pageInfo cursor it returned)');
    }
    ids.push(id);
  }
  return ids;
}

/** The Account relations listed by a connection whose cursor is the row id (Prisma model Account). */
export type AccountRowRelation = 'grants' | 'usageEvents' | 'ledgerEntries' | 'alerts';

/**
 * The Prisma `where` that keeps a connection's rows only when every row its cursors name
 * (`ids`, from {@link assertRowCursors}) is a row of the same account, listed by `relation`;
 * `{}` without cursors. Prisma places a cursor by the cursor row's own order value, looked up by
 * id alone (not within the connection's filter), so a cursor naming another account's row used to
 * page this account's rows cut at that row: an end user holding another tenant's usage event,
 * grant, ledger entry or alert id learned that it exists and where it falls in time, where a
 * cursor of no row gives an empty page (README "Who may do what": another tenant's id answers
 * like a missing one). With this filter such a cursor gives that same empty page.
 */
export function rowsOfCursorAccount(ids: readonly string[], relation: AccountRowRelation): { AND?: Array<{ account: { [R in AccountRowRelation]?: { some: { id: string } } } }> } {
  return ids.length === 0 ? {} : { AND: ids.map((id) => ({ account: { [relation]: { some: { id } } } })) };
}

/**
 * The `query` of a connection whose rows are listed newest first by their `seq` (Account.grants,
 * ledger, alerts; `relation` names the list on Account): checks the cursors
 * ({@link assertRowCursors}), keeps the rows only when the cursors name rows of the same account
 * ({@link rowsOfCursorAccount}), and orders by `seq` descending.
 * @throws LedgerError BAD_USER_INPUT for a cursor that is not one of the list's.
 */
export function newestFirstRows(relation: Exclude<AccountRowRelation, 'usageEvents'>) {
  return (args: CursorArgs) => ({ where: rowsOfCursorAccount(assertRowCursors(args), relation), orderBy: { seq: 'desc' as const } });
}
