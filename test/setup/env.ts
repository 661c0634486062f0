/** Connection settings of the test run (exported by scripts/services.sh; defaults for local runs). */
export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL || 'postgresql://postgres@127.0.0.1:5432/creditpool_test';
/** The Redis of the test run: $REDIS_URL, else the local default. */
export const TEST_REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
