/**
 * Input values refused at the API edge (src/graphql/input-values.ts, usage-command.ts
 * `validateJsonValue`): DateTime bounds and impossible dates, strings PostgreSQL cannot store,
 * and JSON depth / non-finite numbers.
 */
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { GraphQLError, parse } from 'graphql';
import { MAX_DATE_TIME, MIN_DATE_TIME, findUnstorableLiteral, findUnstorableVariable, isStorableString, parseDateTimeInput } from '../../src/graphql/input-values.js';
import { MAX_JSON_DEPTH, validateJsonValue } from '../../src/services/usage-command.js';
import { LedgerError } from '../../src/ledger/errors.js';

function refusal(v: unknown): GraphQLError {
  try {
    parseDateTimeInput(v);
  } catch (e) {
    expect(e).toBeInstanceOf(GraphQLError);
    expect((e as GraphQLError).extensions.code).toBe('BAD_USER_INPUT');
    return e as GraphQLError;
  }
  throw new Error(`expected ${JSON.stringify(v)} to be refused`);
}

describe('parseDateTimeInput', () => {
  it('accepts the first and last instants of the range, at any offset', () => {
    expect(parseDateTimeInput('0001-01-01T00:00:00Z').toISOString()).toBe('0001-01-01T00:00:00.000Z');
    expect(parseDateTimeInput('0001-01-01T05:30:00+05:30').getTime()).toBe(MIN_DATE_TIME.getTime());
    expect(parseDateTimeInput('9999-12-31T23:59:59.999Z').toISOString()).toBe('9999-12-31T23:59:59.999Z');
    expect(parseDateTimeInput('9999-12-31T18:59:59.999999999-05:00').getTime()).toBe(MAX_DATE_TIME.getTime());
  });

  it('refuses one millisecond outside the range, and offsets that carry a year-1 or year-9999 text outside', () => {
    for (const v of ['0000-12-31T23:59:59.999Z', '0001-01-01T00:00:00+00:01', '0001-01-01T00:00:00+01:00', '0000-01-01T00:00:00Z', '9999-12-31T23:59:59-05:00', '9999-12-31T23:59:59.999-00:01']) {
      expect(refusal(v).message).toBe('DateTime must be between 0001-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z (UTC)');
    }
  });

  it('refuses dates and times that do not exist instead of rolling them over', () => {
    for (const v of ['2099-02-30T00:00:00Z', '2100-02-29T00:00:00Z', '2026-04-31T00:00:00Z', '2026-00-10T00:00:00Z', '2026-13-01T00:00:00Z', '2026-01-00T00:00:00Z', '2026-01-01T24:00:00Z', '2026-01-01T23:60:00Z', '2026-01-01T23:59:60Z', '2026-01-01T00:00:00+24:00', '2026-01-01T00:00:00+05:60']) {
      expect(refusal(v).message).toMatch(/is not a valid date and time$/);
    }
  });

  it('refuses text of another form', () => {
    for (const v of ['2026-01-01T10:00:00', '2026-01-01', 'yesterday', '+010000-01-01T00:00:00Z', '2026-01-01T10:00:00+0100', 1_700_000_000_000, null]) {
      expect(refusal(v).message).toMatch(/^DateTime must be ISO-8601 with an offset/);
    }
  });

  it('accepts leap days and keeps milliseconds (extra digits truncated, as Date does)', () => {
    expect(parseDateTimeInput('2024-02-29T23:30:00-01:00').toISOString()).toBe('2024-03-01T00:30:00.000Z');
    expect(parseDateTimeInput('2000-02-29T12:00Z').toISOString()).toBe('2000-02-29T12:00:00.000Z');
    expect(parseDateTimeInput('2026-01-01T00:00:00.123987Z').toISOString()).toBe('2026-01-01T00:00:00.123Z');
  });

  it('round-trips every instant of the range, written in UTC or at any whole-minute offset', () => {
    fc.assert(
      fc.property(fc.integer({ min: MIN_DATE_TIME.getTime(), max: MAX_DATE_TIME.getTime() }), fc.integer({ min: -(23 * 60 + 59), max: 23 * 60 + 59 }), (ms, offsetMinutes) => {
        const iso = new Date(ms).toISOString();
        expect(parseDateTimeInput(iso).getTime()).toBe(ms);
        const local = new Date(ms + offsetMinutes * 60_000);
        const text = local.toISOString().slice(0, -1);
        if (text.startsWith('-') || text.startsWith('+') || text.startsWith('0000')) return; // its year is not 4 digits / year 0
        const abs = Math.abs(offsetMinutes);
        const offset = `${offsetMinutes < 0 ? '-' : '+'}${String(Math.floor(abs / 60)).padStart(2, '0')}:${String(abs % 60).padStart(2, '0')}`;
        expect(parseDateTimeInput(text + offset).getTime()).toBe(ms);
      }),
    );
  });
});

describe('storable strings', () => {
  it('refuses NUL and unpaired surrogates, keeps paired ones', () => {
    expect(['a\u0000', '\ud800', 'x\udc00y', '\ude00\ud83d'].map(isStorableString)).toEqual([false, false, false, false]);
    expect(['', 'plain', '\ud83d\ude00', 'tab\tnewline\n', '\uffff'].map(isStorableString)).toEqual([true, true, true, true, true]);
  });

  it('names the variable path of the first unstorable string or key, at any depth, without recursion', () => {
    expect(findUnstorableVariable({ input: { a: 'ok', list: ['x', { deep: 'b\u0000' }] } })).toBe('$input.list[1].deep');
    expect(findUnstorableVariable({ inputs: [{}, { metadata: { '\ud800': 1 } }] })).toBe('$inputs[1].metadata.\ud800');
    expect(findUnstorableVariable({ k: '\udc00' })).toBe('$k');
    expect(findUnstorableVariable({ input: { a: 'ok', n: 1, b: true, z: null } })).toBeNull();
    expect(findUnstorableVariable(null)).toBeNull();
    let deep: unknown = '\u0000';
    for (let i = 0; i < 100_000; i++) deep = [deep];
    expect(findUnstorableVariable({ m: deep })).toMatch(/^\$m(\[0\]){100000}$/);
  });

  it('names the literal path of the first unstorable string in a document, and caches per document', () => {
    const doc = parse('mutation { a: recordUsage(input: { tags: ["ok", "x\\u0000"], agentId: "ok" }) { id } }');
    expect(findUnstorableLiteral(doc)).toBe('recordUsage(input).tags[1]');
    expect(findUnstorableLiteral(doc)).toBe('recordUsage(input).tags[1]');
    expect(findUnstorableLiteral(parse('query($a: String = "\\u0000") { f(x: $a) }'))).toBe('$a (default)');
    expect(findUnstorableLiteral(parse('query { f(x: "fine", y: ["\\ud83d\\ude00"]) @d(r: "x") }'))).toBeNull();
  });
});

describe('validateJsonValue', () => {
  const nested = (depth: number): unknown => JSON.parse('['.repeat(depth) + ']'.repeat(depth));
  const refused = (v: unknown) => {
    try {
      validateJsonValue(v, 'metadata');
    } catch (e) {
      expect(e).toBeInstanceOf(LedgerError);
      expect((e as LedgerError).code).toBe('BAD_USER_INPUT');
      return (e as LedgerError).message;
    }
    throw new Error('expected a refusal');
  };

  it(`accepts ${MAX_JSON_DEPTH} levels of nesting and refuses ${MAX_JSON_DEPTH + 1} (and 3,000) without overflowing the stack`, () => {
    expect(validateJsonValue(nested(MAX_JSON_DEPTH), 'metadata')).toEqual(nested(MAX_JSON_DEPTH));
    expect(refused(nested(MAX_JSON_DEPTH + 1))).toBe(`metadata: must nest arrays and objects at most ${MAX_JSON_DEPTH} levels deep`);
    expect(refused({ a: { b: nested(3000) } })).toMatch(/levels deep/);
  });

  it('refuses non-finite numbers anywhere and keeps every other JSON value', () => {
    for (const v of [Infinity, { a: -Infinity }, [1, [NaN]]]) expect(refused(v)).toMatch(/numbers must be finite/);
    const fine = { s: 'x', n: 1.5e300, z: -0, b: false, nil: null, list: [1, 'two', { three: 3 }] };
    expect(validateJsonValue(fine, 'metadata')).toBe(fine);
  });
});
