/**
 * The operator's commands (`npm run serve`, `workers`, `db:migrate`, `db:diff`, `seed`, `apikey:create`, `webhooks`)
 * run as their own processes, as an operator runs them, against what goes wrong on an operator's
 * machine: a PostgreSQL that accepts connections and never answers (a stalled host, a proxy whose
 * backend is gone), a Redis that is down, and arguments that are wrong. Each must say what is
 * wrong on stderr, exit non-zero within a few seconds, and never print a password or a stack.
 */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { createTestServices } from '../setup/services.js';
import { KEY_REVOCATION_ANNOUNCE_TIMEOUT_MS } from '../../src/auth/key-revocation.js';
import { createFundedAccount } from '../factories/accounts.js';
import { exitedWithin, runScript, startScript, type ScriptRun } from '../setup/run-script.js';

const PASSWORD = 's3cret-operator-pw';
/** Bound on a run that must fail fast (the process start itself takes ~1-2 s under tsx). */
const FAIL_FAST_MS = 9_000;

/** A TCP server that accepts connections and never sends a byte. */
let silent: net.Server;
const sockets = new Set<net.Socket>();
let silentPort: number;
/** A port nothing listens on. */
let closedPort: number;

beforeAll(async () => {
  silent = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  silentPort = (silent.address() as net.AddressInfo).port;
  const probe = net.createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  closedPort = (probe.address() as net.AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
});

afterAll(async () => {
  for (const s of sockets) s.destroy();
  await new Promise<void>((resolve) => silent.close(() => resolve()));
});

function env(overrides: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return { ...process.env, NODE_ENV: 'test', DATABASE_URL: TEST_DATABASE_URL, REDIS_URL: TEST_REDIS_URL, ...overrides };
}

/** Runs `script` and expects it to exit by itself within `boundMs` (a bound raced against the exit); kills it otherwise. */
async function runBounded(script: string, args: string[], environment: NodeJS.ProcessEnv, boundMs = FAIL_FAST_MS): Promise<ScriptRun> {
  const started = Date.now();
  const running = startScript(script, args, environment);
  const outcome = await exitedWithin(running, started, boundMs);
  if (outcome === 'still running') {
    running.child.kill('SIGKILL');
    const run = await running.exited;
    throw new Error(`${script} ${args.join(' ')} still running after ${boundMs} ms; stdout:\n${run.stdout}\nstderr:\n${run.stderr}`);
  }
  return outcome.run;
}

/** What a failed run must look like: non-zero, a message, no password, no stack trace. */
function expectCleanFailure(run: ScriptRun, code: number, message: RegExp): void {
  expect({ code: run.code, stderr: run.stderr }).toMatchObject({ code, stderr: expect.stringMatching(message) });
  expect(run.stderr + run.stdout).not.toContain(PASSWORD);
  expect(run.stderr).not.toMatch(/^\s+at /m);
}

describe('a PostgreSQL that accepts connections and never answers', () => {
  const silentUrl = () => `postgresql://postgres:${PASSWORD}@127.0.0.1:${silentPort}/creditpool`;

  it('db:migrate gives up after connect_timeout with one line naming the database (password hidden), exit 1', async () => {
    const run = await runBounded('scripts/db-migrate.ts', [], env({ DATABASE_URL: `${silentUrl()}?connect_timeout=1` }));
    expectCleanFailure(run, 1, new RegExp(`db:migrate failed on postgresql://postgres:\\*\\*\\*@127\\.0\\.0\\.1:${silentPort}/creditpool`));
  });

  it('seed gives up the same way: one line, password hidden, no stack, exit 1', async () => {
    const run = await runBounded('prisma/seed.ts', [], env({ DATABASE_URL: `${silentUrl()}?connect_timeout=1` }));
    expectCleanFailure(run, 1, new RegExp(`seed failed on postgresql://postgres:\\*\\*\\*@127\\.0\\.0\\.1:${silentPort}/creditpool`));
  });

  it('apikey:create --revoke and webhooks failed give up after PG_CONNECT_TIMEOUT_MS, exit 1', async () => {
    const environment = env({ DATABASE_URL: silentUrl(), PG_CONNECT_TIMEOUT_MS: '1000' });
    const [revoke, failed] = await Promise.all([
      runBounded('scripts/create-api-key.ts', ['--revoke', randomUUID()], environment),
      runBounded('scripts/webhooks.ts', ['failed'], environment),
    ]);
    expectCleanFailure(revoke, 1, /^failed: .*timeout/m);
    expectCleanFailure(failed, 1, /^failed: .*timeout/m);
  });
});

describe('a Redis that is down', () => {
  it('webhooks redeliver of an undelivered event fails within seconds when Redis refuses or never answers, and queues nothing', async () => {
    const services = createTestServices(2);
    try {
      const accountId = await createFundedAccount(services, { paid: 10 });
      const alertId = randomUUID();
      await services.pool.query(
        `INSERT INTO credit_alerts (id, account_id, threshold, percent_remaining, available_micro_credits, period_start) VALUES ($1, $2, 25, 20, 1, now())`,
        [alertId, accountId],
      );
      await services.pool.query(
        `INSERT INTO webhook_deliveries (id, event_type, event_id, account_id, url, attempt, status, response_code) VALUES ($1, 'credit_alert.raised', $2, $3, 'http://127.0.0.1:9/', 1, 'FAILED', 500)`,
        [randomUUID(), alertId, accountId],
      );
      const prefix = `cp-test-operator-cli-${randomUUID()}`;
      const [refused, silentRedis] = await Promise.all(
        [closedPort, silentPort].map((port) =>
          runBounded('scripts/webhooks.ts', ['redeliver', alertId], env({ REDIS_URL: `redis://:${PASSWORD}@127.0.0.1:${port}`, QUEUE_PREFIX: prefix }), FAIL_FAST_MS + KEY_REVOCATION_ANNOUNCE_TIMEOUT_MS),
        ),
      );
      expectCleanFailure(refused!, 1, new RegExp(`^failed: Redis at redis://:\\*\\*\\*@127\\.0\\.0\\.1:${closedPort}`, 'm'));
      expectCleanFailure(silentRedis!, 1, new RegExp(`^failed: Redis at redis://:\\*\\*\\*@127\\.0\\.0\\.1:${silentPort}.*did not answer`, 'm'));
      const { rows } = await services.pool.query('SELECT status FROM webhook_deliveries WHERE event_id = $1', [alertId]);
      expect(rows).toEqual([{ status: 'FAILED' }]);
    } finally {
      await services.close();
    }
  });
});

describe('npm run workers with a Redis that is down or silent at start', () => {
  it('gives up after WORKERS_REDIS_WAIT_MS: one fatal log line naming REDIS_URL (password hidden), exit 1, nothing on stderr', async () => {
    const waitMs = 1_000;
    // Loading workers/main.ts under tsx (BullMQ, every service) alone takes seconds on a loaded
    // machine: the bound is generous; before, the process never exited by itself.
    const boundMs = 3 * FAIL_FAST_MS;
    const [refused, silentRedis] = await Promise.all(
      [closedPort, silentPort].map((port) =>
        runBounded('workers/main.ts', [], env({ REDIS_URL: `redis://:${PASSWORD}@127.0.0.1:${port}`, WORKERS_REDIS_WAIT_MS: String(waitMs), QUEUE_PREFIX: `cp-test-operator-cli-${randomUUID()}`, LOG_LEVEL: 'info' }), boundMs),
      ),
    );
    for (const [run, port] of [[refused!, closedPort], [silentRedis!, silentPort]] as const) {
      // Before: it waited for Redis for ever (runBounded throws "still running").
      expect({ port, code: run.code, stderr: run.stderr }).toEqual({ port, code: 1, stderr: '' });
      const lines = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; redis?: string; waitMs?: number });
      expect(lines.filter((l) => l.level === 60)).toEqual([
        expect.objectContaining({ redis: `redis://:***@127.0.0.1:${port}`, waitMs, msg: expect.stringMatching(new RegExp(`Redis at redis://:\\*\\*\\*@127\\.0\\.0\\.1:${port}.* did not answer within ${waitMs} ms \\(WORKERS_REDIS_WAIT_MS\\)`)) }),
      ]);
      expect(run.stdout).not.toContain('creditpool workers ready');
      expect(run.stdout).not.toContain(PASSWORD);
    }
  });
});

describe('npm run serve', () => {
  it('with MIGRATE_ON_BOOT and a PostgreSQL that never answers: gives up after connect_timeout, one fatal line, exit 1', async () => {
    const run = await runBounded('src/main.ts', [], env({ DATABASE_URL: `postgresql://postgres:${PASSWORD}@127.0.0.1:${silentPort}/creditpool?connect_timeout=1`, PORT: '0', MIGRATE_ON_BOOT: 'true', RUN_WORKERS: 'false', LOG_LEVEL: 'info' }));
    expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 1, stderr: '' });
    const fatal = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; database?: string }).filter((l) => l.level === 60);
    expect(fatal).toEqual([expect.objectContaining({ msg: expect.stringMatching(/migrations/), database: expect.stringContaining('postgres:***@') })]);
    expect(run.stdout).not.toContain(PASSWORD);
  });

  it('on a PORT already in use: one fatal log line naming the port, exit 1, no stack dump on stderr', async () => {
    const busy = net.createServer();
    await new Promise<void>((resolve) => busy.listen(0, resolve));
    const port = (busy.address() as net.AddressInfo).port;
    try {
      const run = await runBounded('src/main.ts', [], env({ PORT: String(port), MIGRATE_ON_BOOT: 'false', RUN_WORKERS: 'false', LOG_LEVEL: 'info' }));
      expect({ code: run.code, stderr: run.stderr }).toEqual({ code: 1, stderr: '' });
      const fatal = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; port?: number }).filter((l) => l.level === 60);
      expect(fatal).toEqual([expect.objectContaining({ port, msg: expect.stringMatching(new RegExp(`could not listen on port ${port}`)) })]);
    } finally {
      await new Promise<void>((resolve) => busy.close(() => resolve()));
    }
  });
});

describe('arguments', () => {
  it('apikey:create names what is wrong with its arguments, exit 2; --help says what it does', async () => {
    const cases: Array<[string[], RegExp]> = [
      [[], /give --name and --scopes to create a key, or --revoke <id>/],
      [['--name', 'x'], /--scopes is required with --name/],
      [['--scopes', 'read'], /--name is required with --scopes/],
      [['--public'], /--public goes with --name and --scopes/],
      [['--public', '--revoke', randomUUID()], /--public goes with --name and --scopes, not --revoke/],
      [['--name', 'x', '--scopes', 'read', '--revoke', randomUUID()], /give --name and --scopes, or --revoke, not both/],
    ];
    const runs = await Promise.all(cases.map(([args]) => runScript('scripts/create-api-key.ts', args, env({}))));
    runs.forEach((run, i) => {
      expect({ args: cases[i]![0], code: run.code }).toEqual({ args: cases[i]![0], code: 2 });
      expect(run.stderr.split('\n')[0]).toMatch(cases[i]![1]);
      expect(run.stdout).toBe('');
    });
    const help = await runScript('scripts/create-api-key.ts', ['--help'], env({}));
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/Creates a service API key .*or revokes one/);
  });

  it('seed takes no arguments (exit 2, nothing done) and --help says what it does', async () => {
    const bad = await runScript('prisma/seed.ts', ['--bogus'], env({ DATABASE_URL: `postgresql://postgres@127.0.0.1:${closedPort}/x` }));
    expect({ code: bad.code, stderr: bad.stderr.split('\n')[0] }).toEqual({ code: 2, stderr: expect.stringMatching(/Unknown option '--bogus'/) });
    const help = await runScript('prisma/seed.ts', ['--help'], env({ DATABASE_URL: `postgresql://postgres@127.0.0.1:${closedPort}/x` }));
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/applies pending migrations.*default price book/s);
  });

  it('db:migrate --help says what it does (exit 0); db:diff refuses a second name (exit 2) and has --help', async () => {
    const unreachable = env({ DATABASE_URL: `postgresql://postgres@127.0.0.1:${closedPort}/x` });
    const [migrateHelp, diffTwo, diffHelp] = await Promise.all([
      runScript('scripts/db-migrate.ts', ['--help'], unreachable),
      runScript('scripts/db-diff.ts', ['one', 'two'], unreachable),
      runScript('scripts/db-diff.ts', ['--help'], unreachable),
    ]);
    expect(migrateHelp.code).toBe(0);
    expect(migrateHelp.stdout).toMatch(/Applies pending migrations/);
    expect({ code: diffTwo.code, stderr: diffTwo.stderr.split('\n')[0] }).toEqual({ code: 2, stderr: expect.stringMatching(/one migration name, got 2: one two/) });
    expect(diffHelp.code).toBe(0);
    expect(diffHelp.stdout).toMatch(/Computes the SQL/);
  });

  /**
   * Runs `script` with each case's arguments and with `helpArgs` (in parallel) on an unreachable
   * PostgreSQL: were the arguments ignored (as they were), it would start there (and fail, exit 1,
   * or keep trying) instead of exit 2 before anything.
   */
  async function expectArgumentsRefused(script: string, cases: Array<[string[], RegExp]>, helpArgs: string[], help: RegExp): Promise<void> {
    const unreachable = env({ DATABASE_URL: `postgresql://postgres@127.0.0.1:${closedPort}/x`, PG_CONNECT_TIMEOUT_MS: '1000', MIGRATE_ON_BOOT: 'true', RUN_WORKERS: 'false', PORT: '0' });
    const [helpRun, ...runs] = await Promise.all([runScript(script, helpArgs, unreachable), ...cases.map(([args]) => runScript(script, args, unreachable))]);
    runs.forEach((run, i) => {
      const [args, message] = cases[i]!;
      expect({ args, code: run.code, stdout: run.stdout }).toEqual({ args, code: 2, stdout: '' });
      expect(run.stderr).toMatch(message);
      expect(run.stderr.trimEnd().split('\n')).toHaveLength(1);
      expect(run.stderr).not.toContain(PASSWORD);
    });
    expect({ code: helpRun.code, stderr: helpRun.stderr }).toEqual({ code: 0, stderr: '' });
    expect(helpRun.stdout).toMatch(help);
  }

  it('serve refuses any argument but --help (exit 2, one line naming it and the variable to set, nothing started); --help says what it does', async () => {
    await expectArgumentsRefused(
      'src/main.ts',
      [
        [['--port', '5000'], /^serve: unknown option --port: set PORT in the environment instead \(PORT=<value> npm run serve\); usage: npm run serve/],
        [['start'], /^serve: takes no arguments, got "start"/],
        [['--help', '--bogus'], /^serve: unknown option --bogus: its settings come from the environment/],
      ],
      ['--help'],
      /^Runs the GraphQL API .*\nusage: npm run serve/s,
    );
  });

  it('workers refuses any argument but --help the same way (an option\'s value, maybe a secret, is not echoed); -h says what it does', async () => {
    await expectArgumentsRefused(
      'workers/main.ts',
      [[[`--redis-url=redis://:${PASSWORD}@127.0.0.1:6379`], /^workers: unknown option --redis-url: set REDIS_URL in the environment instead \(REDIS_URL=<value> npm run workers\); usage: npm run workers/]],
      ['-h'],
      /^Runs the BullMQ workers .*WORKERS_REDIS_WAIT_MS.*\nusage: npm run workers/s,
    );
  });

  it('db:migrate refuses wrong arguments with exit 2 like the other commands (not 1, the code of a failed migration), nothing done', async () => {
    const unreachable = env({ DATABASE_URL: `postgresql://postgres@127.0.0.1:${closedPort}/x` });
    const cases: Array<[string[], RegExp]> = [
      [['--bogus'], /^db:migrate: Unknown option '--bogus'/],
      [['--rolled-back'], /^db:migrate: Option '--rolled-back <value>' argument missing/],
      [['--applied', ' '], /^db:migrate: --applied needs a migration name/],
      [['--rolled-back', 'a', '--applied', 'b'], /^db:migrate: give only one of --rolled-back and --applied/],
      [['extra'], /^db:migrate: Unexpected argument 'extra'/],
    ];
    const runs = await Promise.all(cases.map(([args]) => runScript('scripts/db-migrate.ts', args, unreachable)));
    runs.forEach((run, i) => {
      expect({ args: cases[i]![0], code: run.code, stdout: run.stdout }).toEqual({ args: cases[i]![0], code: 2, stdout: '' });
      expect(run.stderr).toMatch(cases[i]![1]);
      expect(run.stderr).toMatch(/\nusage: npm run db:migrate/);
    });
  });

  it('webhooks --help says what it does', async () => {
    const help = await runScript('scripts/webhooks.ts', ['--help'], env({}));
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/^Lists webhook events the receiver never acknowledged/);
  });
});
