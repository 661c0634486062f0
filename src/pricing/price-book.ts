/**
 * Price books: which rule prices a usage event, and what the event costs in credits.
 *
 * A price book (contract: PriceBook / PriceBookInput) is a name, a BYOK fee percent and a
 * list of rules. Each rule has a category and optional selectors (model, tier, sku) and a
 * kind (contract enum PriceKind): FREE, FLAT, PER_UNIT, PER_TOKEN or PASS_THROUGH.
 *
 * Matching (contract PriceBookInput.rules): a rule matches an event when its category equals
 * the event's and each of its non-null selectors equals the event's value (exact,
 * case-sensitive string equality). Among matching rules the most specific wins, ranked
 * lexicographically on (has model, has tier, has sku): any rule with a model beats every
 * rule without one; among equals a tier beats no tier; then a sku beats no sku; the
 * category-wide rule comes last. Equivalently, specificity = 4·model + 2·tier + 1·sku and the
 * highest wins. Two matching rules can never tie: equal rank and both matching means equal
 * selectors, which validatePriceBook rejects as a duplicate.
 *
 * ROUNDING RULE: every cost line is computed exactly (bigint rationals, see rational.ts);
 * the event's cost is the exact sum of its lines rounded UP to the micro-credit, so a
 * fraction of a micro-credit is never undercharged. Each line's display amount
 * (amountMicroCredits) is rounded half-up to the micro-credit on its own, so the display
 * amounts may differ from the cost by at most the rounding (under 1 micro-credit per line).
 * Decimal strings shown for non-terminating values (e.g. with creditUsdValue "0.03") are
 * rounded half-up to 12 decimals; the cost itself never is.
 *
 * Pure: no I/O except the bundled LLM price catalog (catalog.ts).
 */
import { singleLine } from '../ledger/text-input.js';
import {
  MAX_ABS_MICRO_CREDITS,
  formatCredits,
  formatExactDecimal,
  parseCredits,
  parseExactDecimal,
  type ExactDecimal,
} from '../ledger/credits.js';
import { badInput, LedgerError } from '../ledger/errors.js';
import { lookupModelPrice, type CatalogModelPrice } from './catalog.js';
import {
  ONE,
  ZERO,
  add,
  ceilToMicroCredits,
  div,
  fromDecimal,
  fromInteger,
  isZero,
  mul,
  rational,
  roundToMicroCredits,
  sum,
  toDecimalString,
  type Rational,
} from './rational.js';

/** How a rule prices an event (contract enum PriceKind). */
export const PRICE_KINDS = ['FREE', 'FLAT', 'PER_UNIT', 'PER_TOKEN', 'PASS_THROUGH'] as const;
/** One of PRICE_KINDS. */
export type PriceKind = (typeof PRICE_KINDS)[number];

/** The quantity a PER_UNIT rule charges for (contract PriceKind.PER_UNIT). */
export const PRICE_UNITS = ['units', 'seconds', 'minutes', 'hours', 'tokens'] as const;
/** One of PRICE_UNITS. */
export type PriceUnit = (typeof PRICE_UNITS)[number];

/** Most rules one price book may have (bounds matching work and storage). */
export const MAX_PRICE_RULES = 1000;
/** Longest name, category, model, tier or sku, in characters. */
export const MAX_SELECTOR_LENGTH = 200;
/** Largest markup or BYOK fee, in percent (100x the base price). */
export const MAX_PERCENT = 10_000n;
/** Fractional digits allowed in a markup or fee percent. */
export const PERCENT_DECIMALS = 6;

/**
 * One validated price rule. Credit amounts are bigint micro-credits; percents are canonical
 * decimal strings ("20", "12.5"). Fields a kind does not use are null (validation rejects
 * them when given).
 */
export interface PriceRule {
  category: string;
  /** Null: any model. */
  model: string | null;
  /** Null: any tier. */
  tier: string | null;
  /** Null: any sku. */
  sku: string | null;
  kind: PriceKind;
  /** FLAT: credits per event; PER_UNIT: credits per one `unit`. Null for other kinds. */
  creditsMicro: bigint | null;
  /** PER_UNIT only. */
  unit: PriceUnit | null;
  /** PER_TOKEN / PASS_THROUGH: percent added on top of the provider price; null = none. */
  markupPercent: string | null;
  /**
   * PER_TOKEN / PASS_THROUGH: credits per event when the price cannot be computed (model not
   * in the catalog, no providerCostUsd). Null: such an event is BAD_USER_INPUT.
   */
  fallbackCreditsMicro: bigint | null;
}

/** A validated price book, ready to publish or to price with. */
export interface PriceBookDraft {
  name: string;
  /** Percent of the provider cost charged for a bring-your-own-key call (canonical decimal). */
  byokFeePercent: string;
  rules: PriceRule[];
}

/** A Credits or Decimal value as it arrives from GraphQL or JSON: a string or a number. */
export type DecimalInput = string | number;

/** One rule in the wire shape of the contract's PriceRuleInput. */
export interface PriceRuleInput {
  category: string;
  model?: string | null;
  tier?: string | null;
  sku?: string | null;
  kind: PriceKind;
  credits?: DecimalInput | null;
  unit?: string | null;
  markupPercent?: DecimalInput | null;
  fallbackCredits?: DecimalInput | null;
}

/** A price book in the wire shape of the contract's PriceBookInput. */
export interface PriceBookInput {
  name: string;
  /** Default "0". */
  byokFeePercent?: DecimalInput | null;
  rules: PriceRuleInput[];
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function requiredText(v: unknown, field: string): string {
  if (typeof v !== 'string') throw badInput(field, 'must be a string');
  if (v.trim() === '') throw badInput(field, 'must not be empty');
  if (v !== v.trim()) throw badInput(field, 'must not start or end with whitespace');
  if (v.length > MAX_SELECTOR_LENGTH) throw badInput(field, `must be at most ${MAX_SELECTOR_LENGTH} characters`);
  return singleLine(v, field);
}

function optionalText(v: unknown, field: string): string | null {
  if (v === undefined || v === null) return null;
  if (v === '') throw badInput(field, 'must not be empty: omit it (or pass null) to match any value');
  return requiredText(v, field);
}

/** Parses a percent: >= 0, <= MAX_PERCENT, at most 6 decimals; returns it canonical. */
function parsePercent(v: unknown, field: string): string {
  const d = parseExactDecimal(v, field, PERCENT_DECIMALS);
  if (d.units < 0n) throw badInput(field, 'must not be negative');
  if (d.units > MAX_PERCENT * 10n ** BigInt(d.scale)) throw badInput(field, `must be at most ${MAX_PERCENT}`);
  return formatExactDecimal(d);
}

function parseNonNegativeCredits(v: unknown, field: string): bigint {
  const micro = parseCredits(v, field);
  if (micro < 0n) throw badInput(field, 'must not be negative');
  return micro;
}

function present(v: unknown): boolean {
  return v !== undefined && v !== null;
}

const KINDS_WITH_CREDITS: readonly PriceKind[] = ['FLAT', 'PER_UNIT'];
const KINDS_WITH_MARKUP: readonly PriceKind[] = ['PER_TOKEN', 'PASS_THROUGH'];

function validateRule(raw: unknown, index: number, checkCatalog: boolean): PriceRule {
  const at = `rules[${index}]`;
  if (!isRecord(raw)) throw badInput(at, 'must be an object');
  const category = requiredText(raw.category, `${at}.category`);
  const model = optionalText(raw.model, `${at}.model`);
  const tier = optionalText(raw.tier, `${at}.tier`);
  const sku = optionalText(raw.sku, `${at}.sku`);
  const kind = raw.kind;
  if (typeof kind !== 'string' || !(PRICE_KINDS as readonly string[]).includes(kind)) {
    throw badInput(`${at}.kind`, `must be one of ${PRICE_KINDS.join(', ')}`);
  }
  const k = kind as PriceKind;

  let creditsMicro: bigint | null = null;
  if (KINDS_WITH_CREDITS.includes(k)) {
    if (!present(raw.credits)) throw badInput(`${at}.credits`, `is required for a ${k} rule`);
    creditsMicro = parseNonNegativeCredits(raw.credits, `${at}.credits`);
  } else if (present(raw.credits)) {
    throw badInput(`${at}.credits`, `is only used by FLAT and PER_UNIT rules, not ${k}`);
  }

  let unit: PriceUnit | null = null;
  if (k === 'PER_UNIT') {
    if (typeof raw.unit !== 'string' || !(PRICE_UNITS as readonly string[]).includes(raw.unit)) {
      throw badInput(`${at}.unit`, `a PER_UNIT rule needs unit = one of ${PRICE_UNITS.join(', ')}`);
    }
    unit = raw.unit as PriceUnit;
  } else if (present(raw.unit)) {
    throw badInput(`${at}.unit`, `is only used by PER_UNIT rules, not ${k}`);
  }

  let markupPercent: string | null = null;
  let fallbackCreditsMicro: bigint | null = null;
  if (KINDS_WITH_MARKUP.includes(k)) {
    if (present(raw.markupPercent)) markupPercent = parsePercent(raw.markupPercent, `${at}.markupPercent`);
    if (present(raw.fallbackCredits)) {
      fallbackCreditsMicro = parseNonNegativeCredits(raw.fallbackCredits, `${at}.fallbackCredits`);
    }
  } else {
    if (present(raw.markupPercent)) throw badInput(`${at}.markupPercent`, `is only used by PER_TOKEN and PASS_THROUGH rules, not ${k}`);
    if (present(raw.fallbackCredits)) throw badInput(`${at}.fallbackCredits`, `is only used by PER_TOKEN and PASS_THROUGH rules, not ${k}`);
  }

  if (checkCatalog && k === 'PER_TOKEN' && model !== null && fallbackCreditsMicro === null) {
    const price = lookupModelPrice(model);
    if (!price || price.inputUsdPerMillion === null) {
      throw badInput(
        `${at}.model`,
        `"${model}" has no token prices in the LLM price catalog; set fallbackCredits or use a FLAT rule for it`,
      );
    }
  }
  return { category, model, tier, sku, kind: k, creditsMicro, unit, markupPercent, fallbackCreditsMicro };
}

/** Options of validatePriceBook. */
export interface ValidatePriceBookOptions {
  /**
   * Refuse a PER_TOKEN rule without fallbackCredits naming a model the bundled LLM price catalog
   * cannot price (default true: publishing). False for a book already stored (pricing-state.ts
   * readActivePriceBook): it was checked when it was published, against the catalog of the
   * version that published it; a dependency upgrade may since have dropped or renamed the model,
   * and the book in force must still price every other event. That model's events are then
   * refused one by one by priceUsage (BAD_USER_INPUT, field model), as an unknown model is.
   */
  checkCatalog?: boolean;
}

/**
 * Validates a price book given in the contract's PriceBookInput shape (Credits and Decimal
 * values as strings or numbers) and returns it normalized.
 * @throws LedgerError BAD_USER_INPUT (message names the field, e.g. "rules[2].credits: ...")
 *   for: a missing or empty name, category or selector; surrounding whitespace; an unknown
 *   kind; no rules or more than MAX_PRICE_RULES; two rules with the same
 *   (category, model, tier, sku); FLAT/PER_UNIT without credits; PER_UNIT without a unit in
 *   units|seconds|minutes|hours|tokens; a field the kind does not use (credits on PER_TOKEN,
 *   markup on FLAT, ...); negative or malformed amounts and percents (Credits: at most 6
 *   decimals; percents: 0..10000 with at most 6 decimals); a PER_TOKEN rule naming a model
 *   the LLM price catalog cannot price, unless it has fallbackCredits (only with
 *   `options.checkCatalog`, the default).
 */
export function validatePriceBook(input: unknown, options: ValidatePriceBookOptions = {}): PriceBookDraft {
  const checkCatalog = options.checkCatalog ?? true;
  if (!isRecord(input)) throw badInput('input', 'must be an object');
  const name = requiredText(input.name, 'name');
  const byokFeePercent = present(input.byokFeePercent) ? parsePercent(input.byokFeePercent, 'byokFeePercent') : '0';
  const rawRules = input.rules;
  if (!Array.isArray(rawRules)) throw badInput('rules', 'must be a list');
  if (rawRules.length === 0) throw badInput('rules', 'must contain at least one rule');
  if (rawRules.length > MAX_PRICE_RULES) throw badInput('rules', `at most ${MAX_PRICE_RULES} rules are allowed`);
  const rules: PriceRule[] = [];
  const seen = new Map<string, number>();
  rawRules.forEach((raw, i) => {
    const rule = validateRule(raw, i, checkCatalog);
    const key = JSON.stringify([rule.category, rule.model, rule.tier, rule.sku]);
    const first = seen.get(key);
    if (first !== undefined) {
      throw badInput(
        `rules[${i}]`,
        `duplicates the selectors of rules[${first}] (category "${rule.category}", model ${rule.model ?? 'any'}, tier ${rule.tier ?? 'any'}, sku ${rule.sku ?? 'any'})`,
      );
    }
    seen.set(key, i);
    rules.push(rule);
  });
  return { name, byokFeePercent, rules };
}

/** What rule matching looks at in an event. */
export interface RuleSelectors {
  category: string;
  model?: string | null;
  tier?: string | null;
  sku?: string | null;
}

/** Specificity of a rule: 4 for a model, + 2 for a tier, + 1 for a sku (higher wins). */
export function ruleSpecificity(rule: Pick<PriceRule, 'model' | 'tier' | 'sku'>): number {
  return (rule.model !== null ? 4 : 0) + (rule.tier !== null ? 2 : 0) + (rule.sku !== null ? 1 : 0);
}

/** True when the rule's category equals the event's and each non-null selector equals the event's. */
export function ruleMatches(rule: PriceRule, event: RuleSelectors): boolean {
  return (
    rule.category === event.category &&
    (rule.model === null || rule.model === (event.model ?? null)) &&
    (rule.tier === null || rule.tier === (event.tier ?? null)) &&
    (rule.sku === null || rule.sku === (event.sku ?? null))
  );
}

/**
 * The most specific rule matching the event (see the module docstring), or null.
 */
export function findPriceRule(book: Pick<PriceBookDraft, 'rules'>, event: RuleSelectors): PriceRule | null {
  let best: PriceRule | null = null;
  let bestRank = -1;
  for (const rule of book.rules) {
    if (!ruleMatches(rule, event)) continue;
    const rank = ruleSpecificity(rule);
    if (rank > bestRank) {
      best = rule;
      bestRank = rank;
    }
  }
  return best;
}

/**
 * The most specific rule matching the event.
 * @throws LedgerError BAD_USER_INPUT "no price rule for category X ..." when none matches
 *   (contract: an event with no matching rule is BAD_USER_INPUT and nothing is recorded).
 */
export function matchPriceRule(book: Pick<PriceBookDraft, 'rules'>, event: RuleSelectors): PriceRule {
  const rule = findPriceRule(book, event);
  if (!rule) {
    const sel = [
      event.model ? `model "${event.model}"` : null,
      event.tier ? `tier "${event.tier}"` : null,
      event.sku ? `sku "${event.sku}"` : null,
    ].filter((s) => s !== null);
    throw new LedgerError(
      'BAD_USER_INPUT',
      `category: no price rule for category "${event.category}"${sel.length ? ` with ${sel.join(', ')}` : ''} in the active price book`,
      { field: 'category' },
    );
  }
  return rule;
}

/** Measured quantities of an event (contract UsageQuantitiesInput). Absent = not reported. */
export interface UsageQuantitiesInput {
  /** Uncached input (prompt) tokens: NOT including cache-read or cache-write tokens. */
  inputTokens?: number | null;
  /** Output tokens, not including reasoning tokens. */
  outputTokens?: number | null;
  reasoningTokens?: number | null;
  cacheReadTokens?: number | null;
  cacheWriteTokens?: number | null;
  /** Duration in seconds (non-negative decimal). */
  seconds?: DecimalInput | null;
  /** Count of units: images, calls, tasks (non-negative decimal). */
  units?: DecimalInput | null;
}

/** The part of a usage event (contract RecordUsageInput) that pricing needs. */
export interface UsageToPrice extends RuleSelectors {
  quantities?: UsageQuantitiesInput | null;
  /** Cost the provider reported, in USD (non-negative decimal). */
  providerCostUsd?: DecimalInput | null;
  /** Bring-your-own-key call: only the BYOK fee is charged for a PER_TOKEN/PASS_THROUGH rule. */
  byok?: boolean | null;
  /** When the event happened: selects catalog prices that depend on date or time of day. Default: now. */
  occurredAt?: Date | null;
}

/** Settings pricing depends on (contract Settings). */
export interface PricingSettings {
  /** USD value of one credit, > 0 (default "0.01"). */
  creditUsdValue: DecimalInput;
}

/** What a cost line is for (contract CostLine.item). */
export type CostLineItem =
  | 'input_tokens'
  | 'output_tokens'
  | 'reasoning_tokens'
  | 'cache_read_tokens'
  | 'cache_write_tokens'
  | 'request'
  | 'units'
  | 'seconds'
  | 'provider_cost'
  | 'byok_fee'
  | 'markup';

/**
 * One priced line (contract CostLine). exact amount = quantity x unitPrice.
 * Token, units and seconds lines: quantity in tokens/units/seconds, unitPrice in credits per one.
 * request: quantity 1, unitPrice = credits per event.
 * provider_cost: quantity in USD, unitPrice = credits per USD (1 / creditUsdValue).
 * markup and byok_fee: quantity = the credits the percent applies to, unitPrice = percent / 100.
 */
export interface CostLine {
  item: CostLineItem;
  /** Canonical decimal (12 decimals, half-up, only when non-terminating). */
  quantity: string;
  /** Credits per one unit of quantity; canonical decimal (12 decimals only when non-terminating). */
  unitPrice: string;
  /** The line rounded half-up to the micro-credit, for display. */
  amountMicroCredits: bigint;
  /** Exact line amount in credits (12 decimals, half-up, only when non-terminating). */
  exactAmount: string;
}

/** The price of one usage event. */
export interface PricedUsage {
  /** What the event costs: the exact sum of the lines rounded UP to the micro-credit. */
  costMicroCredits: bigint;
  /** Exact sum of the lines in credits (12 decimals, half-up, only when non-terminating). */
  exactCost: string;
  /** At least one line. */
  lines: CostLine[];
  /** The rule that priced the event. */
  rule: PriceRule;
  /** The catalog entry used for token prices, if any. */
  catalog: { providerId: string; modelId: string } | null;
}

interface ExactLine {
  item: CostLineItem;
  quantity: Rational;
  unitPrice: Rational;
}

interface Quantities {
  inputTokens: number | null;
  outputTokens: number | null;
  reasoningTokens: number | null;
  cacheReadTokens: number | null;
  cacheWriteTokens: number | null;
  seconds: Rational | null;
  units: Rational | null;
}

const TOKEN_FIELDS = ['inputTokens', 'outputTokens', 'reasoningTokens', 'cacheReadTokens', 'cacheWriteTokens'] as const;
type TokenField = (typeof TOKEN_FIELDS)[number];
const TOKEN_ITEM: Record<TokenField, CostLineItem> = {
  inputTokens: 'input_tokens',
  outputTokens: 'output_tokens',
  reasoningTokens: 'reasoning_tokens',
  cacheReadTokens: 'cache_read_tokens',
  cacheWriteTokens: 'cache_write_tokens',
};
const TOKEN_PRICE: Record<TokenField, keyof CatalogModelPrice> = {
  inputTokens: 'inputUsdPerMillion',
  outputTokens: 'outputUsdPerMillion',
  reasoningTokens: 'reasoningUsdPerMillion',
  cacheReadTokens: 'cacheReadUsdPerMillion',
  cacheWriteTokens: 'cacheWriteUsdPerMillion',
};

function parseNonNegativeDecimal(v: unknown, field: string): Rational {
  const d = parseExactDecimal(v, field);
  if (d.units < 0n) throw badInput(field, 'must not be negative');
  return fromDecimal(d);
}

function parseQuantities(q: UsageQuantitiesInput | null | undefined): Quantities {
  if (q !== null && q !== undefined && !isRecord(q)) throw badInput('quantities', 'must be an object');
  const src: Record<string, unknown> = isRecord(q) ? q : {};
  const out: Quantities = {
    inputTokens: null,
    outputTokens: null,
    reasoningTokens: null,
    cacheReadTokens: null,
    cacheWriteTokens: null,
    seconds: null,
    units: null,
  };
  for (const f of TOKEN_FIELDS) {
    const v = src[f];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
      throw badInput(`quantities.${f}`, 'must be a non-negative integer');
    }
    out[f] = v;
  }
  if (present(src.seconds)) out.seconds = parseNonNegativeDecimal(src.seconds, 'quantities.seconds');
  if (present(src.units)) out.units = parseNonNegativeDecimal(src.units, 'quantities.units');
  return out;
}

/**
 * Credits per USD = 1 / creditUsdValue, exact.
 * @throws LedgerError BAD_USER_INPUT when creditUsdValue is not a decimal > 0.
 */
export function creditsPerUsd(settings: PricingSettings): Rational {
  const value = parseExactDecimal(settings.creditUsdValue, 'creditUsdValue');
  if (value.units <= 0n) throw badInput('creditUsdValue', 'must be greater than 0');
  return div(ONE, fromDecimal(value));
}

function percentRate(percent: string): Rational {
  return div(fromDecimal(parseExactDecimal(percent, 'percent')), fromInteger(100));
}

const PER_MILLION = fromInteger(1_000_000);

/** Largest event cost: what a Credits value and a signed 64-bit column can both hold. */
const MAX_COST_MICRO_CREDITS = MAX_ABS_MICRO_CREDITS < 2n ** 63n - 1n ? MAX_ABS_MICRO_CREDITS : 2n ** 63n - 1n;

/** Catalog token lines; null when a reported non-zero token kind has no catalog price. */
function catalogLines(price: CatalogModelPrice, q: Quantities, perUsd: Rational): ExactLine[] | null {
  const lines: ExactLine[] = [];
  for (const f of TOKEN_FIELDS) {
    const n = q[f];
    if (n === null || n === 0) continue;
    const usd = price[TOKEN_PRICE[f]] as ExactDecimal | null;
    if (usd === null) return null;
    lines.push({ item: TOKEN_ITEM[f], quantity: fromInteger(n), unitPrice: mul(div(fromDecimal(usd), PER_MILLION), perUsd) });
  }
  if (price.requestUsd !== null) {
    lines.push({ item: 'request', quantity: ONE, unitPrice: mul(fromDecimal(price.requestUsd), perUsd) });
  }
  if (lines.length === 0) {
    const usd = price.inputUsdPerMillion;
    lines.push({
      item: 'input_tokens',
      quantity: ZERO,
      unitPrice: usd === null ? ZERO : mul(div(fromDecimal(usd), PER_MILLION), perUsd),
    });
  }
  return lines;
}

function promptTokens(q: Quantities): number {
  return Math.min(Number.MAX_SAFE_INTEGER, (q.inputTokens ?? 0) + (q.cacheReadTokens ?? 0) + (q.cacheWriteTokens ?? 0));
}

function lineAmount(l: ExactLine): Rational {
  return mul(l.quantity, l.unitPrice);
}

function markupLine(lines: readonly ExactLine[], markupPercent: string | null): ExactLine[] {
  if (markupPercent === null) return [];
  const rate = percentRate(markupPercent);
  if (isZero(rate)) return [];
  return [{ item: 'markup', quantity: sum(lines.map(lineAmount)), unitPrice: rate }];
}

function requestLine(micro: bigint): ExactLine {
  return { item: 'request', quantity: ONE, unitPrice: rational(micro, 1_000_000n) };
}

/**
 * Refuses an event priced by its token counts that reports none at all: a PER_TOKEN event, or a
 * BYOK PASS_THROUGH event whose fee is taken of the catalog price of its tokens (no
 * providerCostUsd). Without any count it would cost 0 (or the fallback) silently, so a client that
 * forgot them would get free LLM calls (or pay no BYOK fee). An explicit 0 is a count. A BYOK event
 * whose fee is taken of its providerCostUsd (`feeFromProviderCost`) needs none. For PER_TOKEN it is
 * checked before anything is priced, whatever the catalog knows of the model (docs/pricing.md; a
 * PER_UNIT tokens rule refuses alike).
 * @throws LedgerError BAD_USER_INPUT (field quantities).
 */
function requireTokenCounts(rule: PriceRule, q: Quantities, feeFromProviderCost: boolean): void {
  if (feeFromProviderCost || TOKEN_FIELDS.some((f) => q[f] !== null)) return;
  const what = rule.kind === 'PER_TOKEN' ? "prices the event's token counts" : "takes a bring-your-own-key event's fee of the catalog price of its token counts";
  throw badInput(
    'quantities',
    `the ${rule.kind} rule for category "${rule.category}" ${what}: send at least one of inputTokens, outputTokens, reasoningTokens, cacheReadTokens or cacheWriteTokens (0 when there were none), or, with byok, providerCostUsd`,
  );
}

/**
 * The refusal of a BYOK event whose fee has no base: no providerCostUsd, and no catalog price of
 * its tokens (no model, a model the catalog does not know, or a token kind it has no price for).
 * The fee is `feePercent`% of the provider's cost, so only the caller can supply it: the message
 * says to send providerCostUsd. The rule's fallbackCredits stand in for the model price, which a
 * BYOK event does not pay, so they do not apply (docs/pricing.md, "Bring your own key").
 * @returns a LedgerError BAD_USER_INPUT naming the field providerCostUsd.
 */
function byokWithoutCost(rule: PriceRule, feePercent: string, model: string | null): LedgerError {
  const why =
    model === null || model === ''
      ? 'the event names no model'
      : `model "${model}" has no price in the LLM price catalog for the reported tokens`;
  return badInput(
    'providerCostUsd',
    `a bring-your-own-key event pays a ${feePercent}% fee on the provider's cost; ${why}; send providerCostUsd (what the provider charged for the call) (category "${rule.category}", ${rule.kind} rule)`,
  );
}

function unpriceable(rule: PriceRule, why: string): LedgerError {
  return badInput(
    'model',
    `${why} (category "${rule.category}", ${rule.kind} rule); give the rule fallbackCredits or add a FLAT rule for the model`,
  );
}

/**
 * Prices one usage event with a price book.
 *
 * Semantics (contract PriceKind): FREE costs 0 (one "request" line at 0). FLAT charges the
 * rule's credits per event ("request"). PER_UNIT charges credits x the quantity named by
 * `unit`: "units" from quantities.units, "seconds"/"minutes"/"hours" pro rata from
 * quantities.seconds (one "seconds" line; unitPrice = credits per second), "tokens" = input +
 * output + reasoning tokens (one line per reported token kind). PER_TOKEN charges each
 * non-zero token kind at the LLM catalog price of the event's model (the catalog's per-request
 * fee too, if any) converted to credits (USD / creditUsdValue), then a "markup" line of
 * markupPercent% of that sum; when the model cannot be priced, fallbackCredits (no markup).
 * PASS_THROUGH converts providerCostUsd to credits ("provider_cost") plus markup; without a
 * provider cost, fallbackCredits (no markup). BYOK (usage.byok) on PER_TOKEN/PASS_THROUGH:
 * the model price is not charged, only a "byok_fee" line of book.byokFeePercent% of the
 * provider cost (providerCostUsd when given, else the catalog token cost; with neither, the
 * event is refused asking for providerCostUsd: fallbackCredits are no fee base); BYOK changes
 * nothing for other kinds. Rounding: see the module docstring (total rounded UP).
 *
 * @throws LedgerError BAD_USER_INPUT when no rule matches, a quantity the rule needs is
 *   missing (quantities.units / seconds / token counts; a PER_TOKEN event with no token count
 *   at all, unless BYOK with providerCostUsd), a quantity or providerCostUsd is
 *   negative or malformed, the model cannot be priced and the rule has no fallbackCredits,
 *   creditUsdValue is not > 0, or the cost exceeds the largest Credits amount.
 */
export function priceUsage(
  book: Pick<PriceBookDraft, 'rules' | 'byokFeePercent'>,
  usage: UsageToPrice,
  settings: PricingSettings,
): PricedUsage {
  if (typeof usage.category !== 'string' || usage.category === '') throw badInput('category', 'must not be empty');
  const perUsd = creditsPerUsd(settings);
  const q = parseQuantities(usage.quantities);
  const providerCostUsd = present(usage.providerCostUsd)
    ? parseNonNegativeDecimal(usage.providerCostUsd, 'providerCostUsd')
    : null;
  const rule = matchPriceRule(book, usage);
  if (rule.kind === 'PER_TOKEN') requireTokenCounts(rule, q, usage.byok === true && providerCostUsd !== null);
  const model = rule.model ?? usage.model ?? null;
  const at = usage.occurredAt ?? undefined;
  let catalog: PricedUsage['catalog'] = null;

  const catalogCost = (): ExactLine[] | null => {
    if (model === null || model === '') return null;
    const price = lookupModelPrice(model, null, { promptTokens: promptTokens(q), ...(at ? { at } : {}) });
    if (!price) return null;
    const lines = catalogLines(price, q, perUsd);
    if (lines) catalog = { providerId: price.providerId, modelId: price.modelId };
    return lines;
  };

  let lines: ExactLine[];
  const byok = usage.byok === true && (rule.kind === 'PER_TOKEN' || rule.kind === 'PASS_THROUGH');
  if (byok) {
    const fee = percentRate(book.byokFeePercent);
    let base: Rational | null = providerCostUsd !== null ? mul(providerCostUsd, perUsd) : null;
    if (base === null) {
      const tokenLines = catalogCost();
      if (tokenLines) {
        // The fee is taken of the tokens' catalog price: without any count it would be 0.
        if (!isZero(fee)) requireTokenCounts(rule, q, false);
        base = sum(tokenLines.map(lineAmount));
      }
    }
    if (base === null) {
      if (!isZero(fee)) throw byokWithoutCost(rule, book.byokFeePercent, model);
      base = ZERO;
    }
    lines = [{ item: 'byok_fee', quantity: base, unitPrice: fee }];
  } else {
    switch (rule.kind) {
      case 'FREE':
        lines = [{ item: 'request', quantity: ONE, unitPrice: ZERO }];
        break;
      case 'FLAT':
        lines = [requestLine(rule.creditsMicro ?? 0n)];
        break;
      case 'PER_UNIT':
        lines = perUnitLines(rule, q);
        break;
      case 'PER_TOKEN': {
        const tokenLines = catalogCost();
        if (tokenLines) lines = [...tokenLines, ...markupLine(tokenLines, rule.markupPercent)];
        else if (rule.fallbackCreditsMicro !== null) lines = [requestLine(rule.fallbackCreditsMicro)];
        else {
          throw unpriceable(
            rule,
            model === null
              ? 'the event has no model to look up in the LLM price catalog'
              : `model "${model}" has no price in the LLM price catalog for the reported tokens`,
          );
        }
        break;
      }
      case 'PASS_THROUGH':
        if (providerCostUsd !== null) {
          const base: ExactLine[] = [{ item: 'provider_cost', quantity: providerCostUsd, unitPrice: perUsd }];
          lines = [...base, ...markupLine(base, rule.markupPercent)];
        } else if (rule.fallbackCreditsMicro !== null) lines = [requestLine(rule.fallbackCreditsMicro)];
        else throw badInput('providerCostUsd', `is required by the PASS_THROUGH rule for category "${rule.category}" (it has no fallbackCredits)`);
        break;
    }
  }

  const exactTotal = sum(lines.map(lineAmount));
  const costMicroCredits = ceilToMicroCredits(exactTotal);
  if (costMicroCredits > MAX_COST_MICRO_CREDITS) throw badInput('quantities', 'the cost of this event is out of range');
  return {
    costMicroCredits,
    exactCost: toDecimalString(exactTotal),
    lines: lines.map((l) => {
      const amount = lineAmount(l);
      return {
        item: l.item,
        quantity: toDecimalString(l.quantity),
        unitPrice: toDecimalString(l.unitPrice),
        amountMicroCredits: roundToMicroCredits(amount),
        exactAmount: toDecimalString(amount),
      };
    }),
    rule,
    catalog,
  };
}

const SECONDS_PER: Record<'seconds' | 'minutes' | 'hours', bigint> = { seconds: 1n, minutes: 60n, hours: 3600n };

function perUnitLines(rule: PriceRule, q: Quantities): ExactLine[] {
  const credits = rational(rule.creditsMicro ?? 0n, 1_000_000n);
  const unit = rule.unit ?? 'units';
  if (unit === 'units') {
    if (q.units === null) throw badInput('quantities.units', `is required by the PER_UNIT (units) rule for category "${rule.category}"`);
    return [{ item: 'units', quantity: q.units, unitPrice: credits }];
  }
  if (unit === 'tokens') {
    const fields = (['inputTokens', 'outputTokens', 'reasoningTokens'] as const).filter((f) => q[f] !== null);
    if (fields.length === 0) {
      throw badInput('quantities', `inputTokens, outputTokens or reasoningTokens is required by the PER_UNIT (tokens) rule for category "${rule.category}"`);
    }
    const nonZero = fields.filter((f) => q[f] !== 0);
    const shown = nonZero.length > 0 ? nonZero : fields.slice(0, 1);
    return shown.map((f) => ({ item: TOKEN_ITEM[f], quantity: fromInteger(q[f] ?? 0), unitPrice: credits }));
  }
  if (q.seconds === null) throw badInput('quantities.seconds', `is required by the PER_UNIT (${unit}) rule for category "${rule.category}"`);
  return [{ item: 'seconds', quantity: q.seconds, unitPrice: div(credits, fromInteger(SECONDS_PER[unit])) }];
}

/** One entry of a model picker (contract ModelPrice), amounts in micro-credits. */
export interface ModelPriceEntry {
  model: string;
  tier: string | null;
  /** Credits per 1,000,000 input tokens incl. markup, rounded half-up to the micro-credit; null when priced per request. */
  inputPerMillionMicroCredits: bigint | null;
  /** Credits per 1,000,000 output tokens incl. markup, rounded half-up; null when priced per request. */
  outputPerMillionMicroCredits: bigint | null;
  /** Credits per request (FLAT, FREE, a PER_TOKEN fallback, or the catalog's per-request fee incl. markup). */
  perRequestMicroCredits: bigint | null;
}

/**
 * Per-model credit prices for a model picker (contract Query.modelPrices): one entry per
 * rule with a model and no sku, in book order. PER_TOKEN: the catalog's base-tier input and
 * output prices in force at `at`, converted to credits and including markupPercent, rounded
 * half-up to 6 decimals (Credits precision); a model the catalog cannot price shows its
 * fallbackCredits as perRequest. FLAT: perRequest = credits. FREE: perRequest = 0.
 * PER_UNIT and PASS_THROUGH rules are not listed (their price is not per token or request).
 * @throws LedgerError BAD_USER_INPUT when creditUsdValue is not > 0.
 */
export function modelPrices(
  book: Pick<PriceBookDraft, 'rules'>,
  settings: PricingSettings,
  at: Date = new Date(),
): ModelPriceEntry[] {
  const perUsd = creditsPerUsd(settings);
  const out: ModelPriceEntry[] = [];
  for (const rule of book.rules) {
    if (rule.model === null || rule.sku !== null) continue;
    const base = { model: rule.model, tier: rule.tier };
    if (rule.kind === 'FLAT' || rule.kind === 'FREE') {
      out.push({ ...base, inputPerMillionMicroCredits: null, outputPerMillionMicroCredits: null, perRequestMicroCredits: rule.creditsMicro ?? 0n });
      continue;
    }
    if (rule.kind !== 'PER_TOKEN') continue;
    const price = lookupModelPrice(rule.model, null, { at });
    const factor = add(ONE, rule.markupPercent === null ? ZERO : percentRate(rule.markupPercent));
    const credits = (usd: ExactDecimal | null) => (usd === null ? null : roundToMicroCredits(mul(mul(fromDecimal(usd), perUsd), factor)));
    if (!price || price.inputUsdPerMillion === null) {
      out.push({ ...base, inputPerMillionMicroCredits: null, outputPerMillionMicroCredits: null, perRequestMicroCredits: rule.fallbackCreditsMicro });
      continue;
    }
    out.push({
      ...base,
      inputPerMillionMicroCredits: credits(price.inputUsdPerMillion),
      outputPerMillionMicroCredits: credits(price.outputUsdPerMillion),
      perRequestMicroCredits: credits(price.requestUsd),
    });
  }
  return out;
}

/** Formats a rule back into the contract's PriceRule wire shape (Credits as strings). */
export function formatPriceRule(rule: PriceRule): PriceRuleInput {
  return {
    category: rule.category,
    model: rule.model,
    tier: rule.tier,
    sku: rule.sku,
    kind: rule.kind,
    credits: rule.creditsMicro === null ? null : formatCredits(rule.creditsMicro),
    unit: rule.unit,
    markupPercent: rule.markupPercent,
    fallbackCredits: rule.fallbackCreditsMicro === null ? null : formatCredits(rule.fallbackCreditsMicro),
  };
}
