/**
 * Database connections a fault test can find, cut or never get: the test database's URL with an
 * application_name of its own (its backends are found in pg_stat_activity and terminated there),
 * a URL of a loopback port nothing listens on, and a TCP relay to the test database that can go
 * silent like a lost network.
 */
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import type pg from 'pg';
import { freePort } from '../../demo/server-process.js';
import { TEST_DATABASE_URL } from './env.js';

/** TEST_DATABASE_URL with application_name `<prefix>-<8 random hex>`; returns both. */
export function taggedDatabaseUrl(prefix: string): { url: string; name: string } {
  const name = `${prefix}-${randomUUID().slice(0, 8)}`;
  const url = new URL(TEST_DATABASE_URL);
  url.searchParams.set('application_name', name);
  return { url: url.toString(), name };
}

/**
 * Terminates (pg_terminate_backend, as a restart or failover would) every backend whose
 * application_name is `name`, through `db`. @returns how many were terminated
 */
export async function terminateBackends(db: pg.Pool | pg.Client, name: string): Promise<number> {
  const { rows } = await db.query(`SELECT COUNT(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE application_name = $1`, [name]);
  return rows[0].n as number;
}

/** TEST_DATABASE_URL pointed at a loopback port nothing listens on: every connection is refused (ECONNREFUSED). */
export async function unreachableDatabaseUrl(): Promise<string> {
  const url = new URL(TEST_DATABASE_URL);
  url.hostname = '127.0.0.1';
  url.port = String(await freePort());
  return url.toString();
}

/** A TCP relay in front of the test database (see {@link startSilenceableRelay}). */
export interface SilenceableRelay {
  /** TEST_DATABASE_URL (with `databaseUrl`'s parameters) pointed at the relay. */
  url: string;
  /**
   * From now on the relay drops every byte in both directions and answers no new connection,
   * while keeping every socket open: what a client sees of a server or network that went away
   * without a TCP reset (a lost host, a partition). What was relayed before stays done.
   */
  silence(): void;
  /**
   * Drops every relayed connection at once (both sides destroyed: the client sees its connection
   * reset, the server a closed client) and refuses new ones until `restore()`: a connection that
   * broke and cannot be re-established yet. Bytes the server sends meanwhile go nowhere.
   */
  cut(): void;
  /** Relays again (new connections; bytes dropped while silent or cut stay lost). */
  restore(): void;
  /** Closes the relay and every connection through it. */
  close(): Promise<void>;
}

/**
 * Starts a TCP relay on a free loopback port to `databaseUrl`'s host and port (default: the test
 * database). A test points a pool at `url`, then `silence()`s it to see what the client does when
 * PostgreSQL never answers.
 */
export async function startSilenceableRelay(databaseUrl: string = TEST_DATABASE_URL): Promise<SilenceableRelay> {
  const target = new URL(databaseUrl);
  const host = target.hostname || '127.0.0.1';
  const port = Number(target.port || 5432);
  let silent = false;
  let cut = false;
  const sockets = new Set<net.Socket>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.on('error', () => undefined);
  };
  const server = net.createServer((down) => {
    track(down);
    if (cut) {
      down.destroy();
      return;
    }
    if (silent) {
      down.resume(); // read and drop: the bytes are "sent", nothing ever answers
      return;
    }
    const up = net.connect(port, host);
    track(up);
    down.on('data', (chunk) => {
      if (!silent) up.write(chunk);
    });
    up.on('data', (chunk) => {
      if (!silent) down.write(chunk);
    });
    // A client that gives up closes its side; the server side follows only while the network works.
    down.on('close', () => {
      if (!silent) up.destroy();
    });
    up.on('close', () => {
      if (!silent) down.destroy();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(databaseUrl);
  url.hostname = '127.0.0.1';
  url.port = String((server.address() as net.AddressInfo).port);
  return {
    url: url.toString(),
    silence: () => {
      silent = true;
    },
    cut: () => {
      cut = true;
      for (const s of sockets) s.destroy();
    },
    restore: () => {
      silent = false;
      cut = false;
    },
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
