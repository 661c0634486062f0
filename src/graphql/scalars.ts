/**
 * Custom scalars of the contract: Credits (bigint micro-credits inside, canonical decimal
 * string outside), Decimal (canonical decimal string), DateTime (ISO-8601 with offset, UTC out,
 * 0001-01-01 .. 9999-12-31 UTC: input-values.ts), BigInt (decimal string), JSON (at most 32
 * levels deep, finite numbers). Every parse failure is BAD_USER_INPUT.
 */
import { Kind, type ValueNode } from 'graphql';
import { builder } from './builder.js';
import { formatCredits, parseCredits, parseExactDecimal, formatExactDecimal } from '../ledger/credits.js';
import { codedError } from './errors.js';
import { LedgerError } from '../ledger/errors.js';
import { parseDateTimeInput } from './input-values.js';
import { validateJsonValue } from '../services/usage-command.js';

function literalText(ast: ValueNode, name: string): string {
  if (ast.kind === Kind.STRING || ast.kind === Kind.INT || ast.kind === Kind.FLOAT) return ast.value;
  throw codedError('BAD_USER_INPUT', `${name} must be a decimal string or number`);
}

function asGraphQL<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof LedgerError) throw codedError(err.code, err.message);
    throw err;
  }
}

/** Parses a Credits input (string or number) into micro-credits. */
export function parseCreditsInput(value: unknown): bigint {
  return asGraphQL(() => parseCredits(value, 'Credits'));
}

builder.scalarType('Credits', {
  description:
    'Exact decimal credit amount with at most 6 fractional digits, serialized as a string in canonical form ("1000", "0.25", "-3.5", "12.345678"). Input accepts a string or a number literal; more than 6 fractional digits, NaN, Infinity, exponents or non-numeric input is a BAD_USER_INPUT error.',
  serialize: (v) => formatCredits(v),
  parseValue: (v) => parseCreditsInput(v),
  parseLiteral: (ast) => parseCreditsInput(literalText(ast, 'Credits')),
});

builder.scalarType('DateTime', {
  description: 'ISO-8601 date-time with offset, serialized in UTC (2026-11-21T10:00:00.000Z).',
  serialize: (v) => (v instanceof Date ? v : new Date(v as unknown as string)).toISOString(),
  parseValue: (v) => parseDateTimeInput(v),
  parseLiteral: (ast) => parseDateTimeInput(ast.kind === Kind.STRING ? ast.value : null),
});

function parseDecimalInput(v: unknown): string {
  return asGraphQL(() => formatExactDecimal(parseExactDecimal(v, 'Decimal', 18)));
}

builder.scalarType('Decimal', {
  description: 'Exact decimal (USD amounts, percentages, quantities), serialized as a canonical string.',
  serialize: (v) => String(v),
  parseValue: (v) => parseDecimalInput(v),
  parseLiteral: (ast) => parseDecimalInput(literalText(ast, 'Decimal')),
});

function parseBigIntInput(v: unknown): bigint {
  if ((typeof v === 'string' && /^-?\d{1,19}$/.test(v)) || (typeof v === 'number' && Number.isSafeInteger(v))) return BigInt(v);
  throw codedError('BAD_USER_INPUT', 'BigInt must be an integer as a decimal string');
}

builder.scalarType('BigInt', {
  description: '64-bit integer serialized as a decimal string.',
  serialize: (v) => v.toString(),
  parseValue: (v) => parseBigIntInput(v),
  parseLiteral: (ast) => parseBigIntInput(ast.kind === Kind.STRING || ast.kind === Kind.INT ? ast.value : null),
});

function literalToJson(ast: ValueNode, variables?: Record<string, unknown> | null): unknown {
  switch (ast.kind) {
    case Kind.STRING:
    case Kind.BOOLEAN:
      return ast.value;
    case Kind.INT:
    case Kind.FLOAT:
      return Number(ast.value);
    case Kind.NULL:
      return null;
    case Kind.LIST:
      return ast.values.map((v) => literalToJson(v, variables));
    case Kind.OBJECT:
      return Object.fromEntries(ast.fields.map((f) => [f.name.value, literalToJson(f.value, variables)]));
    case Kind.VARIABLE:
      return variables?.[ast.name.value];
    default:
      throw codedError('BAD_USER_INPUT', 'unsupported JSON literal');
  }
}

/**
 * A JSON input: at most MAX_JSON_DEPTH levels deep, every number finite (usage-command.ts
 * `validateJsonValue`). Strings with NUL or lone surrogates are refused for every argument by
 * input-values.ts `refuseUnstorableStrings`.
 */
function parseJsonInput(v: unknown): unknown {
  return asGraphQL(() => validateJsonValue(v, 'JSON'));
}

builder.scalarType('JSON', {
  description: 'Arbitrary JSON value (metadata).',
  serialize: (v) => v,
  parseValue: (v) => parseJsonInput(v),
  parseLiteral: (ast, variables) => parseJsonInput(literalToJson(ast, variables)),
});
