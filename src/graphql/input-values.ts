/**
 * Input values the database or JavaScript could not hold, refused at the API edge with
 * BAD_USER_INPUT before anything runs (project rule: bad input gets a clear error and changes
 * nothing; an unexpected error is a bug):
 *
 * - DateTime values outside 0001-01-01T00:00:00.000Z .. 9999-12-31T23:59:59.999Z (UTC) or of
 *   a date that does not exist (2099-02-30). JavaScript's Date would roll 2099-02-30 over to
 *   March 2nd, and an instant outside the range is stored by PostgreSQL but cannot be read back
 *   and serialized (`toISOString`), so every later read of the row failed.
 * - Strings containing U+0000 or an unpaired UTF-16 surrogate, anywhere in the operation's
 *   arguments (variables and literals, JSON keys and values included). PostgreSQL refuses NUL in
 *   text and jsonb (SQLSTATE 22021 / 22P05) and stores a lone surrogate as U+FFFD, so two
 *   distinct strings (idempotency keys) would become one. The check is one envelop plugin
 *   (`refuseUnstorableStrings`) instead of a rule per field, so every present and future String,
 *   ID and JSON argument is covered.
 */
import { BREAK, Kind, visit, type ASTNode, type DocumentNode, type GraphQLError } from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { codedError } from './errors.js';

declare global {
  interface String {
    /** ES2024 (Node >= 20): false when the string holds an unpaired UTF-16 surrogate. */
    isWellFormed(): boolean;
  }
}

/** Earliest DateTime the API accepts (UTC): year 1, the first PostgreSQL and ISO-8601 year AD. */
export const MIN_DATE_TIME = new Date('0001-01-01T00:00:00.000Z');
/** Latest DateTime the API accepts (UTC): the last instant `toISOString` writes with a 4-digit year. */
export const MAX_DATE_TIME = new Date('9999-12-31T23:59:59.999Z');

const ISO_RE = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(?:Z|([+-])(\d{2}):(\d{2}))$/;

/**
 * Parses a DateTime input: ISO-8601 / RFC 3339 with an offset (`Z` or `±hh:mm`), seconds and up
 * to 9 fractional digits optional (kept to the millisecond, truncated, as JavaScript does).
 * @returns the instant as a Date.
 * @throws GraphQLError BAD_USER_INPUT when the text is not of that form, names a date or time
 *   that does not exist (month 13, February 30th, hour 24, minute 60, offset +24:00), or is an
 *   instant outside MIN_DATE_TIME .. MAX_DATE_TIME.
 */
export function parseDateTimeInput(v: unknown): Date {
  const m = typeof v === 'string' ? ISO_RE.exec(v) : null;
  if (!m) throw codedError('BAD_USER_INPUT', 'DateTime must be ISO-8601 with an offset, e.g. 2026-11-21T10:00:00.000Z');
  const ms = new Date(v as string).getTime();
  const offsetMinutes = m[7] ? (m[7] === '-' ? -1 : 1) * (Number(m[8]) * 60 + Number(m[9])) : 0;
  // The instant seen at the input's own offset must show exactly the input's fields: Date.parse
  // rolls impossible dates over (2099-02-30 -> 2099-03-02) instead of refusing them.
  const local = new Date(ms + offsetMinutes * 60_000);
  const fields = [m[1], m[2], m[3], m[4], m[5], m[6] ?? '0'].map(Number);
  const shown = [local.getUTCFullYear(), local.getUTCMonth() + 1, local.getUTCDate(), local.getUTCHours(), local.getUTCMinutes(), local.getUTCSeconds()];
  if (Number.isNaN(ms) || Number(m[9] ?? 0) > 59 || fields.some((f, i) => f !== shown[i])) {
    throw codedError('BAD_USER_INPUT', `DateTime ${JSON.stringify(v)} is not a valid date and time`);
  }
  if (ms < MIN_DATE_TIME.getTime() || ms > MAX_DATE_TIME.getTime()) {
    throw codedError('BAD_USER_INPUT', `DateTime must be between ${MIN_DATE_TIME.toISOString()} and ${MAX_DATE_TIME.toISOString()} (UTC)`);
  }
  return new Date(ms);
}

/** True when PostgreSQL stores `s` as it is: no U+0000 and no unpaired UTF-16 surrogate. */
export function isStorableString(s: string): boolean {
  return !s.includes('\u0000') && s.isWellFormed();
}

/** What refuseUnstorableStrings reports: where the first unstorable string was found. */
const UNSTORABLE = 'must not contain U+0000 (NUL) or an unpaired UTF-16 surrogate';

/** One step of a path into variable values (a linked list, so paths cost nothing until needed). */
interface PathStep {
  parent: PathStep | null;
  key: string | number;
}

function pathText(step: PathStep | null): string {
  const keys: Array<string | number> = [];
  for (let s = step; s; s = s.parent) keys.push(s.key);
  return keys.reverse().reduce<string>((out, k) => (typeof k === 'number' ? `${out}[${k}]` : out ? `${out}.${k}` : k), '');
}

/**
 * The path (`$input.metadata.note`, `$inputs[2].agentId`) of the first string in `variables`
 * (object keys included) that is not storable, or null. Walks without recursion, so a deeply
 * nested value cannot overflow the stack; the cost is one check per string.
 */
export function findUnstorableVariable(variables: unknown): string | null {
  if (variables === null || typeof variables !== 'object') return null;
  const stack: Array<[unknown, PathStep | null]> = [[variables, null]];
  while (stack.length > 0) {
    const [value, at] = stack.pop()!;
    if (typeof value === 'string') {
      if (!isStorableString(value)) return pathText(at);
    } else if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) stack.push([value[i], { parent: at, key: i }]);
    } else if (value !== null && typeof value === 'object') {
      const keys = Object.keys(value);
      for (let i = keys.length - 1; i >= 0; i--) {
        const key = keys[i]!;
        const step: PathStep = { parent: at, key: at ? key : `$${key}` };
        if (!isStorableString(key)) return pathText(step);
        stack.push([(value as Record<string, unknown>)[key], step]);
      }
    }
  }
  return null;
}

/** Where a string literal sits in the document, e.g. `recordUsage(input).agentId`. */
function literalPath(ancestors: ReadonlyArray<ASTNode | ReadonlyArray<ASTNode>>, path: ReadonlyArray<string | number>): string {
  let out = '';
  ancestors.forEach((a, i) => {
    if (Array.isArray(a) || !('kind' in (a as ASTNode))) return;
    const node = a as ASTNode;
    if (node.kind === Kind.FIELD) out = node.name.value;
    else if (node.kind === Kind.DIRECTIVE) out = `@${node.name.value}`;
    else if (node.kind === Kind.VARIABLE_DEFINITION) out = `$${node.variable.name.value} (default)`;
    else if (node.kind === Kind.ARGUMENT) out += `(${node.name.value})`;
    else if (node.kind === Kind.OBJECT_FIELD) out += `.${node.name.value}`;
    else if (node.kind === Kind.LIST) out += `[${path[i + 1]}]`;
  });
  return out;
}

/** findUnstorableLiteral's answers per parsed document (yoga caches documents by query text). */
const literalChecks = new WeakMap<DocumentNode, string | null>();

/**
 * The path of the first string literal in `document` (arguments, variable defaults, directive
 * arguments; GraphQL's `\u0000` escape allows NUL) that is not storable, or null. Cached per
 * document, so a cached query costs one WeakMap lookup.
 */
export function findUnstorableLiteral(document: DocumentNode): string | null {
  const cached = literalChecks.get(document);
  if (cached !== undefined) return cached;
  let found: string | null = null;
  visit(document, {
    StringValue(node, _key, parent, path, ancestors) {
      if (isStorableString(node.value)) return undefined;
      // `ancestors` stops before `parent` (graphql-js visit); the path reads both.
      found = literalPath([...ancestors, parent as ASTNode], path);
      return BREAK;
    },
  });
  literalChecks.set(document, found);
  return found;
}

function unstorableError(path: string): GraphQLError {
  return codedError('BAD_USER_INPUT', `${path}: ${UNSTORABLE}`, { field: path });
}

/**
 * Envelop plugin: refuses an operation (query, mutation or subscription; HTTP, SSE and
 * WebSocket alike) whose variables or literals hold a string PostgreSQL cannot store as sent,
 * with one BAD_USER_INPUT error naming the argument path, before any resolver runs. For
 * recordUsageBatch the whole request is refused, like any other input that fails GraphQL-level
 * parsing (a malformed DateTime or Credits in one item); per-item answers are kept for the
 * ledger's own validation (usage-command.ts).
 */
export function refuseUnstorableStrings(): Plugin {
  const check = (args: { document: DocumentNode; variableValues?: unknown }): GraphQLError | null => {
    const path = findUnstorableVariable(args.variableValues) ?? findUnstorableLiteral(args.document);
    return path === null ? null : unstorableError(path);
  };
  return {
    onExecute({ args, setResultAndStopExecution }) {
      const error = check(args);
      if (error) setResultAndStopExecution({ errors: [error] });
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      const error = check(args);
      if (error) setResultAndStopExecution({ errors: [error] });
    },
  };
}
