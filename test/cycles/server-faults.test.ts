/**
 * Faults under load on the charge path as production runs it (issue #6: "no target may be
 * reached by weakening a guarantee"): real server processes (src/main.ts, CHARGE_PATH=group with
 * carried state and pipelined COMMITs), the test PostgreSQL, real HTTP. A burst of charges from
 * the Azure LLM inference trace (CC BY 4.0, data/traces) hits one hot account while
 *   - the server is killed with SIGKILL (nothing answered after the kill is trusted),
 *   - the server is stopped with SIGTERM, as a deploy does (it must answer what it took), or
 *   - PostgreSQL terminates every connection of the running server (pg_terminate_backend);
 * then every request is sent again with its idempotency key. And two instances (each with its own
 * group committer and carried state) get every key at the same moment, as a client retrying on
 * the other instance behind a load balancer does. Whatever was acknowledged before the
 * fault is replayed unchanged, every key ends with exactly one event, the account's credit fell by
 * exactly the sum of their costs, and the ledger invariant holds.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomBytes, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { startServer, ROOT, type StartedServer } from '../../demo/server-process.js';
import { taggedDatabaseUrl, terminateBackends, unreachableDatabaseUrl } from '../setup/connections.js';
import { runScript, startScript } from '../setup/run-script.js';
import { startTestServer } from '../setup/test-server.js';
import { DATABASE_UNAVAILABLE_MESSAGE } from '../../src/graphql/errors.js';
import { TEST_DATABASE_URL, TEST_REDIS_URL } from '../setup/env.js';
import { createTestServices, type TestServices } from '../setup/services.js';
import { createFundedAccount } from '../factories/accounts.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { gid } from '../api/helpers.js';
import { gqlWithHeaders } from '../api/growth/growth-helpers.js';
import { loadAzureTrace } from '../../src/trace/load.js';
import { credits, parseCredits } from '../../src/ledger/credits.js';

const ADMIN_KEY = `cp_admin_${randomBytes(16).toString('hex')}`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id idempotencyKey cost recordedAt } }`;
const TRACE = loadAzureTrace(join(ROOT, 'data/traces/AzureLLMInferenceTrace_code.csv'));

let services: TestServices;
const servers = new Set<StartedServer>();

beforeAll(() => {
  services = createTestServices(4);
});

afterEach(async () => {
  await Promise.allSettled([...servers].map((s) => s.stop(5_000)));
  servers.clear();
});

afterAll(async () => {
  await services?.close();
});

/** Starts a server process on the test database (group commit, carried state; no workers). */
async function boot(name: string, databaseUrl = TEST_DATABASE_URL): Promise<StartedServer> {
  const server = await startServer({
    name,
    workers: false,
    env: {
      DATABASE_URL: databaseUrl,
      REDIS_URL: TEST_REDIS_URL,
      ADMIN_API_KEY: ADMIN_KEY,
      LOG_LEVEL: 'warn',
      MIGRATE_ON_BOOT: 'false',
      CHARGE_PATH: 'group',
      GROUP_COMMIT_CARRY_STATE: 'true',
      OUTBOX_POLL_INTERVAL_MS: '200',
    },
  });
  servers.add(server);
  return server;
}

/** One charge request: the input of recordUsage for the trace row `i` on `accountId`. */
function chargeInput(run: string, accountId: string, i: number) {
  const row = TRACE[i % TRACE.length]!;
  return {
    accountId,
    idempotencyKey: `${run}:${i}`,
    category: 'llm',
    model: 'gpt-4o-mini',
    agentId: `agent-${i % 7}`,
    quantities: { inputTokens: row.inputTokens, outputTokens: row.outputTokens },
  };
}

/** A hot account with 1,000,000 PAID credits and `n` charge inputs for it, keys prefixed with `tag`. */
async function hotAccount(tag: string, n: number) {
  const accountId = await createFundedAccount(services, { paid: 1_000_000 });
  const account = gid('Account', accountId);
  const run = `${tag}-${randomUUID()}`;
  return { accountId, inputs: Array.from({ length: n }, (_, i) => chargeInput(run, account, i)) };
}

/** What one request got: the event, a GraphQL error code, or no answer (connection failed). */
type Outcome = { kind: 'event'; id: string; cost: string; recordedAt: string } | { kind: 'error'; code: string } | { kind: 'no answer'; reason: string };

async function send(server: StartedServer, input: ReturnType<typeof chargeInput>): Promise<Outcome> {
  let res: Response;
  try {
    res = await fetch(server.graphqlUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_KEY}` },
      body: JSON.stringify({ query: RECORD, variables: { input } }),
      signal: AbortSignal.timeout(30_000),
    });
  } catch (err) {
    return { kind: 'no answer', reason: (err as Error).message };
  }
  let body: { data?: { recordUsage?: { id: string; cost: string; recordedAt: string } | null }; errors?: Array<{ extensions?: { code?: string } }> };
  try {
    body = (await res.json()) as typeof body;
  } catch (err) {
    return { kind: 'no answer', reason: `HTTP ${res.status}, body unreadable: ${(err as Error).message}` };
  }
  if (body.errors?.length) return { kind: 'error', code: body.errors[0]?.extensions?.code ?? '(none)' };
  const e = body.data!.recordUsage!;
  return { kind: 'event', id: e.id, cost: e.cost, recordedAt: e.recordedAt };
}

/**
 * Sends requests `from`..`to-1` with `clients` in flight until all are sent or `stop()` is true;
 * `onAnswer` runs after each answer. @returns the outcome of every request that was sent, by index
 */
async function burst(
  server: StartedServer,
  inputs: ReturnType<typeof chargeInput>[],
  clients: number,
  onAnswer: (outcomes: Map<number, Outcome>) => void | Promise<void> = () => undefined,
  stop: () => boolean = () => false,
): Promise<Map<number, Outcome>> {
  const outcomes = new Map<number, Outcome>();
  let next = 0;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (next < inputs.length && !stop()) {
        const i = next++;
        outcomes.set(i, await send(server, inputs[i]!));
        await onAnswer(outcomes);
      }
    }),
  );
  return outcomes;
}

const count = (outcomes: Map<number, Outcome>, kind: Outcome['kind']) => [...outcomes.values()].filter((o) => o.kind === kind).length;

/**
 * The end state every fault must leave: every key of `inputs` has exactly one event, each event
 * acknowledged before the fault is the one a retry replays, and the account's credit fell by the
 * sum of the events' costs. Sends every input once more (the retries) and checks their answers.
 */
async function expectExactlyOnce(server: StartedServer, accountId: string, startMicroCredits: bigint, inputs: ReturnType<typeof chargeInput>[], before: Map<number, Outcome>) {
  const again = await burst(server, inputs, 16);
  expect(again.size).toBe(inputs.length);
  const failed = [...again.entries()].filter(([, o]) => o.kind !== 'event');
  expect(failed, JSON.stringify(failed.slice(0, 5))).toEqual([]);
  for (const [i, o] of before) {
    if (o.kind !== 'event') continue;
    const replay = again.get(i)!;
    expect(replay).toEqual(o);
  }
  const { rows } = await services.pool.query(
    `SELECT COUNT(*)::int AS events, COUNT(DISTINCT idempotency_key)::int AS keys, COALESCE(SUM(cost_micro_credits), 0)::text AS cost
       FROM usage_events WHERE account_id = $1`,
    [accountId],
  );
  expect(rows[0]).toMatchObject({ events: inputs.length, keys: inputs.length });
  const answeredCost = [...again.values()].reduce((sum, o) => sum + (o.kind === 'event' ? parseCredits(o.cost) : 0n), 0n);
  expect(BigInt(rows[0].cost)).toBe(answeredCost);
  const balance = await expectLedgerInvariant(services.pool, accountId);
  expect(balance.totalMicroCredits).toBe(startMicroCredits - answeredCost);
  return again;
}

describe('faults in the middle of a burst of charges on one hot account', () => {
  it('a server killed with SIGKILL: a restarted server replays everything acknowledged, charges the rest once, and the credit fell by exactly the recorded costs', async () => {
    const { accountId, inputs } = await hotAccount('kill', 1_500);

    const first = await boot('test-fault-kill-1');
    let killed = false;
    const before = await burst(
      first,
      inputs,
      16,
      (outcomes) => {
        // Kill once 300 charges were acknowledged: the other 15 clients have requests in flight.
        if (!killed && count(outcomes, 'event') >= 300) {
          killed = true;
          process.kill(first.pids.server, 'SIGKILL');
        }
      },
      () => killed,
    );
    expect(killed).toBe(true);
    await first.stop(5_000);
    servers.delete(first);
    // Before the kill every request was answered with its event; after it, none was.
    const codes = [...before.values()].filter((o) => o.kind === 'error');
    expect(codes).toEqual([]);
    expect(count(before, 'event')).toBeGreaterThanOrEqual(300);
    expect(count(before, 'no answer')).toBeGreaterThan(0);

    const second = await boot('test-fault-kill-2');
    await expectExactlyOnce(second, accountId, credits(1_000_000), inputs, before);
  });

  it('a server stopped with SIGTERM (a deploy) answers every request it took before it exits: none is recorded without an answer', async () => {
    const { accountId, inputs } = await hotAccount('term', 1_500);

    const first = await boot('test-fault-sigterm');
    let stopping: ReturnType<StartedServer['stop']> | null = null;
    const before = await burst(
      first,
      inputs,
      16,
      (outcomes) => {
        if (!stopping && count(outcomes, 'event') >= 300) stopping = first.stop(30_000);
      },
      () => stopping !== null,
    );
    expect(stopping).not.toBeNull();
    await stopping;
    servers.delete(first);
    // Requests that got no answer must not have been recorded: a graceful stop finishes what it took.
    const unanswered = [...before.entries()].filter(([, o]) => o.kind === 'no answer').map(([i]) => inputs[i]!.idempotencyKey);
    const { rows } = await services.pool.query(`SELECT idempotency_key FROM usage_events WHERE account_id = $1 AND idempotency_key = ANY($2::text[])`, [accountId, unanswered]);
    expect(rows.map((r) => r.idempotency_key)).toEqual([]);
    expect([...before.values()].filter((o) => o.kind === 'error')).toEqual([]);

    const second = await boot('test-fault-sigterm-2');
    await expectExactlyOnce(second, accountId, credits(1_000_000), inputs, before);
  });

  it('PostgreSQL terminates every connection of a running server: the charges in flight fail with UNAVAILABLE only, the server recovers by itself, and retries charge exactly once', async () => {
    const { accountId, inputs } = await hotAccount('terminate', 1_500);
    const { url, name: applicationName } = taggedDatabaseUrl('cp-fault');
    const server = await boot('test-fault-terminate', url);

    let terminated: number | null = null;
    let terminating: Promise<void> | null = null;
    let terminateError: unknown = null;
    const before = await burst(server, inputs, 16, async (outcomes) => {
      if (terminating === null && count(outcomes, 'event') >= 300) {
        // Both outcomes handled now (the burst goes on for seconds before the await below).
        terminating = terminateBackends(services.pool, applicationName).then(
          (n) => {
            terminated = n;
          },
          (err: unknown) => {
            terminateError = err;
          },
        );
      }
    });
    await terminating;
    expect(terminateError).toBeNull();
    // The server's ledger pool and Prisma were connected, so something was terminated.
    expect(terminated).toBeGreaterThan(0);
    // Every request was answered: with its event or, if its connection died under it, UNAVAILABLE.
    expect(count(before, 'no answer')).toBe(0);
    const codes = new Set([...before.values()].flatMap((o) => (o.kind === 'error' ? [o.code] : [])));
    expect([...codes]).toEqual(codes.size ? ['UNAVAILABLE'] : []);
    // The server reconnected by itself: it is ready and charges again.
    expect((await fetch(`${server.baseUrl}/readyz`)).status).toBe(200);
    await expectExactlyOnce(server, accountId, credits(1_000_000), inputs, before);
    // The outbox relay lost its connection too and kept going: the account's balance snapshots are all published.
    await vi.waitFor(async () => {
      const { rows } = await services.pool.query(`SELECT COUNT(*)::int AS n FROM outbox_events WHERE account_id = $1`, [accountId]);
      expect(rows[0].n).toBe(0);
    }, { timeout: 15_000, interval: 100 });
  });
});

describe('two instances behind a load balancer', () => {
  it('every key sent to both at once (a client retrying on the other instance) gets the same event from both, recorded once; the credit fell by exactly the recorded costs', async () => {
    const { accountId, inputs } = await hotAccount('twin', 600);
    const [a, b] = await Promise.all([boot('test-twin-a'), boot('test-twin-b')]);
    // 8 clients, each sending its key to both instances at the same moment.
    const answers = new Map<number, [Outcome, Outcome]>();
    let next = 0;
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        while (next < inputs.length) {
          const i = next++;
          answers.set(i, await Promise.all([send(a, inputs[i]!), send(b, inputs[i]!)]));
        }
      }),
    );
    const mismatched = [...answers.entries()].filter(([, [x, y]]) => x.kind !== 'event' || JSON.stringify(x) !== JSON.stringify(y));
    expect(mismatched.slice(0, 3)).toEqual([]);
    const { rows } = await services.pool.query(
      `SELECT COUNT(*)::int AS events, COUNT(DISTINCT idempotency_key)::int AS keys, COALESCE(SUM(cost_micro_credits), 0)::text AS cost FROM usage_events WHERE account_id = $1`,
      [accountId],
    );
    expect(rows[0]).toMatchObject({ events: inputs.length, keys: inputs.length });
    const cost = [...answers.values()].reduce((sum, [x]) => sum + (x.kind === 'event' ? parseCredits(x.cost) : 0n), 0n);
    expect(BigInt(rows[0].cost)).toBe(cost);
    expect((await expectLedgerInvariant(services.pool, accountId)).totalMicroCredits).toBe(credits(1_000_000) - cost);
  });
});

describe('a database that cannot be reached', () => {
  it('at boot with MIGRATE_ON_BOOT (the default): the API exits 1 after one fatal log line naming the step and the database (password hidden), not a bare stack trace', async () => {
    const url = new URL(await unreachableDatabaseUrl());
    url.password = 'boot-secret-pw';
    const run = await runScript('src/main.ts', [], { ...process.env, DATABASE_URL: url.toString(), REDIS_URL: TEST_REDIS_URL, ADMIN_API_KEY: ADMIN_KEY, LOG_LEVEL: 'info', MIGRATE_ON_BOOT: 'true', RUN_WORKERS: 'false', PORT: '0' });
    expect(run.code).toBe(1);
    expect(run.stderr).toBe('');
    const lines = run.stdout.trim().split('\n').map((l) => JSON.parse(l) as { level: number; msg: string; database?: string; err?: { code?: string } });
    const fatal = lines.filter((l) => l.level === 60);
    expect(fatal).toHaveLength(1);
    expect(fatal[0]!.msg).toMatch(/migrations/);
    expect(fatal[0]!.err?.code).toBe('ECONNREFUSED');
    expect(fatal[0]!.database).toBe(`postgresql://postgres:***@127.0.0.1:${url.port}${url.pathname}`);
    expect(run.stdout).not.toContain('boot-secret-pw');
  });

  it('at boot with MIGRATE_ON_BOOT=false: the API listens but does not log "creditpool ready" (its /readyz answers 503); it logs that it is not ready and why', async () => {
    const run = startScript('src/main.ts', [], { ...process.env, DATABASE_URL: await unreachableDatabaseUrl(), REDIS_URL: TEST_REDIS_URL, ADMIN_API_KEY: ADMIN_KEY, LOG_LEVEL: 'info', MIGRATE_ON_BOOT: 'false', RUN_WORKERS: 'false', PORT: '0' });
    try {
      await run.waitForOutput('creditpool listening');
      const line = run.stdout().trim().split('\n').map((l) => JSON.parse(l) as { msg: string; url?: string; postgres?: boolean; redis?: boolean }).find((l) => l.msg.startsWith('creditpool listening'))!;
      expect(line).toMatchObject({ postgres: false, redis: true });
      expect((await fetch(line.url!.replace('/graphql', '/readyz'))).status).toBe(503);
      // Before the fix it logged "creditpool ready" whatever /readyz said.
      expect(run.stdout()).not.toContain('creditpool ready');
      run.child.kill('SIGTERM');
      expect((await run.exited).code).toBe(0);
    } finally {
      if (run.child.exitCode === null && run.child.signalCode === null) run.child.kill('SIGKILL');
    }
  });

  it('answers charges and reads with UNAVAILABLE, a message that says to retry with the same key, and a request id; never INTERNAL_SERVER_ERROR', async () => {
    const srv = await startTestServer({ DATABASE_URL: await unreachableDatabaseUrl(), CHARGE_PATH: 'group' });
    try {
      const account = gid('Account', randomUUID());
      // Each request names its id (x-request-id): the error carries that id, for the logs.
      const post = async (requestId: string, query: string, variables: Record<string, unknown>) => ({
        requestId,
        res: await gqlWithHeaders(srv, query, variables, srv.adminKey, { 'x-request-id': requestId }),
      });
      const charge = await post('down-charge-1', RECORD, { input: chargeInput(`down-${randomUUID()}`, account, 0) });
      const read = await post('down-read-1', `query($id: ID!) { account(id: $id) { id balance { total } } }`, { id: account });
      for (const { requestId, res } of [charge, read]) {
        expect(res.body.errors?.map((e) => e.extensions?.code), JSON.stringify(res.body)).toEqual(['UNAVAILABLE']);
        expect(res.body.errors![0]!.message).toBe(DATABASE_UNAVAILABLE_MESSAGE);
        expect((res.body.errors![0]!.extensions as { requestId?: string }).requestId).toBe(requestId);
      }
    } finally {
      await srv.close();
    }
  });
});
