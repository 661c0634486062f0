/**
 * Exact credit amounts. Inside creditpool every amount is a bigint of micro-credits
 * (1 credit = 1,000,000 micro-credits); on the wire it is a canonical decimal string with at
 * most 6 fractional digits ("1000", "0.25", "-3.5"). No floating point is ever used for money
 * (contract: scalar Credits).
 */
import { badInput } from './errors.js';

/** Micro-credits in one credit. */
export const MICRO_PER_CREDIT = 1_000_000n;
/** Decimal places of a Credits value. */
export const CREDIT_DECIMALS = 6;

/** Largest accepted magnitude: 2^63 - 1 micro-credits (a signed 64-bit column), about 9.2e12 credits. */
export const MAX_ABS_MICRO_CREDITS = 2n ** 63n - 1n;

const DECIMAL_RE = /^(-)?(\d+)(?:\.(\d+))?$/;

/**
 * A parsed exact decimal: value = units / 10^scale. `scale` is the number of fractional
 * digits kept (trailing zeros removed, so each value has one representation).
 */
export interface ExactDecimal {
  /** Signed integer coefficient. */
  units: bigint;
  /** Number of fractional digits (>= 0). */
  scale: number;
}

/**
 * Parses a decimal given as a string ("12.5") or a JS number into an exact decimal.
 * Accepts only plain decimal notation: no exponents, NaN, Infinity, hex, blanks or a "+".
 * A number is accepted only when its shortest round-trip text is plain decimal.
 * @param field name of the input field, used in the error message.
 * @param maxScale most fractional digits allowed (more is an error, never rounded).
 * @throws LedgerError BAD_USER_INPUT on anything else.
 */
export function parseExactDecimal(input: unknown, field: string, maxScale = 18): ExactDecimal {
  let text: string;
  if (typeof input === 'string') text = input;
  else if (typeof input === 'number') {
    if (!Number.isFinite(input)) throw badInput(field, 'must be a finite decimal number');
    text = String(input);
  } else if (typeof input === 'bigint') text = input.toString();
  else throw badInput(field, 'must be a decimal string such as "12.5"');
  if (text.length > 64) throw badInput(field, 'too long');
  const m = DECIMAL_RE.exec(text);
  if (!m) throw badInput(field, `"${text.slice(0, 40)}" is not a plain decimal number (no exponents, NaN or Infinity)`);
  const [, sign, intPart, fracRaw = ''] = m;
  const frac = fracRaw.replace(/0+$/, '');
  if (frac.length > maxScale) throw badInput(field, `at most ${maxScale} fractional digits are allowed`);
  let units = BigInt((intPart ?? '0') + frac);
  if (sign) units = -units;
  return { units, scale: frac.length };
}

/**
 * Parses a Credits value ("12.5", "-3", 0.25) into micro-credits.
 * @returns bigint micro-credits.
 * @throws LedgerError BAD_USER_INPUT for more than 6 fractional digits, exponents, NaN,
 *   Infinity, non-numeric input, or a magnitude above MAX_ABS_MICRO_CREDITS.
 */
export function parseCredits(input: unknown, field = 'credits'): bigint {
  const d = parseExactDecimal(input, field, CREDIT_DECIMALS);
  const micro = d.units * 10n ** BigInt(CREDIT_DECIMALS - d.scale);
  if (micro > MAX_ABS_MICRO_CREDITS || -micro > MAX_ABS_MICRO_CREDITS) {
    throw badInput(field, 'amount is out of range');
  }
  return micro;
}

/**
 * Parses a strictly positive Credits value into micro-credits.
 * @throws LedgerError BAD_USER_INPUT when not a valid Credits value or not > 0.
 */
export function parsePositiveCredits(input: unknown, field = 'amount'): bigint {
  const micro = parseCredits(input, field);
  if (micro <= 0n) throw badInput(field, 'must be greater than 0');
  return micro;
}

/**
 * Formats micro-credits as the canonical Credits string: no exponent, no trailing zeros,
 * no "+" ("1000", "0.25", "-3.5", "12.345678").
 */
export function formatCredits(micro: bigint): string {
  return formatScaled(micro, CREDIT_DECIMALS);
}

/**
 * Formats `units / 10^scale` as a canonical decimal string (trailing zeros removed).
 */
export function formatScaled(units: bigint, scale: number): string {
  const neg = units < 0n;
  const abs = neg ? -units : units;
  const base = 10n ** BigInt(scale);
  const int = abs / base;
  let frac = scale > 0 ? (abs % base).toString().padStart(scale, '0').replace(/0+$/, '') : '';
  const text = frac ? `${int}.${frac}` : `${int}`;
  return neg && abs !== 0n ? `-${text}` : text;
}

/** Formats an ExactDecimal canonically. */
export function formatExactDecimal(d: ExactDecimal): string {
  return formatScaled(d.units, d.scale);
}

/**
 * Whole credits to micro-credits (for constants in code and tests): `credits(5)` is 5_000_000n.
 * @throws Error when `whole` is a number that is not a safe integer (a fraction, NaN, Infinity).
 */
export function credits(whole: number | bigint): bigint {
  if (typeof whole === 'number' && !Number.isSafeInteger(whole)) throw new Error('credits() takes whole credits');
  return BigInt(whole) * MICRO_PER_CREDIT;
}

/** Smaller of two bigints. */
export function minBig(a: bigint, b: bigint): bigint {
  return a < b ? a : b;
}

/** Larger of two bigints. */
export function maxBig(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}
