/**
 * Runs one of the project's scripts (`scripts/*.ts`) as its own process, as an operator runs it
 * (`node --import tsx <script> <args>` from the repository root), and collects its output.
 */
import { spawn } from 'node:child_process';
import { ROOT } from '../../demo/server-process.js';

/** What a script run printed and how it exited. */
export interface ScriptRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs `script` (a path from the repository root) with `args` and the environment `env` (give
 * the whole environment: the child gets exactly it). Resolves when the process has exited.
 * @throws (rejects) when the process cannot be started.
 */
export function runScript(script: string, args: readonly string[], env: NodeJS.ProcessEnv): Promise<ScriptRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', script, ...args], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}
