import { defineConfig } from 'vitest/config';

// Integration and API tests share one PostgreSQL database (TEST_DATABASE_URL) and one global
// price book, so files run one after another; tests inside a file may run concurrently.
export default defineConfig({
  // One graphql-js instance: Pothos and yoga load graphql's CommonJS build, so tests must too
  // (otherwise "Cannot use GraphQLObjectType from another module or realm").
  resolve: { alias: [{ find: /^graphql$/, replacement: 'graphql/index.js' }] },
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/setup/global-setup.ts'],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 120_000,
    reporters: ['default'],
  },
});
