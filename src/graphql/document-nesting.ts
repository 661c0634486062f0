/**
 * Refuses a GraphQL document nested too deeply for graphql-js to parse, before it is parsed.
 *
 * graphql-js parses by recursive descent, a few stack frames per level of `{`, `[` or `(`. A
 * document of about 2,400 nested list brackets (`x: [[[[…]]]]`, 4,800 tokens, within
 * GRAPHQL_MAX_TOKENS' 5,000) overflowed the call stack: the RangeError was answered as
 * INTERNAL_SERVER_ERROR and logged as a bug with its stack, to anyone, without credentials
 * (parsing happens before authentication) (test/api/errors.test.ts). Whether a given depth
 * overflows depends on how much stack the caller had left and on what the JIT had compiled, so
 * the limit is a plain count taken before parsing, far below where any parser frame could run
 * out and far above what a real operation nests: selections at most GRAPHQL_MAX_DEPTH (12)
 * deep, JSON metadata at most 32 levels (services/usage-command.ts), a few input objects.
 * Everything the server walks recursively afterwards (validation rules, the cost estimate,
 * scalar parsing of literals) then sees at most this depth too.
 */
import type { Plugin } from 'graphql-yoga';
import { codedError } from './errors.js';

/** Most `{`, `[` and `(` a document may have open at once (see the module comment). */
const MAX_DOCUMENT_NESTING = 256;

/**
 * How deeply `source` nests `{`, `[` and `(` outside strings, block strings and comments,
 * scanning no further than the first point deeper than `stopAbove` (it then returns
 * `stopAbove + 1`). Unbalanced or otherwise malformed documents are scanned as far as they go
 * (the parser reports their errors).
 */
export function documentNesting(source: string, stopAbove: number): number {
  let depth = 0;
  let max = 0;
  const n = source.length;
  for (let i = 0; i < n; i++) {
    const c = source.charCodeAt(i);
    if (c === 0x7b /* { */ || c === 0x5b /* [ */ || c === 0x28 /* ( */) {
      depth++;
      if (depth > max) {
        max = depth;
        if (max > stopAbove) return max;
      }
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */ || c === 0x29 /* ) */) {
      if (depth > 0) depth--;
    } else if (c === 0x23 /* # */) {
      while (i + 1 < n && source.charCodeAt(i + 1) !== 0x0a && source.charCodeAt(i + 1) !== 0x0d) i++;
    } else if (c === 0x22 /* " */) {
      if (source.startsWith('"""', i)) {
        // Block string: ends at the next """ that is not escaped as \""".
        i += 3;
        while (i < n && !(source.startsWith('"""', i) && source.charCodeAt(i - 1) !== 0x5c)) i++;
        i += 2;
      } else {
        // String: ends at the next unescaped " (or, malformed, at a line end).
        i++;
        while (i < n) {
          const s = source.charCodeAt(i);
          if (s === 0x5c /* \ */) i += 2;
          else if (s === 0x22 || s === 0x0a || s === 0x0d) break;
          else i++;
        }
      }
    }
  }
  return max;
}

/**
 * Envelop plugin: a document that nests `{`, `[` or `(` deeper than {@link MAX_DOCUMENT_NESTING}
 * is refused with BAD_USER_INPUT when it is about to be parsed (HTTP, SSE and WebSocket alike;
 * a document served from yoga's parser cache was checked when it was first parsed). Register it
 * after graphql-armor, whose token limit replaces the parse function: this one wraps it.
 */
export function refuseDeeplyNestedDocuments(): Plugin {
  return {
    onParse({ parseFn, setParseFn }) {
      setParseFn((source, options) => {
        const text = typeof source === 'string' ? source : source.body;
        if (documentNesting(text, MAX_DOCUMENT_NESTING) > MAX_DOCUMENT_NESTING) {
          throw codedError('BAD_USER_INPUT', `Syntax Error: the document nests brackets more than ${MAX_DOCUMENT_NESTING} levels deep.`);
        }
        return parseFn(source, options);
      });
    },
  };
}
