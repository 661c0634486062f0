/**
 * Starts the creditpool API (and its workers process) as child processes for the demo and the
 * bench: free loopback port, generated admin key, logs to .data/logs/, bounded readiness wait,
 * graceful stop. Nothing here talks GraphQL.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Repository root (the folder holding package.json). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** DATABASE_URL when unset (the same default as src/config/env.ts). */
export const DEFAULT_DATABASE_URL = 'postgresql://postgres@127.0.0.1:5432/creditpool';
/** REDIS_URL when unset (the same default as src/config/env.ts). */
export const DEFAULT_REDIS_URL = 'redis://127.0.0.1:6379';

/**
 * Asks the OS for a free TCP port on 127.0.0.1 (bind port 0, read it, close).
 * @returns the port number
 */
export function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('could not read the bound port'));
        return;
      }
      srv.close(() => resolvePort(addr.port));
    });
  });
}

/**
 * The last `lines` lines of a text file ('' when it does not exist).
 * @param path file path
 * @param lines how many lines (default 40)
 */
export function tail(path: string, lines = 40): string {
  if (!existsSync(path)) return '';
  const size = statSync(path).size;
  const text = readFileSync(path, 'utf8').slice(Math.max(0, size - 64 * 1024));
  return text.split('\n').slice(-lines - 1).join('\n');
}

/** Options of {@link startServer}. */
export interface StartServerOptions {
  /** Prefix of the log files: .data/logs/<name>-server.log and <name>-workers.log. */
  name: string;
  /** Also start `workers/main.ts` as a second process (default true). */
  workers?: boolean;
  /** Readiness polls of GET /readyz before giving up (default 240). */
  readyAttempts?: number;
  /**
   * What to wait for: `ready` (default), GET /readyz answering 200; `listening`, GET /healthz
   * answering 200, i.e. the server takes requests though a dependency may still be down (tests of
   * a boot that waits for Redis).
   */
  until?: 'ready' | 'listening';
  /** Pause between polls in ms (default 500; 240 x 500 ms = 2 minutes, first boot migrates). */
  readyIntervalMs?: number;
  /** Server entry file relative to the repository root (default src/main.ts). */
  serverEntry?: string;
  /** Workers entry file relative to the repository root (default workers/main.ts). */
  workersEntry?: string;
  /** Extra environment for both children. */
  env?: Record<string, string>;
  /**
   * Detach the children into their own process group so they outlive this process
   * (demo --keep). Default false.
   */
  detached?: boolean;
}

/** How a child ended on {@link StartedServer.stop}: by itself after SIGTERM, killed after the grace, or already gone. */
export type StopOutcome = 'exited' | 'killed' | 'not running';

/** A running API server started by {@link startServer}. */
export interface StartedServer {
  /** http://127.0.0.1:<port> */
  baseUrl: string;
  /** http://127.0.0.1:<port>/graphql */
  graphqlUrl: string;
  port: number;
  /** The bootstrap admin key the server was started with (every scope). */
  adminKey: string;
  /** Log file paths. */
  logs: { server: string; workers?: string };
  /** Process ids of the children. */
  pids: { server: number; workers?: number };
  /**
   * SIGTERM both children and wait for them (SIGKILL after `graceMs`, default 15 s).
   * @returns how each ended (`workers` only when a workers process was started).
   */
  stop(graceMs?: number): Promise<{ server: StopOutcome; workers?: StopOutcome }>;
  /** Stop tracking the children so this process can exit while they keep running. */
  detach(): void;
}

function spawnLogged(entry: string, logPath: string, env: NodeJS.ProcessEnv, detached: boolean): ChildProcess {
  mkdirSync(dirname(logPath), { recursive: true });
  const fd = openSync(logPath, 'w');
  try {
    // `node --import tsx <entry>` is `tsx <entry>` in one process, so SIGTERM reaches the server itself.
    // CPU_PROFILE_DIR (benchmarks): write a V8 CPU profile per process there at exit (NODE_OPTIONS may not carry --cpu-prof).
    const profile = env.CPU_PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${env.CPU_PROFILE_DIR}`] : [];
    return spawn(process.execPath, [...profile, '--import', 'tsx', entry], {
      cwd: ROOT,
      env,
      stdio: ['ignore', fd, fd],
      detached,
    });
  } finally {
    closeSync(fd);
  }
}

function exited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null;
}

function waitExit(child: ChildProcess, ms: number): Promise<boolean> {
  if (exited(child)) return Promise.resolve(true);
  return new Promise((res) => {
    const timer = setTimeout(() => res(false), ms);
    child.once('exit', () => {
      clearTimeout(timer);
      res(true);
    });
  });
}

async function stopChild(child: ChildProcess | undefined, graceMs: number): Promise<StopOutcome> {
  if (!child || exited(child)) return 'not running';
  child.kill('SIGTERM');
  if (await waitExit(child, graceMs)) return 'exited';
  child.kill('SIGKILL');
  await waitExit(child, 5_000);
  return 'killed';
}

/**
 * Starts `src/main.ts` (RUN_WORKERS=false) and, unless `workers: false`, `workers/main.ts`
 * on a free loopback port against DATABASE_URL / REDIS_URL from the environment (defaults
 * 127.0.0.1), with ADMIN_API_KEY and JWT_SECRET from the environment or freshly generated.
 * Waits until GET /readyz answers 200 (GET /healthz with `until: 'listening'`).
 *
 * @returns the running server; call `stop()` when done
 * @throws Error with the server log tail when a child exits early or readiness never comes
 */
export async function startServer(options: StartServerOptions): Promise<StartedServer> {
  const { name, workers = true, readyAttempts = 240, readyIntervalMs = 500, detached = false, until = 'ready' } = options;
  const probePath = until === 'listening' ? '/healthz' : '/readyz';
  const port = await freePort();
  const adminKey = process.env.ADMIN_API_KEY || `cp_admin_${randomBytes(24).toString('hex')}`;
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PORT: String(port),
    HOST: '127.0.0.1',
    DATABASE_URL: process.env.DATABASE_URL || DEFAULT_DATABASE_URL,
    REDIS_URL: process.env.REDIS_URL || DEFAULT_REDIS_URL,
    ADMIN_API_KEY: adminKey,
    JWT_SECRET: process.env.JWT_SECRET || randomBytes(32).toString('hex'),
    LOG_LEVEL: process.env.LOG_LEVEL || 'info',
    RUN_WORKERS: 'false',
    ...options.env,
  };
  const logDir = join(ROOT, '.data', 'logs');
  const logs = { server: join(logDir, `${name}-server.log`), workers: workers ? join(logDir, `${name}-workers.log`) : undefined };
  const server = spawnLogged(options.serverEntry ?? 'src/main.ts', logs.server, env, detached);
  const worker = workers && logs.workers ? spawnLogged(options.workersEntry ?? 'workers/main.ts', logs.workers, env, detached) : undefined;
  let tracked = true;
  const children = [server, worker].filter((c): c is ChildProcess => c !== undefined);
  const stop = async (graceMs = 15_000): Promise<{ server: StopOutcome; workers?: StopOutcome }> => {
    if (!tracked) return { server: 'not running', ...(worker ? { workers: 'not running' as const } : {}) };
    tracked = false;
    process.off('exit', killOnExit);
    const [s, w] = await Promise.all([stopChild(server, graceMs), stopChild(worker, graceMs)]);
    return { server: s, ...(worker ? { workers: w } : {}) };
  };
  // Never leave orphans behind when this process dies unexpectedly.
  const killOnExit = () => {
    for (const c of children) if (!exited(c)) c.kill('SIGTERM');
  };
  process.on('exit', killOnExit);

  const baseUrl = `http://127.0.0.1:${port}`;
  const fail = async (why: string): Promise<never> => {
    await stop(5_000);
    const parts = [`${why}`, `--- last lines of ${logs.server} ---`, tail(logs.server)];
    if (logs.workers) parts.push(`--- last lines of ${logs.workers} ---`, tail(logs.workers, 15));
    throw new Error(parts.join('\n'));
  };
  let lastError = '';
  for (let attempt = 1; attempt <= readyAttempts; attempt++) {
    if (exited(server)) return fail(`the server process exited (code ${server.exitCode}, signal ${server.signalCode}) before it was ready`);
    if (worker && exited(worker)) return fail(`the workers process exited (code ${worker.exitCode}, signal ${worker.signalCode}) while the server was starting`);
    try {
      const res = await fetch(`${baseUrl}${probePath}`, { signal: AbortSignal.timeout(2_000) });
      await res.arrayBuffer();
      if (res.status === 200) {
        return {
          baseUrl,
          graphqlUrl: `${baseUrl}/graphql`,
          port,
          adminKey,
          logs,
          pids: { server: server.pid ?? -1, workers: worker?.pid },
          stop,
          detach() {
            tracked = false;
            process.off('exit', killOnExit);
            for (const c of children) c.unref();
          },
        };
      }
      lastError = `GET ${probePath} answered ${res.status}`;
    } catch (e) {
      lastError = (e as Error).message;
    }
    await new Promise((r) => setTimeout(r, readyIntervalMs));
  }
  return fail(`the server was not ${until} after ${readyAttempts} polls of ${baseUrl}${probePath} (${((readyAttempts * readyIntervalMs) / 1000).toFixed(0)} s); last: ${lastError}`);
}

/**
 * Makes sure src/generated/graphql.ts exists and is newer than codegen.ts, the schema and
 * every operation document; runs `graphql-codegen --config codegen.ts` otherwise.
 * @throws Error when codegen fails (its output is included)
 */
export async function ensureCodegen(): Promise<void> {
  const out = join(ROOT, 'src/generated/graphql.ts');
  const inputs = [join(ROOT, 'codegen.ts'), join(ROOT, 'schema/schema.graphql')];
  const opsDir = join(ROOT, 'schema/operations');
  const { readdirSync } = await import('node:fs');
  if (existsSync(opsDir)) for (const f of readdirSync(opsDir)) if (f.endsWith('.graphql')) inputs.push(join(opsDir, f));
  const outTime = existsSync(out) ? statSync(out).mtimeMs : 0;
  if (outTime > 0 && inputs.every((p) => !existsSync(p) || statSync(p).mtimeMs <= outTime)) return;
  const bin = join(ROOT, 'node_modules/.bin/graphql-codegen');
  const child = spawn(bin, ['--config', 'codegen.ts'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (output += d.toString()));
  const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
  if (code !== 0) throw new Error(`npm run codegen failed (exit ${code}):\n${output.slice(-3000)}`);
}
