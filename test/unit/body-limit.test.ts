/**
 * The request-body limit decided from headers (src/http/body-limit.ts): no body passes, a
 * declared size up to the limit passes, above it is 413, a body without Content-Length is 411,
 * a malformed Content-Length is 400. (test/api/bad-input.test.ts checks the same over HTTP.)
 */
import { describe, expect, it } from 'vitest';
import { bodyRefusal } from '../../src/http/body-limit.js';

const req = (headers: Record<string, string>) => ({ headers });

describe('bodyRefusal', () => {
  it('lets a request without a body through', () => {
    expect(bodyRefusal(req({}), 1024)).toBeNull();
  });

  it('lets a declared size up to the limit through and refuses one byte more with 413', () => {
    expect(bodyRefusal(req({ 'content-length': '0' }), 1024)).toBeNull();
    expect(bodyRefusal(req({ 'content-length': '1024' }), 1024)).toBeNull();
    expect(bodyRefusal(req({ 'content-length': '1025' }), 1024)).toMatchObject({ status: 413, reason: 'REQUEST_ENTITY_TOO_LARGE' });
    expect(bodyRefusal(req({ 'content-length': '99999999999999999999999' }), 1024)).toMatchObject({ status: 413 });
  });

  it('refuses a body whose size is not declared (chunked) with 411', () => {
    expect(bodyRefusal(req({ 'transfer-encoding': 'chunked' }), 1024)).toMatchObject({ status: 411, reason: 'LENGTH_REQUIRED' });
  });

  it('refuses a Content-Length that is not one non-negative integer with 400', () => {
    for (const bad of ['', '-1', '1.5', '1, 1', 'abc', ' 12']) {
      expect(bodyRefusal(req({ 'content-length': bad }), 1024), bad).toMatchObject({ status: 400, reason: 'INVALID_CONTENT_LENGTH' });
    }
  });
});
