/**
 * Exact rational arithmetic on bigints, for pricing.
 *
 * Why: a price converted from USD to credits is divided by Settings.creditUsdValue, and
 * 1 / creditUsdValue need not terminate in decimal ("0.03" -> 33.333... credits per USD).
 * Pricing therefore computes every cost line as an exact fraction and rounds exactly once,
 * at the end (see price-book.ts, "Rounding rule"). No floating point is ever involved.
 *
 * A Rational is always normalized: `den > 0` and gcd(|num|, den) = 1, so equal values have
 * equal fields. All functions are pure and never mutate their arguments.
 */
import { CREDIT_DECIMALS, formatScaled, parseExactDecimal, type ExactDecimal } from '../ledger/credits.js';
import { assert, badInput } from '../ledger/errors.js';

/** An exact fraction num/den (normalized: den > 0, lowest terms). */
export interface Rational {
  /** Signed numerator. */
  readonly num: bigint;
  /** Positive denominator. */
  readonly den: bigint;
}

function gcd(a: bigint, b: bigint): bigint {
  let x = a < 0n ? -a : a;
  let y = b < 0n ? -b : b;
  while (y !== 0n) {
    const t = x % y;
    x = y;
    y = t;
  }
  return x;
}

/**
 * Builds the normalized fraction num/den.
 * @throws Error (assertion) when den is 0: dividing by zero is a bug, never user input.
 */
export function rational(num: bigint, den: bigint = 1n): Rational {
  assert(den !== 0n, 'rational denominator must not be 0');
  if (den < 0n) {
    num = -num;
    den = -den;
  }
  const g = gcd(num, den);
  return g > 1n ? { num: num / g, den: den / g } : { num, den };
}

/** The value 0. */
export const ZERO: Rational = { num: 0n, den: 1n };
/** The value 1. */
export const ONE: Rational = { num: 1n, den: 1n };

/** units / 10^scale as an exact fraction. */
export function fromDecimal(d: ExactDecimal): Rational {
  return rational(d.units, 10n ** BigInt(d.scale));
}

/**
 * Parses a plain decimal ("0.03", 12.5) into a Rational (via ledger parseExactDecimal).
 * @throws LedgerError BAD_USER_INPUT when the input is not a plain decimal.
 */
export function parseRational(input: unknown, field: string, maxScale = 18): Rational {
  return fromDecimal(parseExactDecimal(input, field, maxScale));
}

/**
 * An integer (bigint or safe integer number) as a Rational.
 * @throws Error (assertion) when `n` is a number that is not a safe integer.
 */
export function fromInteger(n: bigint | number): Rational {
  if (typeof n === 'number') assert(Number.isSafeInteger(n), 'fromInteger takes a safe integer');
  return { num: BigInt(n), den: 1n };
}

/** a + b. */
export function add(a: Rational, b: Rational): Rational {
  if (a.den === b.den) return rational(a.num + b.num, a.den);
  return rational(a.num * b.den + b.num * a.den, a.den * b.den);
}

/** a - b. */
export function sub(a: Rational, b: Rational): Rational {
  return add(a, { num: -b.num, den: b.den });
}

/** a * b. */
export function mul(a: Rational, b: Rational): Rational {
  return rational(a.num * b.num, a.den * b.den);
}

/**
 * a / b.
 * @throws Error (assertion) when b is 0.
 */
export function div(a: Rational, b: Rational): Rational {
  assert(b.num !== 0n, 'division by zero');
  return rational(a.num * b.den, a.den * b.num);
}

/** Sum of any number of values (0 for none). */
export function sum(values: readonly Rational[]): Rational {
  return values.reduce(add, ZERO);
}

/** Three-way comparison: negative when a < b, 0 when equal, positive when a > b. */
export function compare(a: Rational, b: Rational): number {
  const l = a.num * b.den;
  const r = b.num * a.den;
  return l < r ? -1 : l > r ? 1 : 0;
}

/** True when the value is 0. */
export function isZero(a: Rational): boolean {
  return a.num === 0n;
}

/** Floor of num/den for den > 0 (bigint division truncates toward zero). */
function floorDiv(num: bigint, den: bigint): bigint {
  const q = num / den;
  return num % den !== 0n && num < 0n ? q - 1n : q;
}

/** Smallest integer >= a. */
export function ceil(a: Rational): bigint {
  return -floorDiv(-a.num, a.den);
}

/** Largest integer <= a. */
export function floor(a: Rational): bigint {
  return floorDiv(a.num, a.den);
}

/**
 * a * 10^scale rounded half-up (ties away from zero: 0.5 -> 1, -0.5 -> -1).
 * Returns the integer coefficient: the rounded value is result / 10^scale.
 * @throws Error (assertion) when `scale` is not a non-negative safe integer.
 */
export function roundHalfUpScaled(a: Rational, scale: number): bigint {
  assert(Number.isSafeInteger(scale) && scale >= 0, 'scale must be a non-negative integer');
  const n = a.num * 10n ** BigInt(scale);
  const abs = n < 0n ? -n : n;
  const q = (2n * abs + a.den) / (2n * a.den);
  return n < 0n ? -q : q;
}

/**
 * A credit amount in credits, rounded UP (toward +infinity) to the micro-credit.
 * This is the rounding of an event's total: never undercharge by a fraction.
 * @returns bigint micro-credits.
 */
export function ceilToMicroCredits(credits: Rational): bigint {
  return ceil(mul(credits, { num: 10n ** BigInt(CREDIT_DECIMALS), den: 1n }));
}

/**
 * A credit amount in credits, rounded half-up to the micro-credit (display of one line).
 * @returns bigint micro-credits.
 */
export function roundToMicroCredits(credits: Rational): bigint {
  return roundHalfUpScaled(credits, CREDIT_DECIMALS);
}

/**
 * Number of fractional digits of the exact decimal expansion, or null when it does not
 * terminate (the reduced denominator has a prime factor other than 2 and 5).
 */
export function terminatingScale(a: Rational): number | null {
  let d = a.den;
  let twos = 0;
  let fives = 0;
  while (d % 2n === 0n) {
    d /= 2n;
    twos++;
  }
  while (d % 5n === 0n) {
    d /= 5n;
    fives++;
  }
  return d === 1n ? Math.max(twos, fives) : null;
}

/** Decimal places shown for a value whose expansion does not terminate. */
export const NON_TERMINATING_DECIMALS = 12;

/** Most decimal places ever shown: the Decimal scalar accepts at most 18 on input. */
export const MAX_SHOWN_DECIMALS = 18;

/**
 * Canonical decimal text of a value (no exponent, no trailing zeros): exact when the
 * expansion terminates within MAX_SHOWN_DECIMALS (18) places; a longer terminating expansion
 * (e.g. a credit value of 0.016384 = 2^14/10^6 makes binary fractions) is rounded half-up to 18
 * places; a non-terminating one to `nonTerminatingDecimals` places (default 12; 1/3 ->
 * "0.333333333333"). So every string it returns is valid Decimal input again.
 */
export function toDecimalString(a: Rational, nonTerminatingDecimals = NON_TERMINATING_DECIMALS): string {
  const scale = terminatingScale(a);
  if (scale !== null && scale <= MAX_SHOWN_DECIMALS) return formatScaled((a.num * 10n ** BigInt(scale)) / a.den, scale);
  if (scale !== null) return formatScaled(roundHalfUpScaled(a, MAX_SHOWN_DECIMALS), MAX_SHOWN_DECIMALS);
  return formatScaled(roundHalfUpScaled(a, nonTerminatingDecimals), nonTerminatingDecimals);
}

/** A value rounded half-up to `decimals` places, as a canonical decimal string. */
export function toFixedDecimalString(a: Rational, decimals: number): string {
  return formatScaled(roundHalfUpScaled(a, decimals), decimals);
}

const NUMBER_TEXT_RE = /^(-)?(\d+)(?:\.(\d+))?(?:e([+-]?\d+))?$/i;

/**
 * The exact decimal a JS number stands for in its shortest round-trip text (String(n)):
 * 0.1 -> 1/10 (not the binary double 0.1000000000000000055...), 1.5e-7 -> 15/10^8.
 * Used only to read the price catalog's numbers; no arithmetic is done on the float.
 * @throws LedgerError BAD_USER_INPUT when n is NaN or infinite.
 */
export function exactDecimalFromNumber(n: number, field = 'number'): ExactDecimal {
  if (!Number.isFinite(n)) throw badInput(field, 'must be a finite number');
  const m = NUMBER_TEXT_RE.exec(String(n));
  assert(m !== null, `unexpected number text ${String(n)}`);
  const [, sign, intPart = '0', fracRaw = '', expText = '0'] = m;
  const exp = Number(expText);
  let units = BigInt(intPart + fracRaw);
  let scale = fracRaw.length - exp;
  if (scale < 0) {
    units *= 10n ** BigInt(-scale);
    scale = 0;
  }
  while (scale > 0 && units % 10n === 0n) {
    units /= 10n;
    scale--;
  }
  if (units === 0n) scale = 0;
  return { units: sign ? -units : units, scale };
}
