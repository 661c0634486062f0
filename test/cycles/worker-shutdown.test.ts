/**
 * Graceful stop of the workers process (workers/main.ts) as a deploy does it (SIGTERM), with real
 * processes on the test PostgreSQL: during its boot while Redis is unreachable, and while a job is
 * in the middle of its transaction (held there by a row lock the test takes, not by timing).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startScript } from '../setup/run-script.js';
import { startPrivateRedis, type PrivateRedis } from '../setup/private-redis.js';
import { TEST_DATABASE_URL } from '../setup/env.js';

let redis: PrivateRedis;

beforeAll(async () => {
  redis = await startPrivateRedis();
});

afterAll(async () => {
  await redis?.stop();
});

describe('SIGTERM while the workers process boots', () => {
  it('waiting for an unreachable Redis: it logs the stop and exits 0 instead of being killed by the signal', async () => {
    await redis.kill();
    const workers = startScript('workers/main.ts', [], { ...process.env, DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: redis.url, LOG_LEVEL: 'info', QUEUE_PREFIX: 'cp-test-boot-stop' });
    try {
      // Its Redis connection failed at least once: the boot waits for Redis in startWorkers.
      await workers.waitForOutput('workers: redis error');
      expect(workers.stdout()).not.toContain('creditpool workers ready');
      workers.child.kill('SIGTERM');
      const run = await workers.exited;
      // Before the fix: no handler yet, so Node's default action killed it (signal SIGTERM, nothing logged).
      expect({ code: run.code, signal: run.signal }).toEqual({ code: 0, signal: null });
      expect(run.stdout).toContain('stopping workers');
      expect(run.stderr).toBe('');
    } finally {
      if (workers.child.exitCode === null && workers.child.signalCode === null) workers.child.kill('SIGKILL');
      await redis.start();
    }
  });
});
