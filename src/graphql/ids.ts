/**
 * Relay global ids at the API edge. Inputs carry global ids (base64 "Type:uuid"); a malformed
 * id, an id of another type, or a well-formed id of nothing all answer NOT_FOUND, exactly like
 * an id of another tenant.
 */
import { decodeGlobalID, encodeGlobalID } from '@pothos/plugin-relay';
import { LedgerError } from '../ledger/errors.js';

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

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
    if (!UUID_RE.test(id)) return null;
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
