/**
 * Replays real LLM request traces (data/traces/) against a running creditpool server over
 * GraphQL, as fast as the server takes them (NOT in real time: the Azure trace spans 58.6
 * minutes of wall clock), then prints a summary read back from the API and checks it against
 * what this client counted itself.
 *
 * One ORGANIZATION account (welcome bonus = FREE credit) plus one purchased PAID batch, sized
 * from exact API quotes so the credit runs out about 87.5 % through the trace; the rest of
 * the trace shows the refusals (INSUFFICIENT_CREDITS). One agent of the pool has a budget
 * (setAgentBudget) of a quarter of what its requests would cost: its usage beyond is refused
 * with BUDGET_EXCEEDED while the other agents go on.
 */
import { formatCredits, parseCredits } from '../src/ledger/credits.js';
import { GraphQLRequestError, errorCode, type GraphQLClient } from '../src/client/graphql-client.js';
import {
  AccountBalanceDocument,
  AccountSummaryDocument,
  CreateAccountDocument,
  GrantCreditsDocument,
  PublishPriceBookDocument,
  QuoteDocument,
  RecordUsageBatchDocument,
  RecordUsageDocument,
  ReserveCreditsDocument,
  SetAgentBudgetDocument,
  SettleReservationDocument,
  TaskCostDocument,
  type AccountSummaryQuery,
  type RecordUsageInput,
  type UsageEventChargeFragment,
} from '../src/generated/graphql.js';
import { TOOL_CALL_CREDITS, demoPriceBook } from './price-book.js';
import { llmQuantities, planReplay, showCredits, type PlannedRequest, type TraceChoice } from './plan.js';

/** Options of {@link runReplay}. */
export interface ReplayOptions {
  trace: TraceChoice;
  /** First N requests only. */
  limit?: number;
  /** Operations in flight at once (default 4; one account's charges serialize on the server, so more mostly reorders). */
  concurrency?: number;
  /** Inputs per recordUsageBatch call (default 100). */
  batchSize?: number;
  /** Progress line interval in ms (default 2000). */
  progressMs?: number;
  /** Where lines go (default console.log). */
  log?: (line: string) => void;
  /** Called with the demo account's id right after it was created (the live credit bar subscribes here). */
  onAccountCreated?: (accountId: string) => Promise<void>;
  /**
   * Called after the replay with the account's final balance version as read over HTTP; returns
   * lines for the summary and whether its checks passed (the live credit bar's report).
   */
  onFinalBalance?: (balance: { version: string; available: string }) => Promise<{ lines: string[]; failures: string[] }>;
}

/** What {@link runReplay} found; `ok` is false when any check failed. */
export interface ReplayReport {
  /** Every check passed. */
  ok: boolean;
  /** Relay id of the demo account. */
  accountId: string;
  /** Trace requests replayed. */
  requests: number;
  /** Distinct usage events the client saw charged. */
  eventsCharged: number;
  /** Sum of their costs, micro-credits. */
  spentMicro: bigint;
  /** Wall-clock duration of the replay, seconds. */
  seconds: number;
  /** Usage events and reservations refused with INSUFFICIENT_CREDITS. */
  refusals: number;
  /** Usage events and reservations of the budgeted agent refused with BUDGET_EXCEEDED. */
  overBudget: number;
  /** Retries that returned the first event unchanged. */
  retriesSameEvent: number;
  /** The API's reconciliation: batch remaining - debt == total == ledger sum. */
  invariantHolds: boolean;
  /** What failed, one line each. */
  failures: string[];
}

/** The refusals the demo provokes on purpose: credit ran out, or the budgeted agent is past its budget. */
type RefusalCode = 'INSUFFICIENT_CREDITS' | 'BUDGET_EXCEEDED';
const isRefusal = (code: string | null | undefined): code is RefusalCode => code === 'INSUFFICIENT_CREDITS' || code === 'BUDGET_EXCEEDED';

/** Per-dimension tally kept by the client. */
type Tally = Map<string, { events: number; micro: bigint }>;

function addTally(t: Tally, key: string, micro: bigint): void {
  const cur = t.get(key) ?? { events: 0, micro: 0n };
  cur.events += 1;
  cur.micro += micro;
  t.set(key, cur);
}


const n0 = (n: number) => n.toLocaleString('en-US');
const pct = (a: number, b: number) => (b === 0 ? '0.0' : ((100 * a) / b).toFixed(1));

/** Runs `jobs` with at most `limit` in flight, in order of the array. */
async function pool(jobs: Array<() => Promise<void>>, limit: number): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, jobs.length) }, async () => {
    while (next < jobs.length) {
      const job = jobs[next++] as () => Promise<void>;
      await job();
    }
  });
  await Promise.all(workers);
}

/** Exact per-million-token prices of one model, read from the API's quote (micro-credits per 1M tokens). */
interface ModelQuote {
  input: bigint;
  output: bigint;
  cacheRead: bigint;
}

/**
 * Replays the trace against the server behind `client` (admin key) and prints progress and
 * the final summary.
 * @returns the report; `ok` false when a cross-check or the ledger invariant failed
 * @throws GraphQLRequestError when setup (price book, account, grants) fails
 */
export async function runReplay(client: GraphQLClient, options: ReplayOptions): Promise<ReplayReport> {
  const log = options.log ?? ((line: string) => console.log(line));
  const concurrency = options.concurrency ?? 4;
  const batchSize = options.batchSize ?? 100;
  const plan = planReplay(options.trace, options.limit);
  const first = plan[0];
  const last = plan.at(-1);
  if (!first || !last) throw new Error('empty trace selection');
  const spanMin = (last.occurredAt.getTime() - first.occurredAt.getTime()) / 60_000;
  const traceName = options.trace === 'azure' ? 'Azure LLM inference trace 2023 (conv + code, CC BY 4.0)' : "Mooncake FAST'25 conversation trace (Kimi, Apache-2.0)";
  log(`Replaying ${n0(plan.length)} real LLM requests from the ${traceName}.`);
  log(`The trace spans ${spanMin.toFixed(1)} minutes; the replay sends them as fast as the server takes them (not in real time), ${concurrency} operations in flight.`);
  if (plan.length < 10_000) log(`note: --limit ${plan.length} is below 10,000 requests; the default replays the whole trace.`);

  // ---- setup: price book, account, exact prices, credit sized to run out at ~87.5 % ----
  const runId = `demo-${new Date().toISOString().replace(/[-:.TZ]/g, '').slice(0, 14)}-${process.pid}`;
  const book = await client.request(PublishPriceBookDocument, { input: demoPriceBook(`creditpool demo ${runId}`) });
  log(`Published price book v${book.publishPriceBook.version}: ${book.publishPriceBook.rules.map((r) => `${r.category}${r.model ? `/${r.model}` : ''} ${r.kind}${r.markupPercent ? ` +${r.markupPercent}%` : ''}${r.credits ? ` ${r.credits} cr` : ''}`).join(', ')}`);

  const created = await client.request(CreateAccountDocument, {
    input: { externalId: runId, name: 'Demo AI-agent platform org', kind: 'ORGANIZATION', welcomeBonus: true },
  });
  const account = created.createAccount;
  const accountId = account.id;
  await options.onAccountCreated?.(accountId);
  const freeMicro = account.batches.filter((b) => b.type === 'FREE').reduce((s, b) => s + parseCredits(b.remaining), 0n);

  const models = [...new Set(plan.map((p) => p.model))];
  const quotes = new Map<string, ModelQuote>();
  const quoteOne = async (model: string, q: RecordUsageInput['quantities']) => {
    const r = await client.request(QuoteDocument, { input: { accountId, idempotencyKey: `${runId}-quote`, category: 'llm', model, quantities: q } });
    return parseCredits(r.quote.cost);
  };
  for (const model of models) {
    const input = await quoteOne(model, { inputTokens: 1_000_000 });
    const output = await quoteOne(model, { outputTokens: 1_000_000 });
    const cacheRead = await quoteOne(model, { cacheReadTokens: 1_000_000 });
    quotes.set(model, { input, output, cacheRead });
    log(`  ${model}: ${showCredits(input)} credits per 1M input tokens, ${showCredits(output)} per 1M output, ${showCredits(cacheRead)} per 1M cache-read (from the API's quote, markup included)`);
  }
  const estimate = (p: PlannedRequest): bigint => {
    const q = quotes.get(p.model) as ModelQuote;
    const uncached = BigInt(p.inputTokens - p.cacheReadTokens);
    return (uncached * q.input + BigInt(p.cacheReadTokens) * q.cacheRead + BigInt(p.outputTokens) * q.output) / 1_000_000n;
  };
  const toolMicro = parseCredits(TOOL_CALL_CREDITS);
  const requestCost = (p: PlannedRequest) => estimate(p) + (p.toolCall ? toolMicro : 0n);
  // One agent's budget: a quarter of what its requests would cost (whole credits), for the
  // agent with the second-largest share, so its refusals show while most work goes on.
  const plannedByAgent = new Map<string, bigint>();
  for (const p of plan) plannedByAgent.set(p.agentId, (plannedByAgent.get(p.agentId) ?? 0n) + requestCost(p));
  const ranked = [...plannedByAgent].sort((a, b) => (b[1] > a[1] ? 1 : b[1] < a[1] ? -1 : a[0].localeCompare(b[0])));
  const [budgetAgent, budgetAgentPlanned] = ranked[1] ?? ranked[0]!;
  const budgetLimit = ((budgetAgentPlanned / 4n + 999_999n) / 1_000_000n) * 1_000_000n;
  // What the trace would cost with that agent stopped at its budget.
  const wholeTrace = plan.reduce((s, p) => s + requestCost(p), 0n) - (budgetAgentPlanned > budgetLimit ? budgetAgentPlanned - budgetLimit : 0n);
  const target = (wholeTrace * 875n) / 1000n;
  let paidMicro = target - freeMicro;
  let runsOut = true;
  if (paidMicro < target / 10n) {
    paidMicro = target / 10n;
    runsOut = freeMicro + paidMicro < wholeTrace;
    log(`note: the welcome bonus (${showCredits(freeMicro)}) covers most of this selection's cost; the PAID batch is set to 10 % of the target.`);
  }
  paidMicro = ((paidMicro + 999_999n) / 1_000_000n) * 1_000_000n; // whole credits, like a real pack
  const grant = await client.request(GrantCreditsDocument, {
    input: { accountId, amount: formatCredits(paidMicro), type: 'PAID', source: 'PURCHASE', reference: `${runId}-pack`, idempotencyKey: `${runId}-purchase` },
  });
  log(`Account ${account.externalId} (ORGANIZATION): welcome bonus ${showCredits(freeMicro)} FREE + purchase ${showCredits(parseCredits(grant.grantCredits.amount))} PAID.`);
  const budget = await client.request(SetAgentBudgetDocument, { accountId, agentId: budgetAgent, limit: formatCredits(budgetLimit) });
  log(
    `Agent budget: ${budget.setAgentBudget?.agentId} may spend ${showCredits(parseCredits(budget.setAgentBudget?.limit ?? '0'))} credits per billing period, a quarter of what its requests in this selection would cost ` +
      `(${showCredits(budgetAgentPlanned)}); beyond that its usage is refused with BUDGET_EXCEEDED while the other agents go on.`,
  );
  log(
    runsOut
      ? `The whole selection would cost about ${showCredits(wholeTrace)} credits (exact API prices, that agent stopped at its budget), so the credit should run out about ${pct(Number((freeMicro + paidMicro) / 1000n), Number(wholeTrace / 1000n))} % through it.`
      : `The whole selection would cost about ${showCredits(wholeTrace)} credits: the credit will NOT run out, so no refusals; use a larger --limit (default: the whole trace).`,
  );

  // ---- client-side counters ----
  const seenEvents = new Map<string, bigint>();
  let spentMicro = 0n;
  const byCategory: Tally = new Map();
  const byModel: Tally = new Map();
  const byAgent: Tally = new Map();
  const batchFirstDraw = new Map<string, number>();
  const batchLastDraw = new Map<string, number>();
  const batchEmptiedBy = new Map<string, number>();
  const splitDrawdowns: string[][] = [];
  const refusedByKind = { llm: 0, tool_call: 0, web_search: 0, reservation: 0 };
  let firstRefusal: number | undefined;
  const overBudgetByKind = { llm: 0, tool_call: 0, web_search: 0, reservation: 0 };
  let firstOverBudget: number | undefined;
  let requestsDone = 0;
  let retriesSent = 0;
  let retriesSameEvent = 0;
  let retriesRefusedTwice = 0;
  let reservationsSettled = 0;
  let reservationsConsumedMatch = 0;
  const unexpected = new Map<string, { count: number; example: string }>();
  const failures: string[] = [];

  const noteUnexpected = (code: string, what: string, detail: unknown) => {
    const cur = unexpected.get(code) ?? { count: 0, example: `${what}: ${JSON.stringify(detail).slice(0, 1500)}` };
    cur.count += 1;
    unexpected.set(code, cur);
  };
  const charged = (ev: Pick<UsageEventChargeFragment, 'id' | 'cost'> & { drawdowns?: UsageEventChargeFragment['drawdowns'] }, input: RecordUsageInput, index: number) => {
    const micro = parseCredits(ev.cost);
    const prior = seenEvents.get(ev.id);
    if (prior !== undefined) {
      if (prior !== micro) failures.push(`event ${ev.id} came back with cost ${ev.cost} after ${formatCredits(prior)}`);
      return false;
    }
    seenEvents.set(ev.id, micro);
    spentMicro += micro;
    addTally(byCategory, input.category, micro);
    addTally(byModel, input.model ?? '(none)', micro);
    addTally(byAgent, input.agentId ?? '(none)', micro);
    // An event split over several batches emptied every batch but its last one: that is the
    // exact request at which those batches were exhausted (independent of response order).
    (ev.drawdowns ?? []).slice(0, -1).forEach((d) => batchEmptiedBy.set(d.batch.id, index));
    if ((ev.drawdowns ?? []).length > 1) splitDrawdowns.push((ev.drawdowns ?? []).map((d) => d.batch.id));
    for (const d of ev.drawdowns ?? []) {
      if (!batchFirstDraw.has(d.batch.id) || (batchFirstDraw.get(d.batch.id) as number) > index) batchFirstDraw.set(d.batch.id, index);
      if ((batchLastDraw.get(d.batch.id) ?? -1) < index) batchLastDraw.set(d.batch.id, index);
    }
    return true;
  };
  const refused = (kind: keyof typeof refusedByKind, index: number) => {
    refusedByKind[kind] += 1;
    if (kind !== 'web_search' && (firstRefusal === undefined || index < firstRefusal)) firstRefusal = index;
  };
  const overBudget = (kind: keyof typeof overBudgetByKind, index: number) => {
    overBudgetByKind[kind] += 1;
    if (firstOverBudget === undefined || index < firstOverBudget) firstOverBudget = index;
  };
  /** Tallies a refusal the demo expects: out of credit, or the budgeted agent past its budget. */
  const refusal = (code: RefusalCode, kind: keyof typeof refusedByKind, index: number) =>
    code === 'INSUFFICIENT_CREDITS' ? refused(kind, index) : overBudget(kind, index);

  const baseInput = (p: PlannedRequest): RecordUsageInput => ({
    accountId,
    idempotencyKey: `${runId}:${p.trace}:${p.row}`,
    category: 'llm',
    model: p.model,
    agentId: p.agentId,
    userId: p.userId,
    taskId: p.llmTaskId,
    conversationId: `${p.trace}-conv-${Math.floor(p.row / 8)}`,
    messageId: `${p.trace}-${p.row}`,
    quantities: llmQuantities(p, p.outputTokens),
    metadata: { trace: p.trace, row: p.row, traceTimestamp: p.occurredAt.toISOString() },
  });
  const extraInputs = (p: PlannedRequest): RecordUsageInput[] => {
    const out: RecordUsageInput[] = [];
    const common = { accountId, agentId: p.agentId, userId: p.userId, taskId: p.taskId, messageId: `${p.trace}-${p.row}` };
    if (p.toolCall) out.push({ ...common, idempotencyKey: `${runId}:${p.trace}:${p.row}:tool`, category: 'tool_call', quantities: { units: '1' } });
    if (p.webSearch) out.push({ ...common, idempotencyKey: `${runId}:${p.trace}:${p.row}:search`, category: 'web_search', quantities: { units: '1' } });
    return out;
  };

  // ---- jobs, in trace order ----
  type BatchItem = { input: RecordUsageInput; index: number; isRequest: boolean };
  const jobs: Array<() => Promise<void>> = [];
  let pending: BatchItem[] = [];
  const flush = () => {
    if (pending.length === 0) return;
    const items = pending;
    pending = [];
    jobs.push(async () => {
      let result;
      try {
        result = await client.requestRaw(RecordUsageBatchDocument, { inputs: items.map((i) => i.input) });
      } catch (e) {
        noteUnexpected(errorCode(e) ?? 'CLIENT', 'recordUsageBatch', (e as Error).message);
        requestsDone += items.filter((i) => i.isRequest).length;
        return;
      }
      const rows = result.data?.recordUsageBatch;
      if (!rows || rows.length !== items.length) {
        noteUnexpected(result.errors[0]?.extensions?.code ?? 'BAD_BATCH_RESPONSE', 'recordUsageBatch', { errors: result.errors, items: rows?.length });
        requestsDone += items.filter((i) => i.isRequest).length;
        return;
      }
      rows.forEach((row, k) => {
        const item = items[k] as BatchItem;
        if (row.event) charged(row.event, item.input, item.index);
        else if (isRefusal(row.errorCode)) refusal(row.errorCode, item.input.category as 'llm' | 'tool_call' | 'web_search', item.index);
        else noteUnexpected(row.errorCode ?? 'NO_CODE', 'recordUsageBatch item', { input: item.input, errorCode: row.errorCode, errorMessage: row.errorMessage });
        if (item.isRequest) requestsDone += 1;
      });
    });
  };
  const push = (item: BatchItem) => {
    pending.push(item);
    if (pending.length >= batchSize) flush();
  };

  const single = async (input: RecordUsageInput, index: number): Promise<UsageEventChargeFragment | RefusalCode | 'failed'> => {
    try {
      const r = await client.request(RecordUsageDocument, { input });
      return r.recordUsage;
    } catch (e) {
      const code = errorCode(e);
      if (isRefusal(code)) return code;
      noteUnexpected(errorCode(e) ?? 'CLIENT', 'recordUsage', { input, error: (e as Error).message, errors: e instanceof GraphQLRequestError ? e.errors : undefined });
      return 'failed';
    }
  };

  for (const p of plan) {
    for (const x of extraInputs(p)) push({ input: x, index: p.index, isRequest: false });
    const input = baseInput(p);
    if (p.mode === 'batch') {
      push({ input, index: p.index, isRequest: true });
      continue;
    }
    if (p.mode === 'single') {
      jobs.push(async () => {
        const r = await single(input, p.index);
        if (typeof r === 'object') charged(r, input, p.index);
        else if (r !== 'failed') refusal(r, 'llm', p.index);
        requestsDone += 1;
      });
    } else if (p.mode === 'retry') {
      jobs.push(async () => {
        const a = await single(input, p.index);
        // The same request again with the same idempotency key, as a client would after a timeout.
        const b = await single(input, p.index);
        if (typeof a === 'object') {
          charged(a, input, p.index);
          retriesSent += 1;
          if (typeof b === 'object' && b.id === a.id && b.cost === a.cost) retriesSameEvent += 1;
          else failures.push(`retry of ${input.idempotencyKey} returned ${typeof b === 'object' ? `event ${b.id} cost ${b.cost}` : b} instead of event ${a.id} cost ${a.cost}`);
          if (typeof b === 'object' && b.id !== a.id) charged(b, input, p.index);
        } else if (a !== 'failed') {
          refusal(a, 'llm', p.index);
          if (b === a) retriesRefusedTwice += 1;
          else if (typeof b === 'object') charged(b, input, p.index);
        }
        requestsDone += 1;
      });
    } else {
      jobs.push(async () => {
        await reservationFlow(p, input);
        requestsDone += 1;
      });
    }
  }
  flush();

  /** reserve -> 2 partial captures while "streaming" -> settle with the last part -> read the run's cost. */
  async function reservationFlow(p: PlannedRequest, input: RecordUsageInput): Promise<void> {
    const hold = ((estimate(p) * 3n) / 2n / 1_000_000n + 1n) * 1_000_000n; // 1.5 x the estimate, whole credits up
    let reservationId: string;
    try {
      // The hold is the agent's: it counts against the agent's budget while it holds, and the
      // captures and the settle then spend from it.
      const r = await client.request(ReserveCreditsDocument, {
        input: { accountId, agentId: p.agentId, amount: formatCredits(hold), ttlSeconds: 300, idempotencyKey: `${input.idempotencyKey}:hold` },
      });
      reservationId = r.reserveCredits.id;
    } catch (e) {
      const code = errorCode(e);
      if (isRefusal(code)) refusal(code, 'reservation', p.index);
      else noteUnexpected(errorCode(e) ?? 'CLIENT', 'reserveCredits', { amount: formatCredits(hold), error: (e as Error).message });
      return;
    }
    const out1 = Math.floor(p.outputTokens / 3);
    const out2 = Math.floor(p.outputTokens / 3);
    const out3 = p.outputTokens - out1 - out2;
    const part = (k: number, q: RecordUsageInput['quantities']): RecordUsageInput => ({ ...input, idempotencyKey: `${input.idempotencyKey}:part${k}`, reservationId, quantities: q });
    const parts = [
      part(1, llmQuantities(p, out1)),
      part(2, { outputTokens: out2 }),
    ];
    let partialMicro = 0n;
    for (const pi of parts) {
      const r = await single(pi, p.index);
      if (typeof r === 'object') {
        charged(r, pi, p.index);
        partialMicro += parseCredits(r.cost);
      } else if (r !== 'failed') refusal(r, 'llm', p.index);
    }
    const lastPart = { ...part(3, { outputTokens: out3 }) };
    delete lastPart.reservationId;
    let consumed: bigint;
    try {
      const s = await client.request(SettleReservationDocument, { input: { reservationId, usage: [lastPart] } });
      consumed = parseCredits(s.settleReservation.consumed);
      reservationsSettled += 1;
    } catch (e) {
      noteUnexpected(errorCode(e) ?? 'CLIENT', 'settleReservation', { reservationId, usage: [lastPart], error: (e as Error).message });
      return;
    }
    // settleReservation returns the Reservation, not the event: read the run's total back.
    const tc = await client.request(TaskCostDocument, { accountId, taskId: p.llmTaskId });
    const total = parseCredits(tc.taskCost.credits);
    if (tc.taskCost.events !== 3) failures.push(`streaming run ${p.llmTaskId}: taskCost reports ${tc.taskCost.events} events, expected 3`);
    if (consumed === total) reservationsConsumedMatch += 1;
    const settleMicro = total - partialMicro;
    const settleId = `settle:${reservationId}`;
    if (!seenEvents.has(settleId)) {
      seenEvents.set(settleId, settleMicro);
      spentMicro += settleMicro;
      addTally(byCategory, 'llm', settleMicro);
      addTally(byModel, p.model, settleMicro);
      addTally(byAgent, p.agentId, settleMicro);
    }
  }

  // ---- run, with a progress line every ~2 s ----
  const started = Date.now();
  const startedIso = new Date(started - 60_000).toISOString();
  let ticking = false;
  const progress = setInterval(async () => {
    if (ticking) return;
    ticking = true;
    try {
      const b = await client.request(AccountBalanceDocument, { id: accountId });
      const s = (Date.now() - started) / 1000;
      log(
        `[${s.toFixed(1).padStart(6)} s] requests ${n0(requestsDone).padStart(6)}/${n0(plan.length)} (${pct(requestsDone, plan.length).padStart(5)} %)  ` +
          `events ${n0(seenEvents.size).padStart(6)}  ${n0(Math.round(seenEvents.size / s)).padStart(5)} events/s  ` +
          `available ${showCredits(parseCredits(b.account?.balance.available ?? '0'))} credits  refused ${n0(Object.values(refusedByKind).reduce((a, c) => a + c, 0))}  over budget ${n0(Object.values(overBudgetByKind).reduce((a, c) => a + c, 0))}`,
      );
    } catch (e) {
      log(`[progress] balance query failed: ${(e as Error).message}`);
    } finally {
      ticking = false;
    }
  }, options.progressMs ?? 2_000);
  try {
    await pool(jobs, concurrency);
  } finally {
    clearInterval(progress);
  }
  const seconds = (Date.now() - started) / 1000;

  // One conflicting reuse of a key: must be refused, nothing recorded.
  let conflictShown = 'not tried';
  const firstCharged = plan.find((p) => p.mode === 'single');
  if (firstCharged) {
    const input = { ...baseInput(firstCharged), quantities: { inputTokens: firstCharged.inputTokens + 1, outputTokens: firstCharged.outputTokens } };
    try {
      await client.request(RecordUsageDocument, { input });
      conflictShown = 'ACCEPTED (wrong: same key, different input)';
      failures.push(`same idempotency key with different input was accepted: ${input.idempotencyKey}`);
    } catch (e) {
      conflictShown = errorCode(e) ?? String(e);
      if (conflictShown !== 'IDEMPOTENCY_CONFLICT') failures.push(`same key, different input answered ${conflictShown}, expected IDEMPOTENCY_CONFLICT`);
    }
  }

  // ---- the summary, read from the API ----
  const summary = await client.request(AccountSummaryDocument, { id: accountId, from: startedIso, to: new Date(Date.now() + 60_000).toISOString(), ledgerFirst: 8 });
  const acct = summary.account;
  if (!acct) throw new Error(`account ${accountId} not found in the final query`);
  const live = (await options.onFinalBalance?.({ version: String(acct.balance.version), available: acct.balance.available })) ?? { lines: [], failures: [] };
  failures.push(...live.failures);
  const report = printSummary(acct, {
    log,
    liveLines: live.lines,
    plan,
    concurrency,
    seconds,
    spentMicro,
    eventsCharged: seenEvents.size,
    byCategory,
    byModel,
    byAgent,
    batchFirstDraw,
    batchLastDraw,
    batchEmptiedBy,
    splitDrawdowns,
    refusedByKind,
    firstRefusal,
    budgetAgent,
    budgetAgentPlanned,
    overBudgetByKind,
    firstOverBudget,
    retriesSent,
    retriesSameEvent,
    retriesRefusedTwice,
    reservationsSettled,
    reservationsConsumedMatch,
    conflictShown,
    unexpected,
    failures,
  });
  return { ...report, accountId, requests: plan.length, eventsCharged: seenEvents.size, spentMicro, seconds, retriesSameEvent };
}

interface SummaryInput {
  log: (line: string) => void;
  /** The live credit bar's lines (demo/live-bar.ts), printed in the summary. */
  liveLines: string[];
  plan: PlannedRequest[];
  concurrency: number;
  seconds: number;
  spentMicro: bigint;
  eventsCharged: number;
  byCategory: Tally;
  byModel: Tally;
  byAgent: Tally;
  batchFirstDraw: Map<string, number>;
  batchLastDraw: Map<string, number>;
  batchEmptiedBy: Map<string, number>;
  /** Batch ids, in drawdown order, of every event paid by more than one batch. */
  splitDrawdowns: string[][];
  refusedByKind: Record<'llm' | 'tool_call' | 'web_search' | 'reservation', number>;
  firstRefusal: number | undefined;
  /** The agent with a budget, and what its requests would cost without one (micro-credits). */
  budgetAgent: string;
  budgetAgentPlanned: bigint;
  /** Its usage and holds refused with BUDGET_EXCEEDED, and the first such request. */
  overBudgetByKind: Record<'llm' | 'tool_call' | 'web_search' | 'reservation', number>;
  firstOverBudget: number | undefined;
  retriesSent: number;
  retriesSameEvent: number;
  retriesRefusedTwice: number;
  reservationsSettled: number;
  reservationsConsumedMatch: number;
  conflictShown: string;
  unexpected: Map<string, { count: number; example: string }>;
  failures: string[];
}

type SummaryAccount = NonNullable<AccountSummaryQuery['account']>;

function table(log: (line: string) => void, header: string[], rows: string[][], rightAlign: boolean[]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (r: string[]) => '  ' + r.map((c, i) => (rightAlign[i] ? c.padStart(widths[i] as number) : c.padEnd(widths[i] as number))).join('  ');
  log(fmt(header));
  log('  ' + widths.map((w) => '-'.repeat(w)).join('  '));
  for (const r of rows) log(fmt(r));
}

function printSummary(acct: SummaryAccount, s: SummaryInput): { ok: boolean; refusals: number; overBudget: number; invariantHolds: boolean; failures: string[] } {
  const { log, plan, failures } = s;
  const apiSpent = acct.byCategory.reduce((sum, r) => sum + parseCredits(r.credits), 0n);
  const apiEvents = acct.byCategory.reduce((sum, r) => sum + r.events, 0);
  const refusals = Object.values(s.refusedByKind).reduce((a, c) => a + c, 0);
  const overBudget = Object.values(s.overBudgetByKind).reduce((a, c) => a + c, 0);
  const at = (i: number | undefined) => (i === undefined ? '-' : `#${n0(i + 1)} (${pct(i + 1, plan.length)} %)`);

  log('');
  log('================ creditpool demo summary (read back from the API) ================');
  log(`Throughput: ${n0(plan.length)} trace requests -> ${n0(apiEvents)} usage events in ${s.seconds.toFixed(1)} s = ${n0(Math.round(apiEvents / s.seconds))} events/s (${n0(Math.round(plan.length / s.seconds))} requests/s), not real time.`);
  log(`Credits spent: ${showCredits(apiSpent)}   available now: ${showCredits(parseCredits(acct.balance.available))}   total: ${showCredits(parseCredits(acct.balance.total))}   depleted: ${acct.balance.depleted ? 'yes' : 'no'}`);
  log('');
  log('Credit batches, in drawdown order (FREE before PAID, then soonest expiry):');
  const drawOrder = [...acct.batches].sort(
    (a, b) =>
      (a.type === b.type ? 0 : a.type === 'FREE' ? -1 : 1) ||
      (a.expiresAt ?? '9999').localeCompare(b.expiresAt ?? '9999') ||
      a.addedAt.localeCompare(b.addedAt),
  );
  const rows = drawOrder.map((b, i) => {
    const drawn = parseCredits(b.allocated) - parseCredits(b.remaining);
    return [
      String(i + 1),
      b.type,
      b.source,
      showCredits(parseCredits(b.allocated)),
      showCredits(parseCredits(b.remaining)),
      showCredits(drawn),
      b.status,
      at(s.batchFirstDraw.get(b.id)),
      b.status === 'EXHAUSTED' ? at(s.batchEmptiedBy.get(b.id) ?? s.batchLastDraw.get(b.id)) : '-',
    ];
  });
  table(log, ['#', 'type', 'source', 'allocated', 'remaining', 'drawn', 'status', 'first drawn at', 'exhausted at'], rows, [true, false, false, true, true, true, false, true, true]);
  const free = acct.batches.find((b) => b.type === 'FREE');
  const typeOf = new Map(acct.batches.map((b) => [b.id, b.type]));
  const wrongOrder = s.splitDrawdowns.filter((ids) => ids.some((id, k) => k > 0 && typeOf.get(ids[k - 1] as string) === 'PAID' && typeOf.get(id) === 'FREE'));
  const freeEmptied = free ? s.batchEmptiedBy.get(free.id) : undefined;
  log(
    `  FREE drawn before PAID: ${wrongOrder.length === 0 ? 'yes' : 'NO'} (${n0(s.splitDrawdowns.length)} event(s) paid by two batches, ${n0(wrongOrder.length)} took PAID before FREE` +
      `${freeEmptied !== undefined ? `; the FREE batch was emptied by request ${at(freeEmptied)}, whose cost was split FREE -> PAID` : ''}).`,
  );
  log(`  ("request #n" is the position in the trace; up to ${s.concurrency} operations run concurrently and a reservation run charges in 3 steps, so the server may charge neighbouring requests in a different order.)`);
  if (wrongOrder.length > 0) failures.push(`${wrongOrder.length} event(s) drew PAID credit before FREE credit`);

  const dimension = (title: string, apiRows: Array<{ key: string; credits: string; events: number }>, client: Tally) => {
    log('');
    log(`Usage by ${title}:`);
    const sorted = [...apiRows].sort((a, b) => (parseCredits(b.credits) > parseCredits(a.credits) ? 1 : -1));
    let mismatches = 0;
    const lines = sorted.map((r) => {
      const c = client.get(r.key);
      const same = c !== undefined && c.micro === parseCredits(r.credits) && c.events === r.events;
      if (!same) mismatches++;
      return [r.key, n0(r.events), showCredits(parseCredits(r.credits)), `${pct(Number(parseCredits(r.credits) / 1000n), Number(apiSpent / 1000n))} %`, same ? 'yes' : `NO (client ${c ? `${n0(c.events)} / ${showCredits(c.micro)}` : 'none'})`];
    });
    table(log, [title, 'events', 'credits', 'share', 'client agrees'], lines, [false, true, true, true, false]);
    if (mismatches > 0) failures.push(`usage by ${title}: ${mismatches} row(s) differ from the client's own count`);
  };
  dimension('category', acct.byCategory.map((r) => ({ key: r.category ?? '(none)', credits: r.credits, events: r.events })), s.byCategory);
  dimension('model', acct.byModel.map((r) => ({ key: r.model ?? '(none)', credits: r.credits, events: r.events })), s.byModel);
  dimension('agent', acct.byAgent.map((r) => ({ key: r.agentId ?? '(none)', credits: r.credits, events: r.events })), s.byAgent);

  log('');
  log(`Refusals (INSUFFICIENT_CREDITS): ${n0(refusals)}  (LLM calls ${n0(s.refusedByKind.llm)}, tool calls ${n0(s.refusedByKind.tool_call)}, web searches ${n0(s.refusedByKind.web_search)}, reservations ${n0(s.refusedByKind.reservation)}); first refusal at request ${at(s.firstRefusal)}`);
  const budget = acct.budgets.find((b) => b.agentId === s.budgetAgent);
  const agentSpent = s.byAgent.get(s.budgetAgent)?.micro ?? 0n;
  if (!budget) failures.push(`the budget of ${s.budgetAgent} is missing from account.budgets`);
  else {
    const limit = parseCredits(budget.limit);
    const spent = parseCredits(budget.spent);
    log(
      `Agent budget of ${s.budgetAgent}: spent ${showCredits(spent)} of ${showCredits(limit)} credits (its requests would have cost ${showCredits(s.budgetAgentPlanned)}); ` +
        `refused with BUDGET_EXCEEDED: ${n0(overBudget)} (LLM calls ${n0(s.overBudgetByKind.llm)}, tool calls ${n0(s.overBudgetByKind.tool_call)}, web searches ${n0(s.overBudgetByKind.web_search)}, reservations ${n0(s.overBudgetByKind.reservation)}), the first at request ${at(s.firstOverBudget)}`,
    );
    log(`Client check: the agent's events received ${showCredits(agentSpent)} == its budget's spent ${showCredits(spent)}: ${agentSpent === spent ? 'yes' : 'NO'}; spent <= limit: ${spent <= limit ? 'yes' : 'NO'}`);
    if (agentSpent !== spent) failures.push(`budget of ${s.budgetAgent}: spent ${budget.spent}, the client counted ${formatCredits(agentSpent)}`);
    if (spent > limit) failures.push(`budget of ${s.budgetAgent}: spent ${budget.spent} beyond its limit ${budget.limit}`);
    if (s.budgetAgentPlanned > limit && overBudget === 0) failures.push(`budget of ${s.budgetAgent}: its requests would cost more than its limit, yet none was refused with BUDGET_EXCEEDED`);
  }
  log(`Idempotent retries: ${n0(s.retriesSent)} requests sent twice with the same key, ${n0(s.retriesSameEvent)} returned the same event id and cost (no double charge)${s.retriesRefusedTwice ? `; ${n0(s.retriesRefusedTwice)} more refused both times` : ''}.`);
  log(`Same key with different input: ${s.conflictShown}.`);
  log(`Reservations (streaming): ${n0(s.reservationsSettled)} reserved -> 2 partial captures -> settled with the last part; reservation.consumed equals the run's cost in ${n0(s.reservationsConsumedMatch)} of them.`);

  const r = acct.reconciliation;
  const invariantHolds = r.consistent && parseCredits(r.batchRemaining) - parseCredits(r.debt) === parseCredits(r.total) && parseCredits(r.total) === parseCredits(r.ledgerSum);
  log('');
  const alerts = [...acct.alerts.edges].reverse().map((e) => e.node);
  log(
    `Credit alerts (raised once per threshold per billing period; the 0 % alert is the depletion notice): ${
      alerts.length === 0 ? 'none' : alerts.map((a) => `${a.threshold} % (available ${showCredits(parseCredits(a.available))} at ${a.createdAt})`).join(', ')
    }`,
  );
  if (s.refusedByKind && Object.values(s.refusedByKind).some((n) => n > 0) && !alerts.some((a) => a.threshold === 0)) failures.push('credit ran out but no 0 % alert was raised');
  log(`Reconciliation: batch remaining ${showCredits(parseCredits(r.batchRemaining))} - debt ${showCredits(parseCredits(r.debt))} = total ${showCredits(parseCredits(r.total))}; ledger sum ${showCredits(parseCredits(r.ledgerSum))}`);
  log(`ledger invariant holds: ${invariantHolds ? 'yes' : 'no'}`);
  if (!invariantHolds) failures.push('ledger invariant does not hold');

  const drawnAll = acct.batches.filter((b) => b.status !== 'EXPIRED' && b.status !== 'VOIDED').reduce((sum, b) => sum + parseCredits(b.allocated) - parseCredits(b.remaining), 0n);
  const spentMatch = s.spentMicro === apiSpent;
  const eventsMatch = s.eventsCharged === apiEvents;
  const drawnMatch = drawnAll + parseCredits(r.debt) === apiSpent;
  log(`Client check: sum of event costs received ${showCredits(s.spentMicro)} == credits spent per API ${showCredits(apiSpent)}: ${spentMatch ? 'yes' : 'NO'}`);
  log(`Client check: events charged ${n0(s.eventsCharged)} == events per API ${n0(apiEvents)}: ${eventsMatch ? 'yes' : 'NO'}`);
  log(`API check: drawn from batches ${showCredits(drawnAll)} + debt ${showCredits(parseCredits(r.debt))} == spent ${showCredits(apiSpent)}: ${drawnMatch ? 'yes' : 'NO'}`);
  if (!spentMatch) failures.push('client sum of event costs differs from the API');
  if (!eventsMatch) failures.push('client event count differs from the API');
  if (!drawnMatch) failures.push('batches drawn + debt differs from credits spent');

  log('');
  log('Latest ledger entries:');
  table(
    log,
    ['type', 'amount', 'balance after', 'at'],
    acct.ledger.edges.map((e) => [e.node.type, showCredits(parseCredits(e.node.amount)), showCredits(parseCredits(e.node.balanceAfter)), e.node.createdAt]),
    [false, true, true, false],
  );

  if (s.liveLines.length > 0) {
    log('');
    for (const line of s.liveLines) log(line);
  }
  if (s.unexpected.size > 0) {
    log('');
    log('Unexpected errors (server side?):');
    for (const [code, u] of s.unexpected) log(`  ${code} x${n0(u.count)}; e.g. ${u.example}`);
    failures.push(`${[...s.unexpected.values()].reduce((a, u) => a + u.count, 0)} unexpected errors`);
  }
  if (failures.length > 0) {
    log('');
    log('FAILED checks:');
    for (const f of failures.slice(0, 20)) log(`  - ${f}`);
  }
  log('Trace data: Azure LLM inference trace 2023 (Microsoft, CC BY 4.0) / Mooncake FAST\'25 trace (Apache-2.0); see data/traces/README.md.');
  return { ok: failures.length === 0, refusals, overBudget, invariantHolds, failures };
}
