/**
 * Runs one of the project's scripts (`scripts/*.ts`, `workers/main.ts`, ...) as its own process,
 * as an operator runs it (`node --import tsx <script> <args>` from the repository root), and
 * collects its output.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { ROOT } from '../../demo/server-process.js';

/** What a script run printed and how it exited. */
export interface ScriptRun {
  code: number | null;
  /** The signal that ended it (null when it exited by itself). */
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** A script process still running, started by {@link startScript}. */
export interface RunningScript {
  child: ChildProcess;
  /** What it printed on stdout so far. */
  stdout(): string;
  /**
   * Resolves once stdout contains `text` (at once if it already does).
   * @throws (rejects) when the process exits first, or after `timeoutMs` (default 20 s), with the output so far
   */
  waitForOutput(text: string, timeoutMs?: number): Promise<void>;
  /** Resolves when the process has exited (its streams closed). */
  exited: Promise<ScriptRun>;
}

/**
 * Starts `script` (a path from the repository root) with `args` and the environment `env` (give
 * the whole environment: the child gets exactly it) and returns at once. The child is SIGKILLed
 * if this process exits while it still runs.
 * @throws (the `exited` promise rejects) when the process cannot be started.
 */
export function startScript(script: string, args: readonly string[], env: NodeJS.ProcessEnv): RunningScript {
  const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  // Never left behind when the test process ends first (a failed test that did not stop it).
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  child.once('exit', () => process.off('exit', killOnExit));
  let stdout = '';
  let stderr = '';
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => {
    stdout += d.toString();
    for (const w of [...waiters]) w();
  });
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<ScriptRun>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      resolve({ code, signal, stdout, stderr });
      for (const w of [...waiters]) w();
    });
  });
  exited.catch(() => undefined);
  const waitForOutput = (text: string, timeoutMs = 20_000) =>
    new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => done(new Error(`"${text}" not printed within ${timeoutMs} ms; stdout:\n${stdout.slice(-3000)}\nstderr:\n${stderr.slice(-2000)}`)), timeoutMs);
      const check = () => {
        if (stdout.includes(text)) done();
        else if (child.exitCode !== null || child.signalCode !== null) done(new Error(`exited (${child.exitCode ?? child.signalCode}) before printing "${text}"; stdout:\n${stdout.slice(-3000)}\nstderr:\n${stderr.slice(-2000)}`));
      };
      const done = (err?: Error) => {
        clearTimeout(timer);
        waiters.delete(check);
        if (err) reject(err);
        else resolve();
      };
      waiters.add(check);
      check();
    });
  return { child, stdout: () => stdout, waitForOutput, exited };
}

/**
 * Runs `script` (a path from the repository root) with `args` and the environment `env` (give
 * the whole environment: the child gets exactly it). Resolves when the process has exited.
 * @throws (rejects) when the process cannot be started.
 */
export function runScript(script: string, args: readonly string[], env: NodeJS.ProcessEnv): Promise<ScriptRun> {
  return startScript(script, args, env).exited;
}

/** How a script stopped by a test ended, and how long after `sinceMs` (epoch ms) it had exited. */
export interface TimedExit {
  run: ScriptRun;
  elapsedMs: number;
}

/**
 * Waits for `script` to exit, at most until `boundMs` after `sinceMs` (epoch ms, e.g. when the
 * test sent SIGTERM): a bound raced against the exit, not a sleep.
 * @returns the run and its time from `sinceMs` to the exit, or 'still running' at the bound
 *   (the process is left running: the caller kills it).
 */
export async function exitedWithin(script: RunningScript, sinceMs: number, boundMs: number): Promise<TimedExit | 'still running'> {
  let bound: NodeJS.Timeout | undefined;
  return Promise.race([
    script.exited.then((run) => ({ run, elapsedMs: Date.now() - sinceMs })),
    new Promise<'still running'>((resolve) => (bound = setTimeout(() => resolve('still running'), Math.max(0, sinceMs + boundMs - Date.now())))),
  ]).finally(() => clearTimeout(bound));
}
