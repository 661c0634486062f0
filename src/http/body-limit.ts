/**
 * The HTTP request-body limit of the server (src/server.ts calls {@link bodyRefusal} before
 * handing a request to graphql-yoga).
 */
import type { IncomingMessage } from 'node:http';

/**
 * An HTTP refusal decided from the request's headers alone (see {@link bodyRefusal}). The
 * client sees `extensions.code` BAD_USER_INPUT (the contract's code for malformed input; its list
 * of codes is closed) and `extensions.reason`, which says which rule refused it.
 */
export interface BodyRefusal {
  status: 400 | 411 | 413;
  reason: 'INVALID_CONTENT_LENGTH' | 'LENGTH_REQUIRED' | 'REQUEST_ENTITY_TOO_LARGE';
  message: string;
}

const CONTENT_LENGTH_RE = /^\d+$/;

/**
 * The request-body limit, decided before the body is read: a body must declare its size
 * (Content-Length, RFC 9110 §8.6; without it, e.g. `Transfer-Encoding: chunked`, the answer is
 * 411 Length Required, §15.5.12) and that size may be at most `limitBytes` (else 413, §15.5.14).
 * Node's HTTP parser then delivers exactly Content-Length bytes, so the limit holds without
 * counting them.
 *
 * Why not graphql-yoga's own `maxRequestBodySize`: it pipes every request body through a
 * TransformStream to count bytes (a stream pipeline, an AbortController and a DOMException per
 * request), which showed in the server's CPU profile of every request (bench/HISTORY.md, "The
 * request-body limit").
 *
 * @param req the incoming request (only its headers are read).
 * @param limitBytes largest accepted body, in bytes (env MAX_REQUEST_BODY_BYTES).
 * @returns null when the request may proceed, else the refusal to send.
 */
export function bodyRefusal(req: Pick<IncomingMessage, 'headers'>, limitBytes: number): BodyRefusal | null {
  const length = req.headers['content-length'];
  if (length === undefined) {
    if (req.headers['transfer-encoding'] === undefined) return null; // no body
    return { status: 411, reason: 'LENGTH_REQUIRED', message: 'A request body must declare its size in Content-Length.' };
  }
  if (!CONTENT_LENGTH_RE.test(length)) return { status: 400, reason: 'INVALID_CONTENT_LENGTH', message: 'Content-Length is invalid.' };
  if (Number(length) > limitBytes) {
    return { status: 413, reason: 'REQUEST_ENTITY_TOO_LARGE', message: `Request body too large: at most ${limitBytes} bytes.` };
  }
  return null;
}
