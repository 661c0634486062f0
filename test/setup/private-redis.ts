/**
 * A private redis-server (Debian's package, on a free loopback port, nothing on disk) that a test
 * may kill and start again on the same port, to test what happens when Redis goes away.
 * Readiness is read from the server's own "Ready to accept connections" line, not by polling.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { freePort } from '../../demo/server-process.js';

/** A running private Redis. */
export interface PrivateRedis {
  url: string;
  port: number;
  /** SIGKILLs the server (no shutdown, connections drop) and waits for it to exit. */
  kill(): Promise<void>;
  /** Starts it again on the same port; resolves when it accepts connections. */
  start(): Promise<void>;
  stop(): Promise<void>;
}

function launch(port: number): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'notice'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      if (out.includes('Ready to accept connections')) {
        child.stdout?.off('data', onData);
        child.stdout?.resume();
        resolve(child);
      }
    };
    child.stdout?.on('data', onData);
    child.stderr?.resume();
    child.once('error', (err) => reject(new Error(`could not start redis-server (apt-get install redis-server): ${err.message}`)));
    child.once('exit', (code) => reject(new Error(`redis-server exited with ${code} before it was ready:\n${out.slice(-2000)}`)));
  });
}

/** Starts a private Redis on a free port. */
export async function startPrivateRedis(): Promise<PrivateRedis> {
  const port = await freePort();
  let child: ChildProcess | null = await launch(port);
  process.once('exit', () => child?.kill('SIGKILL'));
  const kill = async () => {
    const c = child;
    child = null;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => c.once('exit', () => resolve()));
    c.kill('SIGKILL');
    await exited;
  };
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    kill,
    async start() {
      if (child) return;
      child = await launch(port);
    },
    stop: kill,
  };
}
