/**
 * Pricing through the API against the real server and PostgreSQL: which instant LLM catalog
 * prices are taken at (the account's "now": its test clock for a test-mode account), that
 * `quote` says what the charge then costs and whether credit covers it (a capture: with what is
 * left of its hold), and publishing price books.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { TEST_PRICE_BOOK } from '../setup/test-price-book.js';
import { apiAccount, dbId, expectError, expectUnchanged, grant, ok, uniq } from './helpers.js';

const EVENT = `id cost occurredAt priceBookVersion lines { item quantity unitPrice amount }`;
const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { ${EVENT} } }`;
const BATCH = `mutation($inputs: [RecordUsageInput!]!) { recordUsageBatch(inputs: $inputs) { errorCode errorMessage event { ${EVENT} } } }`;
const QUOTE = `query($input: RecordUsageInput!) { quote(input: $input) { cost lines { item quantity unitPrice amount } affordable } }`;
const RESERVE = `mutation($input: ReserveCreditsInput!) { reserveCredits(input: $input) { id } }`;
const SETTLE = `mutation($input: SettleReservationInput!) { settleReservation(input: $input) { id consumed status } }`;

/** A test-mode account whose clock starts at `start`, funded with `paid` PAID credits. */
async function testClockAccount(srv: TestServer, start: string, paid: string): Promise<string> {
  const id = ok(
    await srv.gql(`mutation($input: CreateAccountInput!) { createAccount(input: $input) { id } }`, {
      input: { externalId: uniq('clock'), name: 'pricing test clock', kind: 'ORGANIZATION', welcomeBonus: false, testMode: true, testClockStart: start },
    }),
  ).createAccount.id as string;
  await grant(srv, id, paid, 'PAID');
  return id;
}

describe.each(['group', 'naive'])('LLM catalog prices are those in force at the account\'s now (CHARGE_PATH=%s)', (chargePath) => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer({ CHARGE_PATH: chargePath });
  });
  afterAll(async () => {
    await srv?.close();
  });

  // claude-opus-4-6 (genai-prices 0.1.8): before 2026-03-13 a prompt over 200,000 tokens cost
  // $10 / $37.50 per million input / output tokens; from that date $5 / $25 at any size.
  const BEFORE_CHANGE = '2026-02-01T12:00:00.000Z';
  const llm = (accountId: string, extra: Record<string, unknown> = {}) => ({
    accountId,
    idempotencyKey: uniq('llm'),
    category: 'llm',
    model: 'claude-opus-4-6',
    quantities: { inputTokens: 300_000, outputTokens: 1_000 },
    ...extra,
  });
  // The test book's category-wide llm rule: catalog price + 20 %, 1 credit = $0.01.
  // (300,000 x $10 + 1,000 x $37.50) / 1e6 = $3.0375 = 303.75 credits; + 20 % = 364.5.
  const COST_BEFORE_CHANGE = '364.5';

  it('a test-mode account is charged the price of its test clock\'s instant (single, batch, settle, quote), as if occurredAt were given', async () => {
    const acct = await testClockAccount(srv, BEFORE_CHANGE, '10000');
    const explicit = ok(await srv.gql(RECORD, { input: llm(acct, { occurredAt: BEFORE_CHANGE }) })).recordUsage;
    expect(explicit.cost).toBe(COST_BEFORE_CHANGE);

    const quote = ok(await srv.gql(QUOTE, { input: llm(acct) })).quote;
    expect(quote.cost).toBe(COST_BEFORE_CHANGE);

    const single = ok(await srv.gql(RECORD, { input: llm(acct) })).recordUsage;
    expect(single.occurredAt).toBe(BEFORE_CHANGE);
    expect(single.cost).toBe(COST_BEFORE_CHANGE);
    expect(single.lines).toEqual(explicit.lines);
    expect(quote.lines).toEqual(explicit.lines);

    const [item] = ok(await srv.gql(BATCH, { inputs: [llm(acct)] })).recordUsageBatch;
    expect(item.errorCode).toBeNull();
    expect(item.event).toMatchObject({ cost: COST_BEFORE_CHANGE, occurredAt: BEFORE_CHANGE });

    const hold = ok(await srv.gql(RESERVE, { input: { accountId: acct, amount: '500', idempotencyKey: uniq('hold') } })).reserveCredits;
    const settled = ok(await srv.gql(SETTLE, { input: { reservationId: hold.id, usage: [llm(acct)] } })).settleReservation;
    expect(settled).toMatchObject({ consumed: COST_BEFORE_CHANGE, status: 'SETTLED' });

    await expectLedgerInvariant(srv.services.pool, dbId(acct));
  });
});

describe('quote.affordable with a reservationId', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer();
  });
  afterAll(async () => {
    await srv?.close();
  });

  const RELEASE = `mutation($id: ID!) { releaseReservation(reservationId: $id) { id } }`;
  const RECORD_DEBT = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { cost debt } }`;
  /** A `units` event (1 credit per unit in the test book) of `units` credits, against `reservationId` when given. */
  const units = (accountId: string, units: string, reservationId?: string) => ({
    accountId,
    idempotencyKey: uniq('u'),
    category: 'units',
    quantities: { units },
    ...(reservationId ? { reservationId } : {}),
  });
  const affordable = async (input: Record<string, unknown>) => ok(await srv.gql(QUOTE, { input })).quote.affordable as boolean;
  const hold = async (accountId: string, amount: string) =>
    ok(await srv.gql(RESERVE, { input: { accountId, amount, idempotencyKey: uniq('hold') } })).reserveCredits.id as string;

  it('a capture is affordable when what is left of its ACTIVE hold plus the available credit covers it, as recordUsage then draws it without debt', async () => {
    const acct = await testClockAccount(srv, '2026-06-01T00:00:00.000Z', '10');
    const h = await hold(acct, '9'); // available 1
    expect(await affordable(units(acct, '5'))).toBe(false); // without the hold: 5 > 1
    expect(await affordable(units(acct, '5', h))).toBe(true);
    expect(await affordable(units(acct, '10', h))).toBe(true); // 9 + 1
    expect(await affordable(units(acct, '10.000001', h))).toBe(false); // a micro-credit of debt
    // recordUsage agrees: the affordable capture leaves no debt.
    expect(ok(await srv.gql(RECORD_DEBT, { input: units(acct, '5', h) })).recordUsage).toEqual({ cost: '5', debt: '0' });
    expect(await affordable(units(acct, '5', h))).toBe(true); // 4 left + 1
    expect(await affordable(units(acct, '5.000001', h))).toBe(false);
    await expectLedgerInvariant(srv.services.pool, dbId(acct));
  });

  it('with the account in debt, what is left of the hold still covers a capture; beyond it nothing does', async () => {
    const acct = await testClockAccount(srv, '2026-06-01T00:00:00.000Z', '2');
    const [a, b] = [await hold(acct, '1'), await hold(acct, '1')];
    expect(ok(await srv.gql(RECORD_DEBT, { input: units(acct, '3', a) })).recordUsage.debt).toBe('2');
    expect(await affordable(units(acct, '1', b))).toBe(true);
    expect(await affordable(units(acct, '1.000001', b))).toBe(false);
    expect(await affordable(units(acct, '0.5'))).toBe(false);
  });

  it('a hold that is not ACTIVE, or not of the account, covers nothing: the capture would be refused', async () => {
    const acct = await testClockAccount(srv, '2026-06-01T00:00:00.000Z', '10');
    const other = await testClockAccount(srv, '2026-06-01T00:00:00.000Z', '10');
    const released = await hold(acct, '2');
    ok(await srv.gql(RELEASE, { id: released }));
    expect(await affordable(units(acct, '1'))).toBe(true); // control: the available credit covers it
    expect(await affordable(units(acct, '1', released))).toBe(false);
    expect(await affordable(units(acct, '1', await hold(other, '2')))).toBe(false);
  });
});

describe('publishPriceBook', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer();
  });
  afterAll(async () => {
    await srv?.close();
  });

  const PUBLISH = `mutation($input: PriceBookInput!) { publishPriceBook(input: $input) { version name publishedAt } }`;

  it('concurrent publishes each answer the version they stored (never an error for a book that was published)', async () => {
    // Same rules as the test book, so other tests price as before whichever version wins.
    const names = Array.from({ length: 8 }, (_, i) => `concurrent ${i} ${uniq('book')}`);
    try {
      const answers = await Promise.all(names.map((name) => srv.gql(PUBLISH, { input: { ...TEST_PRICE_BOOK, name } })));
      const published = answers.map((res) => ok(res).publishPriceBook as { version: number; name: string; publishedAt: string });
      expect(published.map((p) => p.name)).toEqual(names);
      const { rows } = await srv.services.pool.query('SELECT version, name, published_at FROM price_books WHERE name = ANY($1) ORDER BY version', [names]);
      expect(rows).toHaveLength(names.length);
      const stored = new Map(rows.map((r) => [r.name as string, { version: r.version as number, publishedAt: (r.published_at as Date).toISOString() }]));
      for (const p of published) expect({ version: p.version, publishedAt: p.publishedAt }).toEqual(stored.get(p.name));
    } finally {
      ok(await srv.gql(PUBLISH, { input: TEST_PRICE_BOOK }));
    }
  });

  it('publishes one at a time: a publish takes its version only once the one before it committed, so the book committed last is the one in force', async () => {
    // Versions come from a sequence: without waiting, B could take version n+1 while A (n) was
    // still uncommitted, commit first, and A, committed last, would never be in force.
    const pool = srv.services.pool;
    const { rows: seq } = await pool.query(`SELECT pg_get_serial_sequence('price_books', 'version') AS name`);
    const lastVersion = async () => Number((await pool.query(`SELECT last_value FROM ${seq[0].name as string}`)).rows[0].last_value);
    const waitingOnLocks = async (n: number) => {
      for (;;) {
        const { rows } = await pool.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`);
        if (rows[0].n >= n) return;
        await new Promise((resolve) => setImmediate(resolve));
      }
    };
    const [nameA, nameB] = [uniq('book A'), uniq('book B')];
    const holder = await pool.connect();
    let a: Promise<unknown> | undefined;
    let b: Promise<unknown> | undefined;
    try {
      // A publish inserts its book, then its audit row: holding the audit table keeps A open after its insert.
      await holder.query('BEGIN');
      await holder.query('LOCK TABLE audit_events IN SHARE ROW EXCLUSIVE MODE');
      const before = await lastVersion();
      a = srv.gql(PUBLISH, { input: { ...TEST_PRICE_BOOK, name: nameA } });
      await waitingOnLocks(1);
      b = srv.gql(PUBLISH, { input: { ...TEST_PRICE_BOOK, name: nameB } });
      await waitingOnLocks(2);
      expect(await lastVersion()).toBe(before + 1); // only A has a version: B waits for A's commit
      await holder.query('COMMIT');
      const [ra, rb] = await Promise.all([a, b]);
      const va = (ok(ra as never).publishPriceBook as { version: number }).version;
      const vb = (ok(rb as never).publishPriceBook as { version: number }).version;
      expect(vb).toBe(va + 1);
      const { rows } = await pool.query('SELECT name FROM price_books ORDER BY version DESC LIMIT 1');
      expect(rows[0].name).toBe(nameB);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
      await Promise.allSettled([a, b]);
      ok(await srv.gql(PUBLISH, { input: TEST_PRICE_BOOK }));
    }
  });
});

describe('a BYOK PASS_THROUGH event with a catalog model and no providerCostUsd', () => {
  let srv: TestServer;
  beforeAll(async () => {
    srv = await startTestServer();
  });
  afterAll(async () => {
    await srv?.close();
  });

  // The test book: "passthrough" is PASS_THROUGH + 10 % with fallbackCredits 1, byokFeePercent 5.
  const byok = (accountId: string, quantities?: Record<string, number>) => ({
    accountId,
    idempotencyKey: uniq('byok'),
    category: 'passthrough',
    model: 'gpt-4o',
    byok: true,
    ...(quantities ? { quantities } : {}),
  });

  it('is refused by quote and recordUsage alike without token counts (its fee would be 0), and with them costs 5 % of their catalog price', async () => {
    const acct = await apiAccount(srv, { paid: '10' });
    await expectUnchanged(srv, [acct], async () => {
      for (const res of [await srv.gql(QUOTE, { input: byok(acct) }), await srv.gql(RECORD, { input: byok(acct) })]) {
        expect(expectError(res, 'BAD_USER_INPUT').message).toMatch(/^quantities: the PASS_THROUGH rule for category "passthrough"/);
      }
    });
    // gpt-4o: 1,000 x $2.50 + 200 x $10 per million = $0.0045 = 0.45 credits; the fee is 5 % of it.
    const counted = byok(acct, { inputTokens: 1_000, outputTokens: 200 });
    expect(ok(await srv.gql(QUOTE, { input: counted })).quote.cost).toBe('0.0225');
    const ev = ok(await srv.gql(RECORD, { input: counted })).recordUsage;
    expect(ev.cost).toBe('0.0225');
    expect(ev.lines).toEqual([{ item: 'byok_fee', quantity: '0.45', unitPrice: '0.05', amount: '0.0225' }]);
    await expectLedgerInvariant(srv.services.pool, dbId(acct));
  });
});
