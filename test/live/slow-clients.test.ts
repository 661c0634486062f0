/**
 * Live clients that stop reading (a frozen tab, a half-open connection, an attacker): the server
 * must neither buffer for them without bound nor hold their connection forever. Raw clients on
 * real sockets whose reading is paused (so the TCP window fills), a real server, real Redis.
 *
 * The kernel's socket buffers (several MB on loopback) fill before the server's own buffer grows,
 * so each test makes the server write well past them.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import net from 'node:net';
import { Redis } from 'ioredis';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, uniq } from '../api/helpers.js';
import { BALANCE_SUB, wsUrl } from './helpers.js';
import { accountChannel, type LiveMessage } from '../../src/outbox/topics.js';
import { TEST_REDIS_URL } from '../setup/env.js';

const MAX_BUFFERED_BYTES = 256 * 1024;

let srv: TestServer;
let publisher: Redis;
/** The server's end of each connection, by the client's port. */
const serverSockets = new Map<number, net.Socket>();

beforeAll(async () => {
  srv = await startTestServer({ LIVE_MAX_BUFFERED_BYTES: String(MAX_BUFFERED_BYTES), LIVE_WS_KEEPALIVE_MS: '1000', LIVE_SSE_STALL_TIMEOUT_MS: '1500' });
  srv.http.on('connection', (socket) => {
    const port = socket.remotePort!;
    serverSockets.set(port, socket);
    socket.once('close', () => serverSockets.delete(port));
  });
  publisher = new Redis(TEST_REDIS_URL);
});

afterAll(async () => {
  await publisher.quit();
  await srv.close();
});

/** Live counters of the server (/readyz). */
async function liveStats(): Promise<{ webSockets: number; listeners: number }> {
  return ((await (await fetch(new URL('/readyz', srv.url))).json()) as { live: { webSockets: number; listeners: number } }).live;
}

/**
 * Resolves once the server's end of the connection from local port `port` is closed, with the
 * most bytes it held unsent while open (sampled every 20 ms: a measurement, not a wait);
 * rejects after `timeoutMs`.
 */
function serverSideClosed(port: number, timeoutMs: number): Promise<{ maxBufferedBytes: number }> {
  const socket = serverSockets.get(port);
  if (!socket) return Promise.reject(new Error(`no server socket for client port ${port}`));
  let maxBufferedBytes = 0;
  const sample = setInterval(() => (maxBufferedBytes = Math.max(maxBufferedBytes, socket.writableLength)), 20);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      clearInterval(sample);
      reject(new Error(`the server kept the connection open for ${timeoutMs} ms (most bytes buffered: ${maxBufferedBytes}, now ${socket.writableLength})`));
    }, timeoutMs);
    socket.once('close', () => {
      clearTimeout(timer);
      clearInterval(sample);
      resolve({ maxBufferedBytes });
    });
  });
}

/** A graphql-ws connection, acknowledged, whose own reading is then paused. */
async function stalledWebSocket(): Promise<WebSocket> {
  const ws = new WebSocket(wsUrl(srv.url), 'graphql-transport-ws');
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const ack = new Promise((resolve) => ws.once('message', resolve));
  ws.send(JSON.stringify({ type: 'connection_init', payload: { authorization: `Bearer ${srv.adminKey}` } }));
  await ack;
  return ws;
}

describe('a client that stops reading', () => {
  it('WebSocket: the server stops reading from a client it cannot write to, so spoofed pongs do not keep it alive; its buffer stays bounded and it is closed', async () => {
    const ws = await stalledWebSocket();
    const port = (ws as unknown as { _socket: net.Socket })._socket.localPort!;
    (ws as unknown as { _socket: net.Socket })._socket.pause();
    const closed = serverSideClosed(port, 20_000);
    // Each operation is refused with an error that echoes its ~30 KB unknown field name: 12 MB
    // of answers. Unsolicited pongs (which a client may send at any time) answer every ping.
    const field = 'x'.repeat(30_000);
    for (let i = 0; i < 400; i++) ws.send(JSON.stringify({ id: `op${i}`, type: 'subscribe', payload: { query: `{ ${field} }` } }));
    const pongs = setInterval(() => ws.pong(), 100);
    try {
      const { maxBufferedBytes } = await closed;
      // One read of the socket (≤ 64 KB) may still be answered after the limit is passed.
      expect(maxBufferedBytes).toBeLessThan(MAX_BUFFERED_BYTES + 256 * 1024);
    } finally {
      clearInterval(pongs);
      ws.terminate();
    }
  }, 30_000);

  it('WebSocket: a subscription on a busy account whose client never reads holds one message and is closed by the keepalive', async () => {
    const account = await apiAccount(srv, { paid: '1000' });
    const ws = await stalledWebSocket();
    const first = new Promise((resolve) => ws.once('message', resolve));
    ws.send(JSON.stringify({ id: '1', type: 'subscribe', payload: { query: BALANCE_SUB, variables: { id: account } } }));
    await first;
    const socket = (ws as unknown as { _socket: net.Socket })._socket;
    socket.pause();
    const closed = serverSideClosed(socket.localPort!, 20_000);
    await publishBalances(account, 20_000);
    try {
      const { maxBufferedBytes } = await closed;
      expect(maxBufferedBytes).toBeLessThan(64 * 1024);
    } finally {
      ws.terminate();
    }
  }, 30_000);

  it('SSE: a stream whose client takes nothing for LIVE_SSE_STALL_TIMEOUT_MS is closed and its subscription ended', async () => {
    const account = await apiAccount(srv, { paid: '1000' });
    const before = await liveStats();
    const u = new URL(srv.url);
    const socket = net.connect(Number(u.port), u.hostname);
    await new Promise((resolve) => socket.once('connect', resolve));
    const body = JSON.stringify({ query: BALANCE_SUB, variables: { id: account } });
    const firstBytes = new Promise((resolve) => socket.once('data', resolve));
    socket.write(`POST /graphql HTTP/1.1\r\nhost: ${u.host}\r\naccept: text/event-stream\r\ncontent-type: application/json\r\nauthorization: Bearer ${srv.adminKey}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    await firstBytes;
    socket.pause();
    const closed = serverSideClosed(socket.localPort!, 30_000);
    try {
      await publishBalances(account, 30_000);
      await closed;
      // The subscription ended with its connection (the server's close handlers ran before 'close' resolved here).
      expect((await liveStats()).listeners).toBe(before.listeners);
    } finally {
      socket.destroy();
    }
  }, 40_000);

  it('SSE: an idle stream whose client reads stays open past the stall timeout (the heartbeat keeps it moving) and still delivers', async () => {
    const account = await apiAccount(srv, { paid: '1000' });
    const u = new URL(srv.url);
    const socket = net.connect(Number(u.port), u.hostname);
    await new Promise((resolve) => socket.once('connect', resolve));
    let received = '';
    let onData: (() => void) | null = null;
    socket.on('data', (chunk) => {
      received += chunk.toString();
      onData?.();
    });
    const until = (pred: () => boolean) => new Promise<void>((resolve) => (onData = () => pred() && resolve()));
    const body = JSON.stringify({ query: BALANCE_SUB, variables: { id: account } });
    socket.write(`POST /graphql HTTP/1.1\r\nhost: ${u.host}\r\naccept: text/event-stream\r\ncontent-type: application/json\r\nauthorization: Bearer ${srv.adminKey}\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    // Heartbeats (":" comments, every 300 ms under NODE_ENV=test) for more than twice the 1.5 s stall timeout.
    const heartbeats = () => received.split(':\n\n').length - 1;
    await until(() => heartbeats() >= 12);
    expect(socket.destroyed).toBe(false);
    await srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId: account, category: 'unit', idempotencyKey: uniq('use') } });
    await until(() => received.includes('"available":"999"'));
    socket.destroy();
  }, 30_000);
});

/** Publishes `count` balance messages of `account` (increasing versions) on its channel, as the relay would. */
async function publishBalances(account: string, count: number): Promise<void> {
  const channel = accountChannel('creditpool:live:', dbId(account));
  const template = await balanceMessage(account);
  let version = BigInt(template.payload.version);
  for (let sent = 0; sent < count; sent += 2_000) {
    const pipeline = publisher.pipeline();
    for (let i = 0; i < 2_000; i++) pipeline.publish(channel, JSON.stringify({ ...template, payload: { ...template.payload, version: String(++version) } }));
    await pipeline.exec();
  }
}

/** One real balance message of `account`: heard on its channel while a charge commits. */
async function balanceMessage(account: string): Promise<Extract<LiveMessage, { topic: 'balance' }>> {
  const listener = new Redis(TEST_REDIS_URL);
  try {
    const channel = accountChannel('creditpool:live:', dbId(account));
    await listener.subscribe(channel);
    const heard = new Promise<string>((resolve) => listener.on('message', (_c, raw: string) => resolve(raw)));
    await srv.gql(`mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`, { input: { accountId: account, category: 'unit', idempotencyKey: uniq('use') } });
    return JSON.parse(await heard) as Extract<LiveMessage, { topic: 'balance' }>;
  } finally {
    listener.disconnect();
  }
}
