import { describe, it, expect, vi, afterEach } from 'vitest';
import fc from 'fast-check';
import { calcPrice, findProvider, waitForUpdate } from '@pydantic/genai-prices';
import { formatExactDecimal, type ExactDecimal } from '../../src/ledger/credits.js';
import { LedgerError } from '../../src/ledger/errors.js';
import {
  add,
  ceil,
  ceilToMicroCredits,
  compare,
  div,
  fromDecimal,
  mul,
  sub,
  exactDecimalFromNumber,
  parseRational,
  rational,
  roundHalfUpScaled,
  toDecimalString,
} from '../../src/pricing/rational.js';
import { CATALOG_PROVIDER_IDS, catalogLookupCacheSize, listCatalogModels, lookupModelPrice, lookupModelPriceUncached } from '../../src/pricing/catalog.js';
import {
  MAX_PRICE_RULES,
  findPriceRule,
  modelPrices,
  priceUsage,
  ruleSpecificity,
  validatePriceBook,
  type PriceBookDraft,
  type PriceBookInput,
  type PriceRuleInput,
} from '../../src/pricing/price-book.js';
import { DEFAULT_PRICE_BOOK_INPUT, defaultPriceBook } from '../../src/pricing/default-price-book.js';
import { EXAMPLE_PRICE_BOOKS } from '../../src/pricing/examples/index.js';

const CENT = { creditUsdValue: '0.01' };
const d = (x: ExactDecimal | null) => (x === null ? null : formatExactDecimal(x));

function badInput(fn: () => unknown, pattern?: RegExp): LedgerError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(LedgerError);
    expect((e as LedgerError).code).toBe('BAD_USER_INPUT');
    if (pattern) expect((e as LedgerError).message).toMatch(pattern);
    return e as LedgerError;
  }
  throw new Error('expected BAD_USER_INPUT');
}

function book(rules: PriceRuleInput[], extra: Partial<PriceBookInput> = {}): PriceBookDraft {
  return validatePriceBook({ name: 'test', rules, ...extra });
}

describe('rational', () => {
  it('normalizes, rounds half-up and ceils exactly', () => {
    expect(rational(6n, -4n)).toEqual({ num: -3n, den: 2n });
    expect(toDecimalString(rational(1n, 3n))).toBe('0.333333333333');
    expect(toDecimalString(rational(2n, 3n))).toBe('0.666666666667');
    expect(toDecimalString(rational(1n, 8n))).toBe('0.125');
    expect(toDecimalString(rational(1n, 2n ** 20n))).toBe('0.000000953674316406'); // 2^-20 has 20 places: shown to 18 (Decimal input limit)
    expect(toDecimalString(rational(1n, 2n ** 10n))).toBe('0.0009765625');
    expect(roundHalfUpScaled(rational(5n, 10n), 0)).toBe(1n);
    expect(roundHalfUpScaled(rational(49n, 100n), 0)).toBe(0n);
    expect(roundHalfUpScaled(rational(-5n, 10n), 0)).toBe(-1n);
    expect(ceil(rational(-3n, 2n))).toBe(-1n);
    expect(ceil(rational(3n, 2n))).toBe(2n);
    expect(ceilToMicroCredits(rational(1n, 3n))).toBe(333_334n);
    expect(ceilToMicroCredits(rational(1n, 1_000_000n))).toBe(1n);
  });

  it('reads a float from its shortest text, never its binary value', () => {
    expect(exactDecimalFromNumber(0.1)).toEqual({ units: 1n, scale: 1 });
    expect(exactDecimalFromNumber(1.5e-7)).toEqual({ units: 15n, scale: 8 });
    expect(exactDecimalFromNumber(1e21)).toEqual({ units: 10n ** 21n, scale: 0 });
    expect(exactDecimalFromNumber(2.5)).toEqual({ units: 25n, scale: 1 });
    expect(exactDecimalFromNumber(0)).toEqual({ units: 0n, scale: 0 });
    expect(() => exactDecimalFromNumber(Number.NaN)).toThrow(LedgerError);
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true, min: 0, max: 1e6 }), (x) => {
        expect(Number(formatExactDecimal(exactDecimalFromNumber(x)))).toBe(x);
      }),
    );
  });
});

describe('catalog (genai-prices, bundled data, offline)', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('lists exactly the bundled providers', async () => {
    const bundled = await waitForUpdate();
    expect([...CATALOG_PROVIDER_IDS].sort()).toEqual((bundled ?? []).map((p) => p.id).sort());
  });

  it('never touches the network', () => {
    const fetchSpy = vi.fn(() => {
      throw new Error('network used');
    });
    vi.stubGlobal('fetch', fetchSpy);
    expect(lookupModelPrice('gpt-4o')).not.toBeNull();
    priceUsage(defaultPriceBook(), { category: 'llm', model: 'gpt-4o', quantities: { inputTokens: 10 } }, CENT);
    expect(fetchSpy).not.toHaveBeenCalled();
  });

  it('gives the catalog numbers of gpt-4o-mini as exact decimals', () => {
    const p = lookupModelPrice('gpt-4o-mini');
    const raw = findProvider({ providerId: 'openai' })?.models.find((m) => m.id === 'gpt-4o-mini')?.prices;
    expect(raw && !Array.isArray(raw)).toBe(true);
    const prices = raw as Record<string, number>;
    expect(p?.providerId).toBe('openai');
    expect(p?.modelId).toBe('gpt-4o-mini');
    expect(d(p!.inputUsdPerMillion)).toBe(String(prices.input_mtok));
    expect(d(p!.outputUsdPerMillion)).toBe(String(prices.output_mtok));
    expect(d(p!.cacheReadUsdPerMillion)).toBe(String(prices.cache_read_mtok));
    // No cache-write price for OpenAI: cache writes cost the input price; reasoning = output.
    expect(prices.cache_write_mtok).toBeUndefined();
    expect(d(p!.cacheWriteUsdPerMillion)).toBe(String(prices.input_mtok));
    expect(d(p!.reasoningUsdPerMillion)).toBe(String(prices.output_mtok));
    expect(d(p!.inputUsdPerMillion)).toBe('0.15');
  });

  it('resolves spellings like the catalog does, and returns null for unknown models', () => {
    expect(lookupModelPrice('GPT-4o')?.modelId).toBe('gpt-4o');
    expect(lookupModelPrice('openai:gpt-4o')?.providerId).toBe('openai');
    expect(lookupModelPrice('gpt-4o', 'openai')?.modelId).toBe('gpt-4o');
    expect(lookupModelPrice('claude-sonnet-4')?.modelId).toBe('claude-sonnet-4-0');
    expect(lookupModelPrice('not-a-real-model-xyz')).toBeNull();
    expect(lookupModelPrice('gpt-4o', 'no-such-provider')).toBeNull();
    expect(lookupModelPrice('')).toBeNull();
    expect(lookupModelPrice('kimi-k2')?.providerId).toBe('moonshotai');
  });

  it('uses a separate reasoning price only where the catalog has one', () => {
    const p = lookupModelPrice('sonar-deep-research', 'perplexity');
    expect(d(p!.reasoningUsdPerMillion)).toBe('3');
    expect(d(p!.outputUsdPerMillion)).toBe('8');
    expect(d(lookupModelPrice('sonar', 'perplexity')!.requestUsd)).toBe('0.012');
  });

  it('picks the tier by prompt tokens (strictly above the start)', () => {
    const base = lookupModelPrice('claude-sonnet-4-5', null, { promptTokens: 200_000 });
    const high = lookupModelPrice('claude-sonnet-4-5', null, { promptTokens: 200_001 });
    expect(base?.tiered).toBe(true);
    expect([d(base!.inputUsdPerMillion), base!.tierStartTokens]).toEqual(['3', null]);
    expect([d(high!.inputUsdPerMillion), d(high!.outputUsdPerMillion), high!.tierStartTokens]).toEqual(['6', '22.5', 200_000]);
  });

  it('picks date- and time-of-day-dependent prices by the event time', () => {
    const peak = lookupModelPrice('deepseek-chat', null, { at: new Date('2026-11-21T12:00:00Z') });
    const offPeak = lookupModelPrice('deepseek-chat', null, { at: new Date('2026-11-21T20:00:00Z') });
    expect(d(peak!.inputUsdPerMillion)).toBe('0.27');
    expect(d(offPeak!.inputUsdPerMillion)).toBe('0.135');
    const before = lookupModelPrice('claude-sonnet-4-6', null, { promptTokens: 300_000, at: new Date('2026-01-01T00:00:00Z') });
    const after = lookupModelPrice('claude-sonnet-4-6', null, { promptTokens: 300_000, at: new Date('2026-06-01T00:00:00Z') });
    expect(d(before!.inputUsdPerMillion)).toBe('6');
    expect(d(after!.inputUsdPerMillion)).toBe('3');
  });

  it('lists models that resolve back to themselves', () => {
    const all = listCatalogModels();
    expect(all.length).toBeGreaterThan(500);
    for (const id of ['gpt-4o-mini', 'gpt-4o', 'claude-sonnet-4-5', 'kimi-k2']) {
      expect(all.some((m) => m.modelId === id)).toBe(true);
    }
    for (const m of all.filter((_, i) => i % 25 === 0)) {
      expect(lookupModelPrice(m.modelId, m.providerId)?.modelId).toBe(m.modelId);
    }
    expect(listCatalogModels('moonshotai').every((m) => m.providerId === 'moonshotai')).toBe(true);
  });

  it('prices tokens like genai-prices does (float cross-check) for real models', () => {
    const models = ['gpt-4o-mini', 'gpt-4o', 'claude-sonnet-4-5', 'kimi-k2-0905-preview', 'gemini-2.5-pro'];
    const b = book([{ category: 'llm', kind: 'PER_TOKEN' }]);
    fc.assert(
      fc.property(
        fc.constantFrom(...models),
        fc.nat(400_000),
        fc.nat(50_000),
        fc.nat(50_000),
        fc.nat(50_000),
        (model, inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens) => {
          const when = new Date('2026-11-21T12:00:00Z');
          // creditUsdValue 1: credits == USD.
          const priced = priceUsage(
            b,
            { category: 'llm', model, occurredAt: when, quantities: { inputTokens, outputTokens, cacheReadTokens, cacheWriteTokens } },
            { creditUsdValue: '1' },
          );
          const ref = calcPrice(
            { input_tokens: inputTokens + cacheReadTokens + cacheWriteTokens, output_tokens: outputTokens, cache_read_tokens: cacheReadTokens, cache_write_tokens: cacheWriteTokens },
            model,
            { timestamp: when },
          );
          expect(ref).not.toBeNull();
          expect(Number(priced.exactCost)).toBeCloseTo(ref!.total_price, 9);
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('lookupModelPrice remembers only what cannot change', () => {
  /** Catalog models whose prices depend on the date or the time of day (genai-prices: a list of conditional price sets). */
  const timeDependent = CATALOG_PROVIDER_IDS.flatMap((pid) =>
    (findProvider({ providerId: pid })?.models ?? []).filter((m) => Array.isArray(m.prices)).map((m) => ({ providerId: pid, modelId: m.id })),
  );

  it('the catalog has date- and time-of-day-dependent models to check against', () => {
    expect(timeDependent.length).toBeGreaterThan(5);
    expect(timeDependent).toContainEqual({ providerId: 'deepseek', modelId: 'deepseek-chat' });
  });

  it('equals asking genai-prices every time: any catalog model or unknown id, any spelling, instant and prompt size, in any order (property)', () => {
    const models = [...listCatalogModels(), ...timeDependent];
    const spelling = fc.oneof(
      fc.constantFrom(...models).map((m) => ({ model: m.modelId, provider: m.providerId as string | null })),
      fc.constantFrom(...models).map((m) => ({ model: m.modelId.toUpperCase(), provider: null })),
      fc.constantFrom(...models).map((m) => ({ model: `${m.providerId}:${m.modelId}`, provider: null })),
      fc.constantFrom('not-a-real-model-xyz', '', '  ', 'gpt-4o', 'claude-sonnet-4').map((model) => ({ model, provider: null })),
      // A given provider, even "", is not the same lookup as none ("openai:" then selects nothing).
      fc.constantFrom(...models).map((m) => ({ model: `${m.providerId}:${m.modelId}`, provider: '' })),
      fc.constantFrom(...models).map((m) => ({ model: m.modelId, provider: '' })),
    );
    // 2024-2028 at any millisecond: both sides of every start_date and of every time-of-day window.
    const instant = fc.integer({ min: Date.UTC(2024, 0, 1), max: Date.UTC(2028, 0, 1) }).map((ms) => new Date(ms));
    const prompt = fc.oneof(fc.constantFrom(0, 128_000, 128_001, 200_000, 200_001), fc.integer({ min: 0, max: 2_000_000 }));
    fc.assert(
      fc.property(fc.array(fc.record({ spelling, at: instant, promptTokens: prompt }), { minLength: 1, maxLength: 20 }), (calls) => {
        for (const { spelling: sp, at, promptTokens } of calls) {
          const expected = lookupModelPriceUncached(sp.model, sp.provider, { at, promptTokens });
          expect(lookupModelPrice(sp.model, sp.provider, { at, promptTokens })).toEqual(expected);
        }
      }),
      { numRuns: 300 },
    );
  });

  it('a price that changes on a date or by the time of day is looked up at each instant, whichever was asked first', () => {
    const before = new Date('2026-03-12T12:00:00Z');
    const after = new Date('2026-03-14T12:00:00Z');
    const later = lookupModelPrice('claude-opus-4-6', 'anthropic', { at: after });
    const earlier = lookupModelPrice('claude-opus-4-6', 'anthropic', { at: before });
    expect(earlier).toEqual(lookupModelPriceUncached('claude-opus-4-6', 'anthropic', { at: before }));
    expect(later).toEqual(lookupModelPriceUncached('claude-opus-4-6', 'anthropic', { at: after }));
    const offPeak = lookupModelPrice('deepseek-chat', 'deepseek', { at: new Date('2026-03-14T17:00:00Z') });
    const peak = lookupModelPrice('deepseek-chat', 'deepseek', { at: new Date('2026-03-14T12:00:00Z') });
    expect(d(offPeak!.inputUsdPerMillion)).not.toBe(d(peak!.inputUsdPerMillion)); // the discount window really differs
    expect(peak).toEqual(lookupModelPriceUncached('deepseek-chat', 'deepseek', { at: new Date('2026-03-14T12:00:00Z') }));
  });

  it('keeps "no provider" and a given provider apart, even an empty one', () => {
    for (const [model, provider] of [['openai:gpt-4o-mini', ''], ['openai:gpt-4o-mini', null], ['anthropic:claude-sonnet-4', null], ['anthropic:claude-sonnet-4', '']] as const) {
      expect(lookupModelPrice(model, provider)).toEqual(lookupModelPriceUncached(model, provider));
    }
    expect(lookupModelPrice('openai:gpt-4o-mini')?.modelId).toBe('gpt-4o-mini');
  });

  it('remembers a bounded number of spellings, and shares frozen answers', () => {
    for (let i = 0; i < 3000; i++) expect(lookupModelPrice(`no-such-model-${i}`)).toBeNull();
    expect(catalogLookupCacheSize()).toBeLessThanOrEqual(1024);
    const p = lookupModelPrice('gpt-4o-mini');
    expect(Object.isFrozen(p)).toBe(true);
    expect(Object.isFrozen(p!.inputUsdPerMillion)).toBe(true);
    expect(lookupModelPrice('gpt-4o-mini')).toBe(p);
  });
});

describe('validatePriceBook', () => {
  const ok: PriceRuleInput = { category: 'llm', kind: 'FLAT', credits: '1' };

  it('normalizes a valid book', () => {
    const b = validatePriceBook({
      name: 'Main',
      byokFeePercent: 5.5,
      rules: [
        { category: 'llm', model: 'gpt-4o', kind: 'PER_TOKEN', markupPercent: '20.000', fallbackCredits: 2 },
        { category: 'image', tier: null, kind: 'PER_UNIT', unit: 'units', credits: '0.25' },
      ],
    });
    expect(b.byokFeePercent).toBe('5.5');
    expect(b.rules[0]).toEqual({
      category: 'llm', model: 'gpt-4o', tier: null, sku: null, kind: 'PER_TOKEN',
      creditsMicro: null, unit: null, markupPercent: '20', fallbackCreditsMicro: 2_000_000n,
    });
    expect(b.rules[1]?.creditsMicro).toBe(250_000n);
    expect(validatePriceBook({ name: 'x', rules: [ok] }).byokFeePercent).toBe('0');
  });

  it.each<[string, unknown, RegExp]>([
    ['not an object', null, /input/],
    ['empty name', { name: '', rules: [ok] }, /^name: must not be empty/],
    ['blank name', { name: '   ', rules: [ok] }, /^name/],
    ['no rules', { name: 'x', rules: [] }, /^rules: must contain at least one/],
    ['rules not a list', { name: 'x', rules: 'nope' }, /^rules/],
    ['too many rules', { name: 'x', rules: Array.from({ length: MAX_PRICE_RULES + 1 }, (_, i) => ({ ...ok, sku: `s${i}` })) }, /at most 1000/],
    ['empty category', { name: 'x', rules: [{ ...ok, category: '' }] }, /^rules\[0\]\.category: must not be empty/],
    ['padded category', { name: 'x', rules: [{ ...ok, category: ' llm' }] }, /whitespace/],
    ['empty model selector', { name: 'x', rules: [{ ...ok, model: '' }] }, /rules\[0\]\.model/],
    ['unknown kind', { name: 'x', rules: [{ ...ok, kind: 'CHEAP' }] }, /rules\[0\]\.kind/],
    ['duplicate selectors', { name: 'x', rules: [ok, { category: 'llm', kind: 'FREE' }] }, /rules\[1\]: duplicates the selectors of rules\[0\]/],
    ['FLAT without credits', { name: 'x', rules: [{ category: 'a', kind: 'FLAT' }] }, /credits: is required for a FLAT rule/],
    ['PER_UNIT without credits', { name: 'x', rules: [{ category: 'a', kind: 'PER_UNIT', unit: 'units' }] }, /credits: is required/],
    ['PER_UNIT without unit', { name: 'x', rules: [{ category: 'a', kind: 'PER_UNIT', credits: '1' }] }, /unit/],
    ['PER_UNIT with a bad unit', { name: 'x', rules: [{ category: 'a', kind: 'PER_UNIT', credits: '1', unit: 'days' }] }, /units, seconds, minutes, hours, tokens/],
    ['PER_TOKEN unknown model without fallback', { name: 'x', rules: [{ category: 'llm', model: 'my-private-model', kind: 'PER_TOKEN' }] }, /"my-private-model" has no token prices/],
    ['negative credits', { name: 'x', rules: [{ category: 'a', kind: 'FLAT', credits: '-1' }] }, /must not be negative/],
    ['negative markup', { name: 'x', rules: [{ category: 'a', kind: 'PER_TOKEN', markupPercent: '-5' }] }, /markupPercent: must not be negative/],
    ['negative byok fee', { name: 'x', byokFeePercent: '-1', rules: [ok] }, /^byokFeePercent: must not be negative/],
    ['huge markup', { name: 'x', rules: [{ category: 'a', kind: 'PASS_THROUGH', markupPercent: '10000.5' }] }, /at most 10000/],
    ['negative fallback', { name: 'x', rules: [{ category: 'a', kind: 'PASS_THROUGH', fallbackCredits: '-0.5' }] }, /fallbackCredits: must not be negative/],
    ['credits with 7 decimals', { name: 'x', rules: [{ category: 'a', kind: 'FLAT', credits: '0.0000001' }] }, /at most 6 fractional digits/],
    ['credits in exponent form', { name: 'x', rules: [{ category: 'a', kind: 'FLAT', credits: '1e3' }] }, /not a plain decimal/],
    ['credits on a FREE rule', { name: 'x', rules: [{ category: 'a', kind: 'FREE', credits: '1' }] }, /only used by FLAT and PER_UNIT/],
    ['markup on a FLAT rule', { name: 'x', rules: [{ category: 'a', kind: 'FLAT', credits: '1', markupPercent: '10' }] }, /only used by PER_TOKEN and PASS_THROUGH/],
    ['unit on a FLAT rule', { name: 'x', rules: [{ category: 'a', kind: 'FLAT', credits: '1', unit: 'units' }] }, /only used by PER_UNIT/],
  ])('rejects %s', (_label, input, pattern) => {
    badInput(() => validatePriceBook(input), pattern);
  });

  it('accepts an unknown PER_TOKEN model when it has fallbackCredits', () => {
    const b = book([{ category: 'llm', model: 'my-private-model', kind: 'PER_TOKEN', fallbackCredits: '3' }]);
    expect(b.rules[0]?.fallbackCreditsMicro).toBe(3_000_000n);
  });
});

describe('rule matching', () => {
  const rules: PriceRuleInput[] = [
    { category: 'llm', kind: 'FLAT', credits: '1' },
    { category: 'llm', sku: 's', kind: 'FLAT', credits: '2' },
    { category: 'llm', tier: 't', kind: 'FLAT', credits: '3' },
    { category: 'llm', tier: 't', sku: 's', kind: 'FLAT', credits: '4' },
    { category: 'llm', model: 'm', kind: 'FLAT', credits: '5' },
    { category: 'llm', model: 'm', sku: 's', kind: 'FLAT', credits: '6' },
    { category: 'llm', model: 'm', tier: 't', kind: 'FLAT', credits: '7' },
    { category: 'llm', model: 'm', tier: 't', sku: 's', kind: 'FLAT', credits: '8' },
    { category: 'other', kind: 'FLAT', credits: '9' },
  ];
  const b = book(rules);
  const cost = (e: { model?: string; tier?: string; sku?: string; category?: string }) =>
    priceUsage(b, { category: 'llm', ...e }, CENT).costMicroCredits / 1_000_000n;

  it.each([
    [{}, 1n],
    [{ sku: 's' }, 2n],
    [{ tier: 't' }, 3n],
    [{ tier: 't', sku: 's' }, 4n],
    [{ model: 'm' }, 5n],
    [{ model: 'm', sku: 's' }, 6n],
    [{ model: 'm', tier: 't' }, 7n],
    [{ model: 'm', tier: 't', sku: 's' }, 8n],
    [{ model: 'x', tier: 'y', sku: 'z' }, 1n],
    [{ category: 'other', model: 'm', tier: 't' }, 9n],
  ])('event %j is priced by the rule costing %s', (event, credits) => {
    expect(cost(event)).toBe(credits);
  });

  it('a model rule beats a tier+sku rule; a tier rule beats a sku rule', () => {
    const b2 = book([
      { category: 'c', tier: 't', sku: 's', kind: 'FLAT', credits: '1' },
      { category: 'c', model: 'm', kind: 'FLAT', credits: '2' },
      { category: 'c', sku: 's', kind: 'FLAT', credits: '3' },
      { category: 'c', tier: 't', kind: 'FLAT', credits: '4' },
    ]);
    expect(findPriceRule(b2, { category: 'c', model: 'm', tier: 't', sku: 's' })?.creditsMicro).toBe(2_000_000n);
    expect(findPriceRule(b2, { category: 'c', model: 'q', tier: 't', sku: 'q' })?.creditsMicro).toBe(4_000_000n);
    expect(ruleSpecificity({ model: 'm', tier: null, sku: null })).toBeGreaterThan(ruleSpecificity({ model: null, tier: 't', sku: 's' }));
  });

  it('the winner is the lexicographically greatest (model?, tier?, sku?) matching rule (property)', () => {
    const sel = (v: string) => fc.option(fc.constantFrom(v, 'other'), { nil: undefined });
    const key = (r: { model: string | null; tier: string | null; sku: string | null }) =>
      [r.model !== null, r.tier !== null, r.sku !== null].map((x) => (x ? '1' : '0')).join('');
    fc.assert(
      fc.property(fc.subarray(rules.slice(0, 8), { minLength: 1 }), sel('m'), sel('t'), sel('s'), (subset, model, tier, sku) => {
        const bk = book(subset);
        const event = { category: 'llm', model: model ?? null, tier: tier ?? null, sku: sku ?? null };
        const matching = bk.rules.filter(
          (r) => (r.model === null || r.model === event.model) && (r.tier === null || r.tier === event.tier) && (r.sku === null || r.sku === event.sku),
        );
        const expected = [...matching].sort((a, b) => (key(a) < key(b) ? 1 : -1))[0] ?? null;
        expect(findPriceRule(bk, event)).toBe(expected);
      }),
      { numRuns: 300 },
    );
  });

  it('no matching rule is BAD_USER_INPUT naming the category', () => {
    badInput(() => priceUsage(b, { category: 'video', model: 'm' }, CENT), /no price rule for category "video" with model "m"/);
  });
});

describe('priceUsage by kind', () => {
  it('FREE costs 0 with one request line', () => {
    const r = priceUsage(book([{ category: 'web_search', kind: 'FREE' }]), { category: 'web_search' }, CENT);
    expect(r.costMicroCredits).toBe(0n);
    expect(r.lines).toEqual([{ item: 'request', quantity: '1', unitPrice: '0', amountMicroCredits: 0n, exactAmount: '0' }]);
  });

  it('FLAT charges credits per event', () => {
    const r = priceUsage(book([{ category: 'block', sku: 'scrape', kind: 'FLAT', credits: '2.5' }]), { category: 'block', sku: 'scrape' }, CENT);
    expect(r.costMicroCredits).toBe(2_500_000n);
    expect(r.lines[0]).toMatchObject({ item: 'request', quantity: '1', unitPrice: '2.5', amountMicroCredits: 2_500_000n });
  });

  it('PER_UNIT units multiplies by quantities.units', () => {
    const b = book([{ category: 'image', kind: 'PER_UNIT', unit: 'units', credits: '4' }]);
    const r = priceUsage(b, { category: 'image', quantities: { units: '2.5' } }, CENT);
    expect(r.costMicroCredits).toBe(10_000_000n);
    expect(r.lines[0]).toMatchObject({ item: 'units', quantity: '2.5', unitPrice: '4' });
    badInput(() => priceUsage(b, { category: 'image' }, CENT), /quantities\.units: is required/);
    badInput(() => priceUsage(b, { category: 'image', quantities: { units: '-1' } }, CENT), /quantities\.units: must not be negative/);
  });

  it('PER_UNIT minutes/hours/seconds is pro rata: 90 s at 1 credit per minute = 1.5', () => {
    const b = book([
      { category: 'runtime', kind: 'PER_UNIT', unit: 'minutes', credits: '1' },
      { category: 'runtime', tier: 'gpu', kind: 'PER_UNIT', unit: 'hours', credits: '36' },
      { category: 'runtime', tier: 'sec', kind: 'PER_UNIT', unit: 'seconds', credits: '0.5' },
    ]);
    const r = priceUsage(b, { category: 'runtime', quantities: { seconds: '90' } }, CENT);
    expect(r.costMicroCredits).toBe(1_500_000n);
    expect(r.lines[0]).toMatchObject({ item: 'seconds', quantity: '90', unitPrice: '0.016666666667', exactAmount: '1.5' });
    expect(priceUsage(b, { category: 'runtime', tier: 'gpu', quantities: { seconds: 100 } }, CENT).costMicroCredits).toBe(1_000_000n);
    expect(priceUsage(b, { category: 'runtime', tier: 'sec', quantities: { seconds: '3' } }, CENT).costMicroCredits).toBe(1_500_000n);
    badInput(() => priceUsage(b, { category: 'runtime', quantities: { units: '1' } }, CENT), /quantities\.seconds: is required/);
  });

  it('PER_UNIT tokens counts input + output + reasoning (not cache tokens)', () => {
    const b = book([{ category: 'embed', kind: 'PER_UNIT', unit: 'tokens', credits: '0.001' }]);
    const r = priceUsage(b, { category: 'embed', quantities: { inputTokens: 1000, outputTokens: 500, reasoningTokens: 500, cacheReadTokens: 9999 } }, CENT);
    expect(r.costMicroCredits).toBe(2_000_000n);
    expect(r.lines.map((l) => l.item)).toEqual(['input_tokens', 'output_tokens', 'reasoning_tokens']);
    badInput(() => priceUsage(b, { category: 'embed', quantities: { cacheReadTokens: 5 } }, CENT), /inputTokens, outputTokens or reasoningTokens is required/);
  });

  it('PER_TOKEN prices each token kind at the catalog price, then adds the markup', () => {
    const b = book([{ category: 'llm', kind: 'PER_TOKEN', markupPercent: '20' }]);
    // gpt-4o: 2.5 in, 10 out, 1.25 cache read, cache write = input, reasoning = output (USD / 1M).
    const r = priceUsage(
      b,
      { category: 'llm', model: 'gpt-4o', quantities: { inputTokens: 1000, outputTokens: 200, reasoningTokens: 100, cacheReadTokens: 4000, cacheWriteTokens: 0 } },
      CENT,
    );
    // USD: 0.0025 + 0.002 + 0.001 + 0.005 = 0.0105 -> 1.05 credits, + 20% = 1.26.
    expect(r.lines.map((l) => [l.item, l.quantity, l.unitPrice, l.exactAmount])).toEqual([
      ['input_tokens', '1000', '0.00025', '0.25'],
      ['output_tokens', '200', '0.001', '0.2'],
      ['reasoning_tokens', '100', '0.001', '0.1'],
      ['cache_read_tokens', '4000', '0.000125', '0.5'],
      ['markup', '1.05', '0.2', '0.21'],
    ]);
    expect(r.costMicroCredits).toBe(1_260_000n);
    expect(r.catalog).toEqual({ providerId: 'openai', modelId: 'gpt-4o' });
  });

  it('PER_TOKEN uses the upper tier when the prompt is large', () => {
    const b = book([{ category: 'llm', kind: 'PER_TOKEN' }]);
    const small = priceUsage(b, { category: 'llm', model: 'claude-sonnet-4-5', quantities: { inputTokens: 200_000 } }, CENT);
    const large = priceUsage(b, { category: 'llm', model: 'claude-sonnet-4-5', quantities: { inputTokens: 150_000, cacheReadTokens: 50_001 } }, CENT);
    expect(small.costMicroCredits).toBe(60_000_000n); // 200k x $3/M = $0.60
    // 150k x $6/M + 50,001 x $0.60/M = $0.9 + $0.0300006 -> 93.00006 credits.
    expect(large.costMicroCredits).toBe(93_000_060n);
  });

  it('PER_TOKEN with an unknown model: fallbackCredits as a request line (no markup), else BAD_USER_INPUT', () => {
    const withFallback = book([{ category: 'llm', kind: 'PER_TOKEN', markupPercent: '50', fallbackCredits: '3' }]);
    const r = priceUsage(withFallback, { category: 'llm', model: 'secret-model', quantities: { inputTokens: 10 } }, CENT);
    expect(r.costMicroCredits).toBe(3_000_000n);
    expect(r.lines).toEqual([{ item: 'request', quantity: '1', unitPrice: '3', amountMicroCredits: 3_000_000n, exactAmount: '3' }]);
    const without = book([{ category: 'llm', kind: 'PER_TOKEN' }]);
    badInput(() => priceUsage(without, { category: 'llm', model: 'secret-model', quantities: { inputTokens: 10 } }, CENT), /"secret-model" has no price/);
    badInput(() => priceUsage(without, { category: 'llm', quantities: { inputTokens: 10 } }, CENT), /no model/);
  });

  it('PER_TOKEN needs token counts: an event with none at all is BAD_USER_INPUT (as a PER_UNIT tokens rule refuses it), explicit zeros cost 0', () => {
    const b = book([{ category: 'llm', kind: 'PER_TOKEN', markupPercent: '20', fallbackCredits: '2' }], { byokFeePercent: '5' });
    const none = /^quantities: .*PER_TOKEN rule for category "llm".*inputTokens, outputTokens, reasoningTokens, cacheReadTokens or cacheWriteTokens/;
    // A known model would otherwise cost 0 (a client bug would get free LLM calls).
    badInput(() => priceUsage(b, { category: 'llm', model: 'gpt-4o' }, CENT), none);
    badInput(() => priceUsage(b, { category: 'llm', model: 'gpt-4o', quantities: { seconds: '3', units: '2' } }, CENT), none);
    badInput(() => priceUsage(b, { category: 'llm', model: 'gpt-4o', quantities: { inputTokens: null } }, CENT), none);
    // Checked before pricing: the same whether the catalog knows the model or the fallback would apply.
    badInput(() => priceUsage(b, { category: 'llm', model: 'secret-model' }, CENT), none);
    // BYOK: the fee's base is providerCostUsd, else the catalog price of the tokens.
    badInput(() => priceUsage(b, { category: 'llm', model: 'gpt-4o', byok: true }, CENT), /or, with byok, providerCostUsd$/);
    expect(priceUsage(b, { category: 'llm', model: 'gpt-4o', byok: true, providerCostUsd: '1' }, CENT).costMicroCredits).toBe(5_000_000n);
    // Explicit zeros are a count: cost 0 (plus any per-request part; here none).
    const zero = priceUsage(b, { category: 'llm', model: 'gpt-4o', quantities: { inputTokens: 0 } }, CENT);
    expect(zero.costMicroCredits).toBe(0n);
    expect(zero.lines.map((l) => [l.item, l.quantity, l.exactAmount])).toEqual([['input_tokens', '0', '0'], ['markup', '0', '0']]);
    expect(priceUsage(b, { category: 'llm', model: 'gpt-4o', quantities: { outputTokens: 0, cacheReadTokens: 0 } }, CENT).costMicroCredits).toBe(0n);
    // Another kind for the same category is unaffected.
    expect(priceUsage(book([{ category: 'llm', kind: 'FLAT', credits: '1' }]), { category: 'llm', model: 'gpt-4o' }, CENT).costMicroCredits).toBe(1_000_000n);
  });

  it('PASS_THROUGH converts providerCostUsd and adds markup; falls back without it', () => {
    const b = book([{ category: 'llm', kind: 'PASS_THROUGH', markupPercent: '8', fallbackCredits: '3' }]);
    const r = priceUsage(b, { category: 'llm', providerCostUsd: '0.0123' }, CENT);
    expect(r.lines.map((l) => [l.item, l.quantity, l.unitPrice, l.exactAmount])).toEqual([
      ['provider_cost', '0.0123', '100', '1.23'],
      ['markup', '1.23', '0.08', '0.0984'],
    ]);
    expect(r.costMicroCredits).toBe(1_328_400n);
    expect(priceUsage(b, { category: 'llm' }, CENT).costMicroCredits).toBe(3_000_000n);
    const strict = book([{ category: 'llm', kind: 'PASS_THROUGH' }]);
    badInput(() => priceUsage(strict, { category: 'llm' }, CENT), /^providerCostUsd: is required/);
    badInput(() => priceUsage(strict, { category: 'llm', providerCostUsd: '-1' }, CENT), /must not be negative/);
  });

  it('rejects malformed quantities and settings', () => {
    const b = book([{ category: 'llm', kind: 'PER_TOKEN' }]);
    badInput(() => priceUsage(b, { category: 'llm', model: 'gpt-4o', quantities: { inputTokens: -1 } }, CENT), /quantities\.inputTokens/);
    badInput(() => priceUsage(b, { category: 'llm', model: 'gpt-4o', quantities: { inputTokens: 1.5 } }, CENT), /quantities\.inputTokens/);
    badInput(() => priceUsage(b, { category: 'llm', model: 'gpt-4o', quantities: { outputTokens: 2 ** 53 } }, CENT), /quantities\.outputTokens/);
    badInput(() => priceUsage(b, { category: 'llm', model: 'gpt-4o' }, { creditUsdValue: '0' }), /creditUsdValue/);
    badInput(() => priceUsage(b, { category: 'llm', model: 'gpt-4o' }, { creditUsdValue: 'NaN' }), /creditUsdValue/);
  });
});

describe('BYOK', () => {
  const b = book(
    [
      { category: 'llm', kind: 'PER_TOKEN', markupPercent: '20' },
      { category: 'gw', kind: 'PASS_THROUGH', markupPercent: '20' },
      { category: 'img', kind: 'FLAT', credits: '2' },
    ],
    { byokFeePercent: '5' },
  );

  it('PER_TOKEN: only the fee on the catalog token cost', () => {
    const r = priceUsage(b, { category: 'llm', model: 'gpt-4o', byok: true, quantities: { inputTokens: 1000, outputTokens: 200 } }, CENT);
    // Provider cost $0.0045 = 0.45 credits; fee 5% = 0.0225.
    expect(r.lines).toEqual([{ item: 'byok_fee', quantity: '0.45', unitPrice: '0.05', amountMicroCredits: 22_500n, exactAmount: '0.0225' }]);
    expect(r.costMicroCredits).toBe(22_500n);
  });

  it('prefers providerCostUsd as the fee base when given', () => {
    const r = priceUsage(b, { category: 'llm', model: 'gpt-4o', byok: true, providerCostUsd: '1', quantities: { inputTokens: 1000 } }, CENT);
    expect(r.costMicroCredits).toBe(5_000_000n);
    const g = priceUsage(b, { category: 'gw', byok: true, providerCostUsd: '0.2' }, CENT);
    expect(g.lines.map((l) => l.item)).toEqual(['byok_fee']);
    expect(g.costMicroCredits).toBe(1_000_000n);
  });

  it('needs a cost basis unless the fee is 0', () => {
    badInput(() => priceUsage(b, { category: 'gw', byok: true }, CENT), /bring-your-own-key/);
    badInput(() => priceUsage(b, { category: 'gw', byok: true }, CENT), /send providerCostUsd/);
    const free = book([{ category: 'gw', kind: 'PASS_THROUGH' }]);
    expect(priceUsage(free, { category: 'gw', byok: true }, CENT).costMicroCredits).toBe(0n);
  });

  it('an unknown model without providerCostUsd is refused with what the caller can do (send providerCostUsd), fallbackCredits or not', () => {
    const withFallback = book([{ category: 'llm', kind: 'PER_TOKEN', markupPercent: '20', fallbackCredits: '2' }], { byokFeePercent: '5' });
    for (const bk of [b, withFallback]) {
      const e = badInput(() => priceUsage(bk, { category: 'llm', model: 'secret-model', byok: true, quantities: { inputTokens: 10 } }, CENT));
      expect(e.message).toMatch(/^providerCostUsd: a bring-your-own-key event pays a 5% fee on the provider's cost; model "secret-model" has no price in the LLM price catalog/);
      expect(e.message).toMatch(/send providerCostUsd/);
      expect(e.message).not.toMatch(/give the rule fallbackCredits/); // it would not help: a BYOK event pays no model price
      expect(e.details).toEqual({ field: 'providerCostUsd' });
      // With providerCostUsd it is priced: 5% of $0.10 = 0.5 credits.
      expect(priceUsage(bk, { category: 'llm', model: 'secret-model', byok: true, providerCostUsd: '0.1', quantities: { inputTokens: 10 } }, CENT).costMicroCredits).toBe(500_000n);
    }
    badInput(() => priceUsage(b, { category: 'llm', byok: true, quantities: { inputTokens: 10 } }, CENT), /the event names no model; send providerCostUsd/);
  });

  it('PASS_THROUGH: a fee taken of the catalog token cost needs token counts, as PER_TOKEN does (else the call would pay no fee)', () => {
    // gpt-4o is in the catalog, so the fee base is its token cost; with no count at all that base would be 0.
    badInput(() => priceUsage(b, { category: 'gw', model: 'gpt-4o', byok: true }, CENT), /^quantities: .*PASS_THROUGH rule for category "gw".*inputTokens, outputTokens.*or, with byok, providerCostUsd$/);
    badInput(() => priceUsage(b, { category: 'gw', model: 'gpt-4o', byok: true, quantities: { seconds: '3' } }, CENT), /^quantities: /);
    // Counts (explicit zeros too) or providerCostUsd give the fee its base.
    expect(priceUsage(b, { category: 'gw', model: 'gpt-4o', byok: true, quantities: { inputTokens: 1000, outputTokens: 200 } }, CENT).costMicroCredits).toBe(22_500n);
    expect(priceUsage(b, { category: 'gw', model: 'gpt-4o', byok: true, quantities: { inputTokens: 0 } }, CENT).costMicroCredits).toBe(0n);
    expect(priceUsage(b, { category: 'gw', model: 'gpt-4o', byok: true, providerCostUsd: '0.2' }, CENT).costMicroCredits).toBe(1_000_000n);
    // With a 0 % fee there is nothing to take: still 0, as without a model.
    expect(priceUsage(book([{ category: 'gw', kind: 'PASS_THROUGH' }]), { category: 'gw', model: 'gpt-4o', byok: true }, CENT).costMicroCredits).toBe(0n);
  });

  it('changes nothing for other kinds', () => {
    expect(priceUsage(b, { category: 'img', byok: true }, CENT).costMicroCredits).toBe(2_000_000n);
  });
});

describe('rounding and exactness', () => {
  it('rounds the total UP while each line rounds half-up', () => {
    const b = book([{ category: 'rt', kind: 'PER_UNIT', unit: 'minutes', credits: '0.000001' }]);
    const r = priceUsage(b, { category: 'rt', quantities: { seconds: '1' } }, CENT);
    // exact = 1/60 micro-credit: the line shows 0, the event costs 1 micro-credit.
    expect(r.exactCost).toBe('0.000000016667');
    expect(r.lines[0]?.amountMicroCredits).toBe(0n);
    expect(r.costMicroCredits).toBe(1n);
  });

  it('sums lines exactly before rounding (exact sum with more than 6 decimals)', () => {
    const b = book([{ category: 'llm', kind: 'PER_TOKEN' }]);
    // gpt-4o-mini: 3 input tokens x 0.000015 + 1 cache-read token x 0.0000075 = 0.0000525 credits.
    const r = priceUsage(b, { category: 'llm', model: 'gpt-4o-mini', quantities: { inputTokens: 3, cacheReadTokens: 1 } }, CENT);
    expect(r.lines.map((l) => [l.exactAmount, l.amountMicroCredits])).toEqual([
      ['0.000045', 45n],
      ['0.0000075', 8n],
    ]);
    expect(r.exactCost).toBe('0.0000525');
    expect(r.costMicroCredits).toBe(53n);
  });

  it('stays exact with a non-terminating 1/creditUsdValue ("0.03")', () => {
    const b = book([{ category: 'gw', kind: 'PASS_THROUGH' }, { category: 'llm', kind: 'PER_TOKEN' }]);
    const third = priceUsage(b, { category: 'gw', providerCostUsd: '0.01' }, { creditUsdValue: '0.03' });
    expect(third.lines[0]).toMatchObject({ unitPrice: '33.333333333333', exactAmount: '0.333333333333', amountMicroCredits: 333_333n });
    expect(third.costMicroCredits).toBe(333_334n);
    // $0.03 is exactly 1 credit, not 0.999999.
    expect(priceUsage(b, { category: 'gw', providerCostUsd: '0.03' }, { creditUsdValue: '0.03' }).costMicroCredits).toBe(1_000_000n);
    // gpt-4o: 1 output token = $0.00001 = 1/3000 credit; 3000 of them are exactly 10/... = 1 credit.
    const llm = priceUsage(b, { category: 'llm', model: 'gpt-4o', quantities: { outputTokens: 3000 } }, { creditUsdValue: '0.03' });
    expect(llm.exactCost).toBe('1');
    expect(llm.costMicroCredits).toBe(1_000_000n);
  });

  it('shows a long terminating expansion rounded to 18 places, so it parses as Decimal input again', () => {
    // 0.016384 USD per credit = 2^14 / 10^6: cache writes of gpt-4o-mini then cost a binary fraction with 19 places.
    const b = book([{ category: 'llm', kind: 'PER_TOKEN', markupPercent: '12.5' }]);
    const r = priceUsage(b, { category: 'llm', model: 'gpt-4o-mini', quantities: { cacheWriteTokens: 69831 } }, { creditUsdValue: '0.016384' });
    expect(r.exactCost).toBe('0.719237136840820313');
    expect(r.costMicroCredits).toBe(719238n);
    expect(parseRational(r.exactCost, 'x')).toBeDefined();
  });

  it('PER_TOKEN cost equals an independent exact computation, rounded up (property)', () => {
    const b = book([{ category: 'llm', kind: 'PER_TOKEN', markupPercent: '12.5' }]);
    // gpt-4o-mini in tenths of a micro-dollar per token: in 1.5, out 6, cache read 0.75, cache write = in.
    fc.assert(
      fc.property(
        fc.nat(2_000_000), fc.nat(2_000_000), fc.nat(2_000_000), fc.nat(2_000_000), fc.nat(100_000),
        fc.integer({ min: 1, max: 100_000 }),
        (inp, out, rea, cr, cw, cuvMicroUsd) => {
          const creditUsdValue = toDecimalString(rational(BigInt(cuvMicroUsd), 1_000_000n));
          const r = priceUsage(b, { category: 'llm', model: 'gpt-4o-mini', quantities: { inputTokens: inp, outputTokens: out, reasoningTokens: rea, cacheReadTokens: cr, cacheWriteTokens: cw } }, { creditUsdValue });
          // usd x 10^8 per token: 15, 60, 60, 7.5 -> work in 10^9: 150, 600, 600, 75, 150.
          const usdE9 = 150n * BigInt(inp) + 600n * BigInt(out) + 600n * BigInt(rea) + 75n * BigInt(cr) + 150n * BigInt(cw);
          // credits = usd / (cuvMicroUsd / 1e6) * 1.125; micro-credits = credits * 1e6.
          const num = usdE9 * 1_000_000n * 1_000_000n * 1125n;
          const den = 1_000_000_000n * BigInt(cuvMicroUsd) * 1000n;
          const expected = (num + den - 1n) / den;
          expect(r.costMicroCredits).toBe(expected);
          const shown = r.lines.reduce((s, l) => s + l.amountMicroCredits, 0n);
          const diff = shown > r.costMicroCredits ? shown - r.costMicroCredits : r.costMicroCredits - shown;
          expect(diff <= BigInt(r.lines.length)).toBe(true);
          expect(parseRational(r.exactCost, 'x')).toBeDefined();
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('modelPrices', () => {
  it('lists per-million prices incl. markup for PER_TOKEN and per-request for FLAT', () => {
    const b = book([
      { category: 'llm', kind: 'PER_TOKEN', markupPercent: '20' },
      { category: 'llm', model: 'gpt-4o', kind: 'PER_TOKEN', markupPercent: '20' },
      { category: 'llm', model: 'kimi-k2', tier: 'pro', kind: 'PER_TOKEN' },
      { category: 'chat', model: 'claude-opus-4-1', kind: 'FLAT', credits: '10' },
      { category: 'llm', model: 'private', kind: 'PER_TOKEN', fallbackCredits: '2' },
      { category: 'img', model: 'dall-e', kind: 'PER_UNIT', unit: 'units', credits: '1' },
    ]);
    expect(modelPrices(b, CENT)).toEqual([
      { model: 'gpt-4o', tier: null, inputPerMillionMicroCredits: 300_000_000n, outputPerMillionMicroCredits: 1_200_000_000n, perRequestMicroCredits: null },
      { model: 'kimi-k2', tier: 'pro', inputPerMillionMicroCredits: 57_000_000n, outputPerMillionMicroCredits: 230_000_000n, perRequestMicroCredits: null },
      { model: 'claude-opus-4-1', tier: null, inputPerMillionMicroCredits: null, outputPerMillionMicroCredits: null, perRequestMicroCredits: 10_000_000n },
      { model: 'private', tier: null, inputPerMillionMicroCredits: null, outputPerMillionMicroCredits: null, perRequestMicroCredits: 2_000_000n },
    ]);
  });

  it('rounds per-million prices half-up to 6 decimals', () => {
    const b = book([{ category: 'llm', model: 'gpt-4o-mini', kind: 'PER_TOKEN' }]);
    // $0.15 / 0.07 = 2.142857142857... credits -> 2.142857.
    expect(modelPrices(b, { creditUsdValue: '0.07' })[0]?.inputPerMillionMicroCredits).toBe(2_142_857n);
    // $0.6 / 0.07 = 8.571428571... -> 8.571429.
    expect(modelPrices(b, { creditUsdValue: '0.07' })[0]?.outputPerMillionMicroCredits).toBe(8_571_429n);
  });
});

describe('example and default price books', () => {
  it.each(EXAMPLE_PRICE_BOOKS.map((e) => [e.id, e] as const))('%s validates and prices its sample event', (_id, e) => {
    const b = validatePriceBook(e.book);
    const r = priceUsage(b, e.sample, CENT);
    expect(r.lines.length).toBeGreaterThan(0);
    expect(r.costMicroCredits >= 0n).toBe(true);
    expect(b.rules).toContain(r.rule);
  });

  it('example samples cost what their books say', () => {
    const cost = (id: string) => {
      const e = EXAMPLE_PRICE_BOOKS.find((x) => x.id === id)!;
      return priceUsage(validatePriceBook(e.book), e.sample, CENT).costMicroCredits;
    };
    expect(cost('premium-requests')).toBe(10_000_000n);
    expect(cost('runtime-voice')).toBe(30_000_000n);
    expect(cost('image-tiers')).toBe(32_000_000n);
    expect(cost('free-search')).toBe(0n);
    expect(cost('workflow-blocks')).toBe(3_000_000n);
    expect(cost('pass-through')).toBe(1_328_400n);
    // claude-sonnet-4-5: 2000 x $3 + 10000 x $0.3 + 800 x $15 per M = $0.021 -> 2.1 credits + 20%.
    expect(cost('token-markup')).toBe(2_520_000n);
  });

  it('the default book covers the seeded categories and names catalog models', () => {
    const b = defaultPriceBook();
    expect(new Set(b.rules.map((r) => r.category))).toEqual(new Set(['llm', 'web_search', 'tool_call', 'image', 'voice', 'runtime']));
    const llmModels = DEFAULT_PRICE_BOOK_INPUT.rules.filter((r) => r.category === 'llm' && r.model).map((r) => r.model!);
    expect(llmModels.length).toBeGreaterThanOrEqual(4);
    for (const m of llmModels) expect(lookupModelPrice(m)?.inputUsdPerMillion).not.toBeNull();
    expect(modelPrices(b, CENT).map((p) => p.model)).toEqual(llmModels);
    for (const category of ['web_search', 'tool_call', 'image', 'voice', 'runtime']) {
      expect(() => priceUsage(b, { category, quantities: { seconds: '60', units: '1' } }, CENT)).not.toThrow();
    }
  });
});

describe('pricing invariants (properties over the whole catalog)', () => {
  /** Every catalog model with input and output token prices, pinned to its provider. */
  const tokenModels = listCatalogModels()
    .filter((m) => {
      const p = lookupModelPrice(m.modelId, m.providerId);
      return p !== null && p.inputUsdPerMillion !== null && p.outputUsdPerMillion !== null;
    })
    .map((m) => ({ ...m, id: `${m.providerId}:${m.modelId}` }));
  /** Instants on both sides of catalog price changes and of off-peak hours. */
  const instants = ['2024-01-01T00:00:00Z', '2025-06-01T03:00:00Z', '2025-06-01T18:00:00Z', '2026-02-01T12:00:00Z', '2026-11-21T12:00:00Z'].map((s) => new Date(s));
  const TOKEN_KINDS = ['inputTokens', 'outputTokens', 'reasoningTokens', 'cacheReadTokens', 'cacheWriteTokens'] as const;
  const count = fc.nat(1_000_000_000);
  const counts = fc.tuple(count, count, count, count, count).map((c) => Object.fromEntries(TOKEN_KINDS.map((k, i) => [k, c[i]!])) as Record<(typeof TOKEN_KINDS)[number], number>);
  /** A percent with up to 6 decimals in [0, max]. */
  const percent = (max: number) => fc.bigInt({ min: 0n, max: BigInt(max) * 1_000_000n }).map((n) => formatExactDecimal({ units: n, scale: 6 }));
  /** A creditUsdValue in (0, 1000000] with up to 10 decimals. */
  const creditUsdValue = fc.bigInt({ min: 1n, max: 10n ** 16n }).map((n) => formatExactDecimal({ units: n, scale: 10 }));
  const cost = (b: PriceBookDraft, u: Parameters<typeof priceUsage>[1], s = CENT): bigint | null => {
    try {
      return priceUsage(b, u, s).costMicroCredits;
    } catch (e) {
      if (e instanceof LedgerError && e.code === 'BAD_USER_INPUT') return null;
      throw e;
    }
  };

  it('hand-computed against the providers\' published prices: long context, cache read/write, reasoning, off-peak', () => {
    const b = book([{ category: 'llm', kind: 'PER_TOKEN', markupPercent: '20' }, { category: 'raw', kind: 'PER_TOKEN' }]);
    const at = new Date('2025-06-01T12:00:00Z');
    const c = (category: string, model: string, quantities: Record<string, number>, s = CENT, when = at) => priceUsage(b, { category, model, occurredAt: when, quantities }, s).costMicroCredits;
    // claude-sonnet-4-5, prompt 250,000 > 200,000 (input + cache read + cache write): $6 in, $0.60 cache read,
    // $7.50 cache write (5 min), $22.50 out: 0.9 + 0.048 + 0.15 + 0.045 = $1.143 = 114.3 credits, + 20 % = 137.16.
    expect(c('llm', 'claude-sonnet-4-5', { inputTokens: 150_000, cacheReadTokens: 80_000, cacheWriteTokens: 20_000, outputTokens: 2_000 })).toBe(137_160_000n);
    // Prompt exactly 200,000: base prices $3 / $0.30 / $3.75 / $15: 0.3 + 0.024 + 0.075 + 0.03 = $0.429, + 20 % = 51.48.
    expect(c('llm', 'claude-sonnet-4-5', { inputTokens: 100_000, cacheReadTokens: 80_000, cacheWriteTokens: 20_000, outputTokens: 2_000 })).toBe(51_480_000n);
    // o1: $15 in, $7.50 cached, $60 out, reasoning at the output price: 0.015 + 0.03 + 0.03 + 0.12 = $0.195.
    expect(c('raw', 'o1', { inputTokens: 1_000, cacheReadTokens: 4_000, outputTokens: 500, reasoningTokens: 2_000 })).toBe(19_500_000n);
    // gemini-2.5-pro over 200,000 prompt tokens: $2.50 in, $15 out: $0.5150025; at $0.03 a credit 17.16675 credits.
    expect(c('raw', 'gemini-2.5-pro', { inputTokens: 200_001, outputTokens: 1_000 }, { creditUsdValue: '0.03' })).toBe(17_166_750n);
    // deepseek-chat: $0.27 / $1.10 per million, half price off-peak (16:30-00:30 UTC).
    expect(c('raw', 'deepseek-chat', { inputTokens: 1_000_000, outputTokens: 1_000_000 })).toBe(137_000_000n);
    expect(c('raw', 'deepseek-chat', { inputTokens: 1_000_000, outputTokens: 1_000_000 }, CENT, new Date('2025-06-01T17:00:00Z'))).toBe(68_500_000n);
  });

  it('has token models with tiers, dates and times of day to check', () => {
    expect(tokenModels.length).toBeGreaterThan(1000);
    expect(tokenModels.some((m) => lookupModelPrice(m.modelId, m.providerId)?.tiered)).toBe(true);
  });

  it('costs what genai-prices computes for any catalog model, with reasoning and cache tokens counted once (float cross-check)', () => {
    // genai-prices counts input_tokens WITH the cached parts and output_tokens WITH reasoning;
    // the API's counts are disjoint (docs/pricing.md), so they are summed for the reference.
    const b = book([{ category: 'llm', kind: 'PER_TOKEN' }]);
    fc.assert(
      fc.property(fc.constantFrom(...tokenModels), fc.constantFrom(...instants), fc.tuple(fc.nat(1_500_000), fc.nat(300_000), fc.nat(300_000), fc.nat(300_000), fc.nat(300_000)), (m, at, [inp, out, rea, cr, cw]) => {
        const priced = priceUsage(b, { category: 'llm', model: m.id, occurredAt: at, quantities: { inputTokens: inp, outputTokens: out, reasoningTokens: rea, cacheReadTokens: cr, cacheWriteTokens: cw } }, { creditUsdValue: '1' });
        const ref = calcPrice(
          { input_tokens: inp + cr + cw, cache_read_tokens: cr, cache_write_tokens: cw, output_tokens: out + rea, output_reasoning_tokens: rea },
          m.modelId,
          { providerId: m.providerId, timestamp: at },
        );
        expect(ref).not.toBeNull();
        expect(Math.abs(Number(priced.exactCost) - ref!.total_price)).toBeLessThanOrEqual(Math.max(1e-12, ref!.total_price * 1e-12));
      }),
      { numRuns: 1000 },
    );
  });

  it('more tokens of any kind never cost less (same model, instant, rule)', () => {
    const b = book([{ category: 'llm', kind: 'PER_TOKEN', markupPercent: '20' }]);
    fc.assert(
      fc.property(fc.constantFrom(...tokenModels), fc.constantFrom(...instants), counts, fc.constantFrom(...TOKEN_KINDS), fc.nat(1_000_000), (m, at, q, kind, more) => {
        const bigger = { ...q, [kind]: Math.min(q[kind] + more, 1_000_000_000) };
        const a = cost(b, { category: 'llm', model: m.id, occurredAt: at, quantities: q });
        const z = cost(b, { category: 'llm', model: m.id, occurredAt: at, quantities: bigger });
        if (a !== null && z !== null) expect(z >= a).toBe(true);
      }),
      { numRuns: 1000 },
    );
  });

  it('more seconds or units never cost less; FREE costs 0 whatever is reported', () => {
    const units = ['units', 'seconds', 'minutes', 'hours', 'tokens'] as const;
    const dec = fc.bigInt({ min: 0n, max: 10n ** 15n }).map((n) => formatExactDecimal({ units: n, scale: 9 }));
    fc.assert(
      fc.property(fc.constantFrom(...units), fc.bigInt({ min: 0n, max: 10n ** 12n }).map((n) => formatExactDecimal({ units: n, scale: 6 })), dec, dec, counts, (unit, credits, x, extra, q) => {
        const b = book([{ category: 'c', kind: 'PER_UNIT', unit, credits }, { category: 'free', kind: 'FREE' }]);
        const plus = toDecimalString(add(parseRational(x, 'x'), parseRational(extra, 'x')));
        const a = cost(b, { category: 'c', quantities: { seconds: x, units: x, ...q } });
        const z = cost(b, { category: 'c', quantities: { seconds: plus, units: plus, ...q, inputTokens: q.inputTokens + 1 } });
        // null: out of range, the only refusal here; a larger quantity is out of range too.
        if (a === null) expect(z).toBeNull();
        else if (z !== null) expect(z >= a).toBe(true);
        expect(priceUsage(b, { category: 'free', byok: true, providerCostUsd: x, quantities: { seconds: x, units: x, ...q } }, CENT).costMicroCredits).toBe(0n);
      }),
      { numRuns: 500 },
    );
  });

  it('BYOK never costs more than the same call without it, when the fee is at most 100 %', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...tokenModels), fc.constantFrom('PER_TOKEN', 'PASS_THROUGH' as const), percent(10_000), percent(100), creditUsdValue, counts,
        fc.option(fc.bigInt({ min: 0n, max: 10n ** 15n }).map((n) => formatExactDecimal({ units: n, scale: 9 })), { nil: undefined }),
        (m, kind, markupPercent, byokFeePercent, cuv, q, providerCostUsd) => {
          const b = book([{ category: 'llm', kind, markupPercent }], { byokFeePercent });
          const u = { category: 'llm', model: m.id, occurredAt: instants[4], quantities: q, ...(kind === 'PASS_THROUGH' ? { providerCostUsd } : {}) };
          const without = cost(b, u, { creditUsdValue: cuv });
          const withKey = cost(b, { ...u, byok: true }, { creditUsdValue: cuv });
          if (without !== null && withKey !== null) expect(withKey <= without).toBe(true);
        },
      ),
      { numRuns: 1000 },
    );
  });

  it('costs the exact catalog price x (1 + markup) / creditUsdValue rounded up, for huge counts, markups and credit values too (or is refused as out of range, never truncated)', () => {
    fc.assert(
      fc.property(fc.constantFrom(...tokenModels), percent(10_000), creditUsdValue, counts, (m, markupPercent, cuv, q) => {
        const b = book([{ category: 'llm', kind: 'PER_TOKEN', markupPercent }]);
        // Independent exact computation from the catalog's prices in force for this prompt size.
        const p = lookupModelPrice(m.modelId, m.providerId, { promptTokens: q.inputTokens + q.cacheReadTokens + q.cacheWriteTokens, at: instants[4] })!;
        const perToken = { inputTokens: p.inputUsdPerMillion, outputTokens: p.outputUsdPerMillion, reasoningTokens: p.reasoningUsdPerMillion, cacheReadTokens: p.cacheReadUsdPerMillion, cacheWriteTokens: p.cacheWriteUsdPerMillion };
        if (TOKEN_KINDS.some((k) => q[k] > 0 && perToken[k] === null)) return; // not priceable from the catalog
        let usd = p.requestUsd ? fromDecimal(p.requestUsd) : rational(0n);
        for (const k of TOKEN_KINDS) if (q[k] > 0) usd = add(usd, mul(rational(BigInt(q[k]), 1_000_000n), fromDecimal(perToken[k]!)));
        const credits = mul(div(usd, parseRational(cuv, 'cuv')), add(rational(1n), div(parseRational(markupPercent, 'm'), rational(100n))));
        const expected = ceilToMicroCredits(credits);
        let r;
        try {
          r = priceUsage(b, { category: 'llm', model: m.id, occurredAt: instants[4], quantities: q }, { creditUsdValue: cuv });
        } catch (e) {
          expect((e as LedgerError).message).toBe('quantities: the cost of this event is out of range');
          expect(expected > 2n ** 63n - 1n).toBe(true);
          return;
        }
        expect(r.costMicroCredits).toBe(expected);
        // Each shown line amount is its exact amount rounded half-up: within half a micro-credit
        // (exact amounts shown to 12 places when they do not terminate, hence the slack).
        for (const l of r.lines) {
          const diff = sub(rational(l.amountMicroCredits, 1_000_000n), parseRational(l.exactAmount, 'x'));
          expect(compare(diff, rational(1n, 1_000_000n)) < 0 && compare(diff, rational(-1n, 1_000_000n)) > 0).toBe(true);
        }
      }),
      { numRuns: 1000 },
    );
  });
});
