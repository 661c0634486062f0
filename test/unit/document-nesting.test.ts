/**
 * documentNesting (src/graphql/document-nesting.ts): how deeply a GraphQL document nests
 * brackets, outside strings, block strings and comments, as graphql-js's lexer reads them.
 */
import { describe, expect, it } from 'vitest';
import { parse } from 'graphql';
import { documentNesting } from '../../src/graphql/document-nesting.js';

describe('documentNesting', () => {
  it.each([
    ['{ a }', 1],
    ['query($x: [[Int]]) { a(x: $x) { b { c } } }', 3],
    ['{ a(x: [[1], [2, [3]]]) }', 5],
    ['{ a(x: "[[[[") }', 2],
    ['{ a(x: "\\" [[[[") }', 2],
    ['{ a(x: "\\\\") b(y: [[1]]) }', 4],
    ['{ a(x: """ [[[[ \\""" {{{{ """) }', 2],
    ['{ a # [[[[\n }', 1],
    ['{ a # [[[[\r b }', 1],
  ])('%s nests %i deep', (document, depth) => {
    parse(document); // each is a valid document, read the same way by graphql-js
    expect(documentNesting(document, 1000)).toBe(depth);
  });

  it('stops scanning past stopAbove', () => {
    expect(documentNesting(`{ a(x: ${'['.repeat(100_000)}`, 10)).toBe(11);
  });
});
