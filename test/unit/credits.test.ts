import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import {
  MAX_ABS_MICRO_CREDITS,
  formatCredits,
  parseCredits,
  parseExactDecimal,
  parsePositiveCredits,
} from '../../src/ledger/credits.js';
import { LedgerError } from '../../src/ledger/errors.js';

/** Largest micro-credit amount a signed 64-bit column holds (parseCredits' effective upper bound). */
const INT64_MAX = 2n ** 63n - 1n;

function badInputOf(fn: () => unknown): LedgerError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(LedgerError);
    expect((e as LedgerError).code).toBe('BAD_USER_INPUT');
    return e as LedgerError;
  }
  throw new Error('expected a BAD_USER_INPUT LedgerError');
}

describe('parseCredits', () => {
  it.each([
    ['0', 0n],
    ['1', 1_000_000n],
    ['1000', 1_000_000_000n],
    ['0.25', 250_000n],
    ['-3.5', -3_500_000n],
    ['12.345678', 12_345_678n],
    ['0.000001', 1n],
    ['1.500000', 1_500_000n],
    ['007', 7_000_000n],
    ['-0', 0n],
  ])('parses %j', (text, micro) => {
    expect(parseCredits(text)).toBe(micro);
  });

  it('accepts JS numbers whose shortest text is plain decimal', () => {
    expect(parseCredits(0.25)).toBe(250_000n);
    expect(parseCredits(3)).toBe(3_000_000n);
    expect(parseCredits(-1.5)).toBe(-1_500_000n);
    expect(parseCredits(0.000001)).toBe(1n);
  });

  it.each([
    'NaN', 'Infinity', '-Infinity', '1e400', '1e5', '1E5', '1.0000001', '', ' 1', '1 ', '+1', '0x10',
    '1,5', '.5', '5.', '--1', '1.2.3', 'abc', '١',
  ])('rejects the string %j', (text) => {
    badInputOf(() => parseCredits(text));
  });

  it.each([
    ['null', null],
    ['undefined', undefined],
    ['an object', {}],
    ['an array', [1]],
    ['true', true],
    ['NaN', Number.NaN],
    ['1e400 (Infinity)', 1e400],
    ['-Infinity', Number.NEGATIVE_INFINITY],
    ['1e21 (exponent text)', 1e21],
    ['1e-7 (exponent text)', 1e-7],
    ['0.1 + 0.2 (17 decimals)', 0.1 + 0.2],
  ])('rejects %s', (_label, value) => {
    badInputOf(() => parseCredits(value));
  });

  it('accepts up to the signed 64-bit limit and rejects huge values', () => {
    expect(parseCredits(formatCredits(INT64_MAX))).toBe(INT64_MAX);
    badInputOf(() => parseCredits(formatCredits(INT64_MAX + 1n)));
    badInputOf(() => parseCredits(formatCredits(MAX_ABS_MICRO_CREDITS + 1n)));
    badInputOf(() => parseCredits(formatCredits(-MAX_ABS_MICRO_CREDITS - 1n)));
    badInputOf(() => parseCredits('9'.repeat(40)));
    badInputOf(() => parseCredits('1'.repeat(70)));
  });

  it('names the field in the error', () => {
    const err = badInputOf(() => parseCredits('1e5', 'amount'));
    expect(err.message).toMatch(/^amount: /);
    expect(err.details).toEqual({ field: 'amount' });
  });

  it('parsePositiveCredits rejects zero and negatives', () => {
    expect(parsePositiveCredits('0.000001')).toBe(1n);
    badInputOf(() => parsePositiveCredits('0'));
    badInputOf(() => parsePositiveCredits('-1'));
  });
});

describe('formatCredits', () => {
  it.each([
    [0n, '0'],
    [1n, '0.000001'],
    [250_000n, '0.25'],
    [1_000_000_000n, '1000'],
    [-3_500_000n, '-3.5'],
    [12_345_678n, '12.345678'],
    [-1n, '-0.000001'],
    [10_000_000n, '10'],
  ])('formats %s as %j', (micro, text) => {
    expect(formatCredits(micro)).toBe(text);
  });

  it('round-trips: parse(format(x)) == x and format(parse(format(x))) == format(x)', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -INT64_MAX, max: INT64_MAX }), (micro) => {
        const text = formatCredits(micro);
        expect(parseCredits(text)).toBe(micro);
        expect(formatCredits(parseCredits(text))).toBe(text);
      }),
      { numRuns: 500 },
    );
  });

  it('always produces the canonical form: no exponent, no trailing zeros, no "+", no "-0"', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(10n ** 24n), max: 10n ** 24n }), (micro) => {
        const text = formatCredits(micro);
        expect(text).toMatch(/^-?(0|[1-9]\d*)(\.\d{0,5}[1-9])?$/);
        expect(text).not.toBe('-0');
      }),
      { numRuns: 500 },
    );
  });

  it('canonicalizes any accepted spelling (trailing zeros, leading zeros)', () => {
    fc.assert(
      fc.property(
        fc.bigInt({ min: 0n, max: 10n ** 15n }),
        fc.integer({ min: 0, max: 3 }),
        fc.integer({ min: 0, max: 3 }),
        (micro, lead, trail) => {
          const canon = formatCredits(micro);
          const frac = canon.includes('.') ? '' : '.';
          const spelled = '0'.repeat(lead) + canon + (trail > 0 ? frac + '0'.repeat(Math.min(trail, 6 - (canon.split('.')[1]?.length ?? 0))) : '');
          expect(formatCredits(parseCredits(spelled))).toBe(canon);
        },
      ),
    );
  });
});

describe('parseExactDecimal', () => {
  it('keeps exact digits beyond 6 decimals when allowed', () => {
    expect(parseExactDecimal('0.000000075', 'price')).toEqual({ units: 75n, scale: 9 });
    expect(parseExactDecimal('2.50', 'price')).toEqual({ units: 25n, scale: 1 });
  });

  it('enforces maxScale without rounding', () => {
    badInputOf(() => parseExactDecimal('0.123', 'x', 2));
    expect(parseExactDecimal('0.120', 'x', 2)).toEqual({ units: 12n, scale: 2 });
  });
});
