/**
 * LLM price catalog: an adapter over @pydantic/genai-prices (pinned 0.1.8), giving EXACT
 * decimal USD prices per million tokens for a model.
 *
 * Offline by design: the package bundles its price data in its JS module and only replaces
 * it when `updatePrices()` is called with a fetcher. creditpool never calls `updatePrices`,
 * `waitForUpdate` or anything that fetches, so prices come from the bundled data of the
 * pinned version and change only when the dependency is upgraded (a reviewed commit).
 *
 * Model resolution is the package's own (`calcPrice`): the model id is lower-cased and
 * trimmed; the provider is the one given, else the first provider whose model pattern
 * matches (e.g. "gpt-" -> openai, "claude" -> anthropic); within it the first model whose
 * match rule accepts the id (so "gpt-4o-2024-08-06" resolves to gpt-4o). A "provider:model"
 * id ("openai:gpt-4o") selects the provider when the prefix is a known provider id.
 *
 * Catalog semantics carried over (genai-prices "prices/units.yml"):
 * - Prices may depend on the date (a provider's price change, `start_date`) and on the time
 *   of day (off-peak discounts, `time_of_date`): the price in force at `at` is used.
 * - Tiered prices depend on the prompt size: a tier applies when the prompt's total input
 *   tokens (uncached + cache read + cache write) are strictly greater than its `start`.
 * - A model without a cache-read or cache-write price charges those tokens at its input
 *   price, and reasoning tokens at its output price unless the catalog has a separate
 *   reasoning price (only a few models do) — the effective prices below already apply this.
 * - Only the per-token prices above and a per-request fee (`requests_kcount`) are used;
 *   audio, image, web-search, storage and 1-hour cache-write prices are ignored.
 *
 * Numbers are read from their shortest round-trip text (0.15 -> "0.15") into exact
 * decimals; no arithmetic is ever done on the catalog's floats.
 */
import { calcPrice, findProvider, type ModelPrice as GenaiModelPrice } from '@pydantic/genai-prices';
import type { ExactDecimal } from '../ledger/credits.js';
import { BoundedMap } from '../util/bounded-map.js';
import { exactDecimalFromNumber } from './rational.js';

/**
 * Provider ids of the bundled catalog of @pydantic/genai-prices 0.1.8 (the package exports
 * no synchronous list; a unit test checks this list against the bundled data).
 */
export const CATALOG_PROVIDER_IDS: readonly string[] = [
  'anthropic', 'arcee', 'avian', 'aws', 'azure', 'baseten', 'cerebras', 'cloudflare', 'cohere',
  'cursor', 'deepseek', 'doubleword', 'fireworks', 'github-copilot', 'google', 'groq',
  'huggingface_cerebras', 'huggingface_fireworks-ai', 'huggingface_groq', 'huggingface_hyperbolic',
  'huggingface_nebius', 'huggingface_novita', 'huggingface_nscale', 'huggingface_ovhcloud',
  'huggingface_publicai', 'huggingface_sambanova', 'huggingface_together', 'minimax', 'mistral',
  'modal', 'moonshotai', 'novita', 'openai', 'openrouter', 'ovhcloud', 'perplexity',
  'quicksilverpro', 'together', 'typesafe', 'voyageai', 'x-ai', 'zai', 'zhipuai',
];

/**
 * A model's catalog prices in force for one request, in exact decimal USD.
 * Every `...UsdPerMillion` is USD per 1,000,000 tokens; null means the catalog has no price
 * for that token kind (tokens of that kind cannot be priced from the catalog).
 */
export interface CatalogModelPrice {
  /** Catalog provider id actually used ("openai", "anthropic", "moonshotai", ...). */
  providerId: string;
  /** Catalog model id the request's model resolved to ("claude-sonnet-4" -> "claude-sonnet-4-0"). */
  modelId: string;
  /** Uncached input tokens. */
  inputUsdPerMillion: ExactDecimal | null;
  /** Output tokens (excluding reasoning). */
  outputUsdPerMillion: ExactDecimal | null;
  /** Reasoning tokens: the catalog's reasoning price, else the output price. */
  reasoningUsdPerMillion: ExactDecimal | null;
  /** Cache-read input tokens: the catalog's cache-read price, else the input price. */
  cacheReadUsdPerMillion: ExactDecimal | null;
  /** Cache-write input tokens: the catalog's (5-minute) cache-write price, else the input price. */
  cacheWriteUsdPerMillion: ExactDecimal | null;
  /** Fixed fee per request in USD (catalog `requests_kcount` / 1000), null when none. */
  requestUsd: ExactDecimal | null;
  /** True when at least one price depends on the prompt size. */
  tiered: boolean;
  /** `start` of the price tier applied (prompt tokens > start), null for the base prices. */
  tierStartTokens: number | null;
}

/** What selects the price in force, beyond the model. */
export interface CatalogPriceContext {
  /**
   * Total prompt tokens of the request (uncached input + cache read + cache write); selects
   * the tier of tiered prices. Default 0 (base prices).
   */
  promptTokens?: number;
  /** When the request ran; selects date- and time-of-day-dependent prices. Default: now. */
  at?: Date;
}

/** A model id known to the catalog (see listCatalogModels). */
export interface CatalogModelId {
  providerId: string;
  modelId: string;
}

type CatalogPriceValue = GenaiModelPrice[string];

/** Picks the price of one key for the prompt size, like genai-prices' tiered pricing. */
function pickPrice(
  value: CatalogPriceValue,
  promptTokens: number,
): { price: number; tiered: boolean; tierStart: number | null } | null {
  if (value === undefined) return null;
  if (typeof value === 'number') return { price: value, tiered: false, tierStart: null };
  let price = value.base;
  let tierStart: number | null = null;
  for (const tier of [...value.tiers].sort((a, b) => a.start - b.start)) {
    if (promptTokens > tier.start) {
      price = tier.price;
      tierStart = tier.start;
    }
  }
  return { price, tiered: true, tierStart };
}

/** Splits "openai:gpt-4o" into provider and model when the prefix is a catalog provider id. */
function splitProviderPrefix(model: string): { provider: string; model: string } | null {
  const i = model.indexOf(':');
  if (i <= 0) return null;
  const prefix = model.slice(0, i).trim().toLowerCase();
  return CATALOG_PROVIDER_IDS.includes(prefix) ? { provider: prefix, model: model.slice(i + 1) } : null;
}

/** Most (provider, model) spellings lookupModelPrice remembers (model ids come from callers: bounded). */
const RESOLVED_CACHE_SIZE = 1024;

/**
 * What lookupModelPrice remembers per (provider, model) spelling: whether the catalog knows it,
 * and, when its prices depend neither on the date nor on the time of day, its prices (only when
 * they do not depend on the prompt size either; tiered ones are recomputed from `modelPrice`).
 */
type Resolved =
  | { known: false }
  | { known: true; timeIndependent: false }
  | { known: true; timeIndependent: true; modelPrice: GenaiModelPrice; providerId: string; modelId: string; untiered: CatalogModelPrice | null };

const resolvedModels = new BoundedMap<string, Resolved>(RESOLVED_CACHE_SIZE);

/**
 * Looks up the catalog prices of `model` in force for one request: {@link lookupModelPriceUncached},
 * remembered per (provider, model) spelling where that cannot change the answer.
 *
 * Why it may: the catalog is the pinned package's bundled data and is never updated at run time
 * (module docstring), so which provider and model a spelling resolves to never changes; and a
 * model whose `prices` is one price set rather than a list of conditional ones (genai-prices
 * `ModelInfo.prices: ConditionalPrice[] | ModelPrice`; its price selection returns a plain set as
 * it is, whatever the timestamp) has the same prices at every instant. Models with date or
 * time-of-day prices are looked up afresh each time; tiered prices are picked for each prompt
 * size from the remembered price set. At most RESOLVED_CACHE_SIZE spellings are remembered (the
 * oldest is forgotten first), so arbitrary model ids cannot grow memory without bound. The
 * returned object and its decimals are frozen: callers share them.
 *
 * Measured: genai-prices' model resolution was 1.5-2.3 % of the server's CPU samples on single
 * charges and 5.6 % of its busy time during batches of 1,000 (bench/HISTORY.md, "Earlier results (medians of eb8fb93)").
 * @param model, provider, context as {@link lookupModelPriceUncached}
 * @returns the same prices as lookupModelPriceUncached (a property test checks it over the catalog).
 * @throws only for a bad context (assertion), as lookupModelPriceUncached.
 */
export function lookupModelPrice(
  model: string,
  provider?: string | null,
  context: CatalogPriceContext = {},
): CatalogModelPrice | null {
  const { promptTokens, at } = checkedContext(context);
  // A given provider (even "") and none are different lookups: none lets a "provider:" prefix choose.
  const key = provider === null || provider === undefined ? `\u0000${model}` : `${provider}\u0001${model}`;
  let resolved = resolvedModels.get(key);
  if (resolved === undefined) {
    const found = findInCatalog(model, provider, at);
    resolved = !found
      ? { known: false }
      : Array.isArray(found.model.prices)
        ? { known: true, timeIndependent: false }
        : { known: true, timeIndependent: true, modelPrice: found.model_price, providerId: found.provider.id, modelId: found.model.id, untiered: null };
    resolvedModels.set(key, resolved);
  }
  if (!resolved.known) return null;
  if (!resolved.timeIndependent) return lookupModelPriceUncached(model, provider, { promptTokens, at });
  if (resolved.untiered) return resolved.untiered;
  const price = deepFreeze(pricesFrom(resolved.modelPrice, resolved.providerId, resolved.modelId, promptTokens));
  if (!price.tiered) resolved.untiered = price;
  return price;
}

/** `price` and its decimals frozen (lookupModelPrice's answers are shared by every caller). */
function deepFreeze(price: CatalogModelPrice): CatalogModelPrice {
  for (const v of Object.values(price)) if (v !== null && typeof v === 'object') Object.freeze(v);
  return Object.freeze(price);
}

/**
 * The context's prompt size (default 0) and instant (default now).
 * @throws Error (assertion) when promptTokens is not a non-negative safe integer or the instant is invalid.
 */
function checkedContext(context: CatalogPriceContext): { promptTokens: number; at: Date } {
  const promptTokens = context.promptTokens ?? 0;
  if (!Number.isSafeInteger(promptTokens) || promptTokens < 0) {
    throw new Error('assertion failed: promptTokens must be a non-negative safe integer');
  }
  const at = context.at ?? new Date();
  if (Number.isNaN(at.getTime())) throw new Error('assertion failed: invalid price timestamp');
  return { promptTokens, at };
}

/** How many (provider, model) spellings lookupModelPrice remembers now (at most RESOLVED_CACHE_SIZE, 1,024). */
export function catalogLookupCacheSize(): number {
  return resolvedModels.size;
}

/**
 * genai-prices' resolution of `model` (a "provider:model" prefix selects the provider when none is
 * given) with the price set in force at `at`, or null when the catalog does not know it (or the
 * id is blank). Usage {} makes calcPrice compute nothing; only its model resolution and the
 * price set (model_price) are used, never its float totals.
 */
function findInCatalog(model: string, provider: string | null | undefined, at: Date): ReturnType<typeof calcPrice> {
  let modelId = model;
  let providerId = provider ?? undefined;
  if (providerId === undefined) {
    const split = splitProviderPrefix(model);
    if (split) {
      modelId = split.model;
      providerId = split.provider;
    }
  }
  if (modelId.trim() === '') return null;
  return calcPrice({}, modelId, providerId === undefined ? { timestamp: at } : { providerId, timestamp: at });
}

/**
 * Looks up the catalog prices of `model` in force for one request, asking genai-prices every time
 * (lookupModelPrice remembers what cannot change).
 *
 * Reasoning tokens are priced at the catalog's reasoning price when it has one, otherwise
 * as output tokens; cache tokens without their own price at the input price (catalog
 * semantics, see the module docstring).
 *
 * @param model the model id as the platform reports it ("gpt-4o-mini", "claude-sonnet-4-5",
 *   "openai:gpt-4o"); matched case-insensitively by the catalog's rules.
 * @param provider optional catalog provider id ("openai"); when given only that provider is searched.
 * @param context prompt size (tier) and time (date/time-of-day prices); see CatalogPriceContext.
 * @returns the prices, or null when the catalog does not know the model (or the provider).
 *   Never throws for an unknown model; throws only for a bad context (assertion).
 */
export function lookupModelPriceUncached(
  model: string,
  provider?: string | null,
  context: CatalogPriceContext = {},
): CatalogModelPrice | null {
  const { promptTokens, at } = checkedContext(context);
  const found = findInCatalog(model, provider, at);
  if (!found) return null;
  return pricesFrom(found.model_price, found.provider.id, found.model.id, promptTokens);
}

/**
 * The effective exact prices of one catalog price set for a prompt of `promptTokens` tokens
 * (reasoning at the output price and cache tokens at the input price when the set has no price
 * of their own; module docstring).
 */
function pricesFrom(prices: GenaiModelPrice, providerId: string, modelId: string, promptTokens: number): CatalogModelPrice {
  let tiered = false;
  let tierStartTokens: number | null = null;
  const exact = (key: string, extraScale = 0): ExactDecimal | null => {
    const picked = pickPrice(prices[key], promptTokens);
    if (!picked) return null;
    if (picked.tiered) {
      tiered = true;
      if (picked.tierStart !== null && (tierStartTokens === null || picked.tierStart > tierStartTokens)) {
        tierStartTokens = picked.tierStart;
      }
    }
    const d = exactDecimalFromNumber(picked.price, `catalog ${providerId}/${modelId} ${key}`);
    // Dividing by 10^extraScale is exact: a per-thousand price becomes a per-one price.
    return { units: d.units, scale: d.scale + extraScale };
  };
  const input = exact('input_mtok');
  const output = exact('output_mtok');
  return {
    providerId,
    modelId,
    inputUsdPerMillion: input,
    outputUsdPerMillion: output,
    reasoningUsdPerMillion: exact('output_reasoning_mtok') ?? output,
    cacheReadUsdPerMillion: exact('cache_read_mtok') ?? input,
    cacheWriteUsdPerMillion: exact('cache_write_mtok') ?? input,
    requestUsd: exact('requests_kcount', 3),
    tiered,
    tierStartTokens,
  };
}

let cachedModelIds: readonly CatalogModelId[] | null = null;

/**
 * Every catalog model whose own id resolves back to itself through lookupModelPrice
 * (some catalog entries are only reachable through other spellings and are left out),
 * sorted by provider then model id. Computed once, then cached.
 * @param providerId optional: only this provider's models.
 */
export function listCatalogModels(providerId?: string): readonly CatalogModelId[] {
  if (!cachedModelIds) {
    const list: CatalogModelId[] = [];
    for (const pid of CATALOG_PROVIDER_IDS) {
      const p = findProvider({ providerId: pid });
      if (!p || p.id !== pid) continue;
      for (const m of p.models) {
        const hit = calcPrice({}, m.id, { providerId: pid });
        if (hit && hit.provider.id === pid && hit.model.id === m.id) list.push({ providerId: pid, modelId: m.id });
      }
    }
    list.sort((a, b) =>
      a.providerId !== b.providerId ? (a.providerId < b.providerId ? -1 : 1) : a.modelId < b.modelId ? -1 : a.modelId > b.modelId ? 1 : 0,
    );
    cachedModelIds = Object.freeze(list);
  }
  return providerId === undefined ? cachedModelIds : cachedModelIds.filter((m) => m.providerId === providerId);
}
