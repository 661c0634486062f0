/**
 * The query cost limit (GRAPHQL_MAX_COST), checked when an operation is about to run, with its
 * variables.
 *
 * The estimate is graphql-armor's (`@escape.tech/graphql-armor-cost-limit`, with its default
 * weights): a scalar field costs 1, a field with a selection 2 plus 1.5 times each child's cost,
 * a fragment spread 1 plus 1.5 times its fragment's cost, and a field with a `first` (or `last`)
 * argument multiplies by it the cost of what is resolved once per item: a connection page of 500
 * events costs 500 events. Unlike graphql-armor, which multiplies the field's whole cost, a
 * connection's `pageInfo` and `totalCount` (resolved once per page) count once, so a full page
 * with cursors and pageInfo is not refused for its pageInfo; no document costs more than armor
 * said when its page sizes are literals and every list it reads is paged.
 *
 * Why not graphql-armor's own rule: it runs during validation, before variables exist, and
 * multiplies only by a `first` / `last` written as an integer literal. The same page size passed
 * as a variable (`usage(first: $n)`, the usual way to write a paginated query) counted as 1, so
 * `usageEvent { account { usage(first: $n) { edges { node { account { usage(first: $n) ... } } } } } }`
 * under 30 aliases asked for 30 x 500 x 500 events at the cost of a handful of fields
 * (test/api/errors.test.ts). Here a variable counts with the value the request gives it (or the
 * variable's default in the document), i.e. the page size the field will actually serve.
 *
 * A list read without a page size counts the items it will serve too (armor counted it as 1, so
 * `usage { edges { node { account { batches { … } reservations { … } } } } }`, 20 events times
 * up to 2 x 1,000 rows each, cost about what one event did; test/api/errors.test.ts):
 * - a connection called without `first` / `last` (or with null) serves its default page,
 *   DEFAULT_CONNECTION_SIZE (builder.ts, the size Pothos serves), and counts that many items;
 * - a plain list sized by an argument declares it with `listSizedBy(argument, cap)` and counts
 *   what the argument asks for, read like `first` (a literal or the request's variable; absent or
 *   null, the schema's default), at most the cap: `Account.usageHistory(months)` (default 12, at
 *   most USAGE_HISTORY_MAX_MONTHS = 120) one row per month, `recordUsageBatch(inputs)` one result
 *   per input (the list's length), at most CAPPED_LIST_COST_ITEMS: a weight, as for a capped list
 *   below (its results are answered from the rows the call wrote; counted at 1,000, a batch of
 *   1,000 with ten fields per event would cost ~38,600, over the default limit);
 * - a plain list field that declares its cap with `cappedList(cap)`, the same constant as its
 *   resolver's `take` / LIMIT, counts min(cap, CAPPED_LIST_COST_ITEMS = 100) items:
 *   Account.batches and Account.reservations (1,000 rows each), Account.usageSummary
 *   (USAGE_SUMMARY_MAX_ROWS = 1,000 groups), Viewer.accounts (the user's USER account and its
 *   organization's: 2), Account.budgets and Account.userBudgets (ACCOUNT_BUDGETS_CAP = 1,000
 *   budgets per read; `after` reads on, src/graphql/growth.ts). A weight, not the cap: counted at its cap, a list alone would cost more
 *   than the limit (`createAccount { batches { …8 fields } }` about 49,500, the demo's report as
 *   much), while real accounts hold a few batches and holds. At 100, the demo's report
 *   (schema/operations AccountSummary: batches, three summaries, budgets) costs about 8,400, a
 *   list nested under any page is refused as soon as the page is more than a few items, and each
 *   item's nested selection still multiplies;
 * - a plain list the server does not cap and no argument sizes states its weight with
 *   `listCountedAs(items)`, its reason next to the field: UsageEvent.drawdowns
 *   DRAWDOWN_COST_ITEMS = 2 (an event empties every batch it draws from but the last, so a page of events serves at most one
 *   drawdown per event plus one per batch it emptied). At 2 the demo's RecordUsageBatch of 100
 *   events with their drawdowns costs about 10,900, at 100 it would cost about 345,000.
 * Other plain lists count as 1, each for a reason given next to it: CostLine lists
 * (UsageEvent.lines, Quote.lines: at most one line per item kind), the category breakdowns
 * (UsageMonth.byCategory, TaskCost.byCategory: one row per price book category), and the
 * catalog's root lists (PriceBook.rules, creditPacks, plans, modelPrices: reached only from the
 * root, their items hold scalars only, so their size never multiplies another list's). A list of
 * scalars (Settings.alertThresholds) has no selection and costs 1 whatever its length.
 * The estimate reads the field definitions from the schema the operation runs against.
 *
 * Documents whose page sizes are all literals have one cost whatever the variables: it is
 * memoized per parsed document and operation name (yoga's parser cache hands the same
 * DocumentNode to repeated queries), so the charge path's `recordUsage { id cost }` pays one
 * WeakMap lookup.
 */
import {
  Kind,
  getNamedType,
  getOperationAST,
  isInterfaceType,
  isObjectType,
  type DocumentNode,
  type GraphQLField,
  type GraphQLNamedType,
  type GraphQLSchema,
  type FieldNode,
  type FragmentDefinitionNode,
  type FragmentSpreadNode,
  type InlineFragmentNode,
  type OperationDefinitionNode,
  type ValueNode,
} from 'graphql';
import type { Plugin } from 'graphql-yoga';
import type { GraphQLError } from 'graphql';
import { codedError } from './errors.js';
import { DEFAULT_CONNECTION_SIZE } from './builder.js';

/** graphql-armor's default weights (costLimitDefaultOptions), kept so GRAPHQL_MAX_COST means what it meant. */
const OBJECT_COST = 2;
const SCALAR_COST = 1;
const DEPTH_COST_FACTOR = 1.5;

/**
 * Items a capped plain list counts at most (see the module comment): a documented weight, not
 * the rows it may serve, so that a list of an account's batches in a mutation's answer stays
 * far below GRAPHQL_MAX_COST's default while a list under a page of pages does not.
 */
export const CAPPED_LIST_COST_ITEMS = 100;

/** The field extension cappedList sets: the most items the list field serves. */
const LIST_CAP_EXTENSION = 'creditpoolListCap';

/** The field extension listSizedBy sets: the argument whose value is the list's size, and its cap. */
const LIST_SIZE_EXTENSION = 'creditpoolListSize';

/** The field extension listCountedAs sets: the items a list without a cap or sizing argument counts. */
const LIST_ITEMS_EXTENSION = 'creditpoolListItems';

/**
 * Field extensions for a plain list field whose resolver serves at most `cap` items (e.g. its
 * SQL `take`): pass the same constant to both, as `extensions: cappedList(CAP)`, so the cost
 * estimate counts min(cap, CAPPED_LIST_COST_ITEMS) items for it (module comment).
 */
export function cappedList(cap: number): Record<string, number> {
  return { [LIST_CAP_EXTENSION]: cap };
}

/**
 * Field extensions for a plain list field that serves as many items as its argument `argument`
 * asks for: an Int argument (`usageHistory(months:)`) its value, a list argument
 * (`recordUsageBatch(inputs:)`) its length, each counted as at most `cap` (the most the resolver
 * accepts, or a smaller weight: say why next to the field). The estimate reads the argument as it does `first`: a literal, or a
 * variable's value in the request (else the variable's default in the document); absent or null,
 * the argument's default in the schema, else 1.
 */
export function listSizedBy(argument: string, cap: number): Record<string, { argument: string; cap: number }> {
  return { [LIST_SIZE_EXTENSION]: { argument, cap } };
}

/**
 * Field extensions for a plain list field the server does not cap and no argument sizes: the
 * estimate counts `items` items for it. A stated weight: say next to the field why it is what
 * the list serves (e.g. CAPPED_LIST_COST_ITEMS for rows the schema does not bound, like a capped
 * list's).
 */
export function listCountedAs(items: number): Record<string, number> {
  return { [LIST_ITEMS_EXTENSION]: items };
}

/** The field definition `name` of `type`, when it is an object or interface type that has one. */
function fieldOf(type: GraphQLNamedType | undefined, name: string): GraphQLField<unknown, unknown> | undefined {
  return type && (isObjectType(type) || isInterfaceType(type)) ? type.getFields()[name] : undefined;
}

/**
 * True when `selection`, a child of a connection, is resolved once per item of the page: a
 * connection's `edges` and `nodes`, and inline fragments or fragment spreads (which may hold
 * them). `pageInfo`, `totalCount` and `__typename` are resolved once per connection. (Every
 * child of a plain list's selection is resolved once per item.)
 */
function resolvedPerItem(selection: FieldNode | InlineFragmentNode | FragmentSpreadNode): boolean {
  if (selection.kind !== Kind.FIELD) return true;
  return selection.name.value !== 'pageInfo' && selection.name.value !== 'totalCount' && selection.name.value !== '__typename';
}

/** The estimated cost of one operation, and whether it depended on variable values. */
interface CostEstimate {
  cost: number;
  /** True when some `first` / `last` (or a listSizedBy argument) was a variable: the cost holds for these variables only. */
  usesVariables: boolean;
}

/**
 * Estimates the cost of the operation `operationName` of `document` (see the module comment)
 * with `variableValues` as sent by the client (uncoerced JSON), reading field definitions (page
 * arguments, list caps) from `schema`.
 * @returns the estimate, or null when the document has no such operation (graphql-js then
 *   answers that itself).
 */
export function estimateOperationCost(
  schema: GraphQLSchema,
  document: DocumentNode,
  operationName: string | null | undefined,
  variableValues: Readonly<Record<string, unknown>> | null | undefined,
): CostEstimate | null {
  const operation = getOperationAST(document, operationName ?? undefined);
  if (!operation) return null;
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d);
  const defaults = new Map<string, ValueNode>();
  for (const v of operation.variableDefinitions ?? []) if (v.defaultValue) defaults.set(v.variable.name.value, v.defaultValue);
  // Cost of each fragment once computed; -1 while it is being computed (a cycle, which
  // validation refuses, then adds nothing instead of recursing forever).
  const visited = new Map<string, number>();
  let usesVariables = false;

  /**
   * The size an argument asks for: an Int its value, a list its length (armor: at least 1);
   * `absent` when it is null, or a variable the request leaves out without a default. Used for
   * `first` / `last` and for the argument that sizes a listSizedBy field.
   */
  const sizeOf = (value: ValueNode, absent: number): number => {
    let v: ValueNode | undefined = value;
    if (value.kind === Kind.VARIABLE) {
      usesVariables = true;
      const given = variableValues?.[value.name.value];
      if (typeof given === 'number' && Number.isFinite(given)) return Math.max(Math.trunc(given), 1);
      if (Array.isArray(given)) return Math.max(given.length, 1);
      if (given === null) return absent;
      if (given !== undefined) return 1; // not a number or a list: coercion refuses it, or makes it a list of one
      v = defaults.get(value.name.value);
    }
    if (v === undefined || v.kind === Kind.NULL) return absent;
    if (v.kind === Kind.LIST) return Math.max(v.values.length, 1);
    if (v.kind !== Kind.INT) return 1;
    const n = parseInt(v.value, 10);
    return Number.isFinite(n) ? Math.max(n, 1) : 1;
  };

  /**
   * How many items `node` is counted for, and whether it is a connection (a field with `first` /
   * `last` arguments): its page size (DEFAULT_CONNECTION_SIZE when the request gives none); for
   * a plain list declared with listSizedBy the size its argument asks for (at most its cap), with
   * cappedList its capped weight, with listCountedAs its stated weight; else 1.
   */
  const itemsOf = (node: FieldNode, field: GraphQLField<unknown, unknown> | undefined): { items: number; connection: boolean } => {
    const arg = node.arguments?.find((a) => a.name.value === 'first' || a.name.value === 'last');
    // A field the schema lacks (validation refuses it first) counts as armor counted it.
    if (!field) return { items: arg ? sizeOf(arg.value, 1) : 1, connection: true };
    if (field.args.some((a) => a.name === 'first' || a.name === 'last')) {
      return { items: arg ? sizeOf(arg.value, DEFAULT_CONNECTION_SIZE) : DEFAULT_CONNECTION_SIZE, connection: true };
    }
    const sized = field.extensions?.[LIST_SIZE_EXTENSION] as { argument: string; cap: number } | undefined;
    if (sized) {
      // The schema's default, as the resolver sees it when the argument is absent (an Int or a list).
      const fallback = field.args.find((a) => a.name === sized.argument)?.defaultValue;
      const absent = typeof fallback === 'number' ? Math.max(fallback, 1) : Array.isArray(fallback) ? Math.max(fallback.length, 1) : 1;
      const given = node.arguments?.find((a) => a.name.value === sized.argument);
      return { items: Math.min(given ? sizeOf(given.value, absent) : absent, sized.cap), connection: false };
    }
    const cap = field.extensions?.[LIST_CAP_EXTENSION];
    if (typeof cap === 'number' && cap > 0) return { items: Math.min(cap, CAPPED_LIST_COST_ITEMS), connection: false };
    const counted = field.extensions?.[LIST_ITEMS_EXTENSION];
    return { items: typeof counted === 'number' && counted > 1 ? counted : 1, connection: false };
  };

  type Node = OperationDefinitionNode | FieldNode | InlineFragmentNode | FragmentSpreadNode | FragmentDefinitionNode;
  /** The cost of `node`, whose selections are on `parentType` (undefined when unknown). */
  const cost = (node: Node, parentType: GraphQLNamedType | undefined): number => {
    if (node.kind === Kind.FIELD && node.name.value === '__schema') return 0; // introspection is not counted (armor's ignoreIntrospection)
    if (node.kind === Kind.OPERATION_DEFINITION) {
      const root = schema.getRootType(node.operation) ?? undefined;
      return node.selectionSet.selections.reduce((sum, child) => sum + cost(child, root), 0);
    }
    if (node.kind === Kind.FRAGMENT_SPREAD) {
      const name = node.name.value;
      const known = visited.get(name);
      if (known !== undefined) return SCALAR_COST + DEPTH_COST_FACTOR * Math.max(known, 0);
      visited.set(name, -1);
      const fragment = fragments.get(name);
      if (!fragment) return SCALAR_COST;
      const fragmentCost = cost(fragment, schema.getType(fragment.typeCondition.name.value) ?? undefined);
      visited.set(name, fragmentCost);
      return SCALAR_COST + DEPTH_COST_FACTOR * fragmentCost;
    }
    if (!node.selectionSet) return SCALAR_COST;
    let items = 1;
    let connection = false;
    let childType = parentType;
    if (node.kind === Kind.FIELD) {
      const field = fieldOf(parentType, node.name.value);
      childType = field ? getNamedType(field.type) : undefined;
      ({ items, connection } = itemsOf(node, field));
    } else if (node.kind === Kind.INLINE_FRAGMENT && node.typeCondition) {
      childType = schema.getType(node.typeCondition.name.value) ?? undefined;
    }
    let total = OBJECT_COST;
    for (const child of node.selectionSet.selections) total += DEPTH_COST_FACTOR * cost(child, childType) * (items > 1 && (!connection || resolvedPerItem(child)) ? items : 1);
    return total;
  };

  return { cost: cost(operation, undefined), usesVariables };
}

/**
 * The cost estimate queryCostLimit computed for each operation it let through, keyed by the
 * execution arguments object envelop hands every later plugin's onExecute / onSubscribe (the same
 * object for all of them), so a later plugin (the per-credential rate limit,
 * src/graphql/rate-limit.ts) weighs the operation without estimating it again.
 */
const admittedCosts = new WeakMap<object, number>();

/**
 * The estimated cost (estimateOperationCost, fractional as armor's weights make it) of the
 * operation whose execution arguments are `args`, as queryCostLimit computed it in an earlier
 * plugin phase; undefined when queryCostLimit did not see it (it runs after this plugin, or the
 * document had no such operation).
 */
export function admittedOperationCost(args: object): number | undefined {
  return admittedCosts.get(args);
}

/**
 * Envelop plugin: refuses an execution or subscription (HTTP, SSE and WebSocket alike) whose
 * estimated cost (estimateOperationCost, with its variables) exceeds `maxCost`, with one
 * BAD_USER_INPUT error ("Query cost limit of N exceeded, found M.") and nothing run. The cost of
 * an operation it lets through is kept for later plugins: admittedOperationCost.
 */
export function queryCostLimit(maxCost: number): Plugin {
  // Per parsed document, per operation name ('' for none): the cost when it does not depend on variables.
  const memo = new WeakMap<DocumentNode, Map<string, number>>();
  const check = (args: { schema: GraphQLSchema; document: DocumentNode; operationName?: string | null; variableValues?: unknown }): GraphQLError | null => {
    const key = args.operationName ?? '';
    let cost = memo.get(args.document)?.get(key);
    if (cost === undefined) {
      const variables = typeof args.variableValues === 'object' && args.variableValues !== null ? (args.variableValues as Record<string, unknown>) : null;
      const estimate = estimateOperationCost(args.schema, args.document, args.operationName, variables);
      if (!estimate) return null;
      cost = estimate.cost;
      if (!estimate.usesVariables) {
        let byOperation = memo.get(args.document);
        if (!byOperation) memo.set(args.document, (byOperation = new Map()));
        byOperation.set(key, cost);
      }
    }
    if (cost <= maxCost) {
      admittedCosts.set(args, cost);
      return null;
    }
    return codedError('BAD_USER_INPUT', `Query cost limit of ${maxCost} exceeded, found ${cost}.`);
  };
  return {
    onExecute({ args, setResultAndStopExecution }) {
      const error = check(args);
      if (error) setResultAndStopExecution({ data: null, errors: [error] });
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      const error = check(args);
      if (error) setResultAndStopExecution({ data: null, errors: [error] });
    },
  };
}
