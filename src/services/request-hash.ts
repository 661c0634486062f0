/**
 * Request fingerprints for idempotency: sha256 of a canonical JSON encoding (keys sorted,
 * undefined and null dropped, bigint as decimal text), so "same key + same input" can be told
 * from "same key + different input" (IDEMPOTENCY_CONFLICT). Stripe-style semantics.
 */
import { createHash } from 'node:crypto';

function canonical(value: unknown): unknown {
  if (value === null || value === undefined) return undefined;
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map((v) => canonical(v) ?? null);
  if (typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value as object).sort()) {
      const v = canonical((value as Record<string, unknown>)[key]);
      if (v !== undefined) out[key] = v;
    }
    return out;
  }
  return value;
}

/** Hex sha256 of the canonical form of `value`. */
export function requestHash(value: unknown): string {
  return createHash('sha256').update(JSON.stringify(canonical(value) ?? null)).digest('hex');
}
