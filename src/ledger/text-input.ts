/**
 * Control characters in text inputs (project rule: bad input gets a clear error and changes
 * nothing). Identifiers and labels (idempotency keys, account external ids and names, usage
 * categories, model/tier/sku, agentId/userId/taskId/conversationId/messageId, budget subjects,
 * grant references, pack names) are one line of text that operators read in dashboards, logs,
 * exports and alerts, and filter and group by: a control character (an ESC sequence that repaints
 * a terminal, a CR/LF that forges a log line, a NUL-like C1 byte) or a Unicode line separator in
 * one is never meant and cannot be seen, so two labels that look the same would split a usage
 * breakdown. They are refused with BAD_USER_INPUT instead. Free-text notes (refund and void
 * reasons) may span lines: tab, LF and CR are allowed there, other control characters are not.
 * U+0000 and unpaired surrogates are refused earlier for every argument (graphql/input-values.ts).
 *
 * "Control character" is Unicode's general category Cc: U+0000-U+001F and U+007F-U+009F
 * (Unicode Standard, chapter 23.1 "Control Codes"); the line breaks are U+2028 LINE SEPARATOR and
 * U+2029 PARAGRAPH SEPARATOR (Unicode Standard Annex #14, classes BK).
 */
import { badInput } from './errors.js';

/** Matches a character a one-line identifier or label may not hold: Unicode Cc, U+2028, U+2029. */
export const SINGLE_LINE_FORBIDDEN = /[\p{Cc}\u2028\u2029]/u;
const MULTI_LINE_FORBIDDEN = /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f-\u009f\u2028\u2029]/u;

/** What a refused single-line value's error says after the field name. */
export const SINGLE_LINE_MESSAGE = 'must not contain control characters or line breaks';
/** What a refused free-text value's error says after the field name. */
export const MULTI_LINE_MESSAGE = 'must not contain control characters other than tab, line feed and carriage return';

/**
 * Refuses a one-line identifier or label holding a control character (Unicode Cc) or U+2028/U+2029.
 * @param value the input text (any length; lengths are checked by the caller).
 * @param field the input field's name, for the error.
 * @returns `value` unchanged.
 * @throws LedgerError BAD_USER_INPUT `<field>: must not contain control characters or line breaks`.
 */
export function singleLine(value: string, field: string): string {
  if (SINGLE_LINE_FORBIDDEN.test(value)) throw badInput(field, SINGLE_LINE_MESSAGE);
  return value;
}

/**
 * Refuses a free-text note (a refund or void reason) holding a control character other than tab,
 * LF and CR, or U+2028/U+2029.
 * @param value the input text; @param field the input field's name, for the error.
 * @returns `value` unchanged.
 * @throws LedgerError BAD_USER_INPUT `<field>: must not contain control characters other than tab, line feed and carriage return`.
 */
export function freeText(value: string, field: string): string {
  if (MULTI_LINE_FORBIDDEN.test(value)) throw badInput(field, MULTI_LINE_MESSAGE);
  return value;
}
