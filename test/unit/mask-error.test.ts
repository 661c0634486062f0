/**
 * The API's error model (src/graphql/errors.ts): domain errors keep their code, malformed input
 * is BAD_USER_INPUT, and anything else is masked and reported for logging.
 */
import { describe, expect, it } from 'vitest';
import { GraphQLError } from 'graphql';
import { maskError } from '../../src/graphql/errors.js';
import { LedgerError } from '../../src/ledger/errors.js';

describe('maskError', () => {
  it('keeps a LedgerError code and message, wrapped or not', () => {
    const err = new LedgerError('INSUFFICIENT_CREDITS', 'not enough');
    const wrapped = new GraphQLError('wrapped', { originalError: err, path: ['recordUsage'] });
    const seen: unknown[] = [];
    const out = maskError(wrapped, 'r1', (e) => seen.push(e));
    expect([out.message, out.extensions.code, out.path]).toEqual(['not enough', 'INSUFFICIENT_CREDITS', ['recordUsage']]);
    expect(seen).toEqual([]);
  });

  it('masks an unexpected error (no message, no stack, no SQL) and hands the original to the logger', () => {
    const bug = new Error('duplicate key value violates unique constraint "usage_events_pkey"');
    const seen: unknown[] = [];
    const out = maskError(new GraphQLError('x', { originalError: bug }), 'req-42', (e) => seen.push(e));
    expect(out.message).toBe('Unexpected error.');
    expect(out.extensions).toEqual({ code: 'INTERNAL_SERVER_ERROR', requestId: 'req-42' });
    expect(JSON.stringify(out.toJSON())).not.toContain('usage_events');
    expect(seen).toEqual([bug]);
  });

  it('turns graphql-js coercion errors and validation codes into BAD_USER_INPUT', () => {
    const inner = new GraphQLError('Int cannot represent non-integer value: 1.5');
    const outer = new GraphQLError('Variable "$t" got invalid value 1.5; Int cannot represent non-integer value: 1.5', { originalError: inner });
    expect(maskError(outer, 'r', () => undefined).extensions.code).toBe('BAD_USER_INPUT');
    const validation = new GraphQLError('Unknown argument "x".', { extensions: { code: 'GRAPHQL_VALIDATION_FAILED' } });
    expect(maskError(validation, 'r', () => undefined).extensions.code).toBe('BAD_USER_INPUT');
  });
});
