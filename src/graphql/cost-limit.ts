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
 * said when its page sizes are literals.
 *
 * Why not graphql-armor's own rule: it runs during validation, before variables exist, and
 * multiplies only by a `first` / `last` written as an integer literal. The same page size passed
 * as a variable (`usage(first: $n)`, the usual way to write a paginated query) counted as 1, so
 * `usageEvent { account { usage(first: $n) { edges { node { account { usage(first: $n) ... } } } } } }`
 * under 30 aliases asked for 30 x 500 x 500 events at the cost of a handful of fields
 * (test/api/errors.test.ts). Here a variable counts with the value the request gives it (or the
 * variable's default in the document), i.e. the page size the field will actually serve.
 * An argument left out still counts as 1, as in graphql-armor.
 *
 * Documents whose page sizes are all literals have one cost whatever the variables: it is
 * memoized per parsed document and operation name (yoga's parser cache hands the same
 * DocumentNode to repeated queries), so the charge path's `recordUsage { id cost }` pays one
 * WeakMap lookup.
 */
import {
  Kind,
  getOperationAST,
  type DocumentNode,
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

/** graphql-armor's default weights (costLimitDefaultOptions), kept so GRAPHQL_MAX_COST means what it meant. */
const OBJECT_COST = 2;
const SCALAR_COST = 1;
const DEPTH_COST_FACTOR = 1.5;

/**
 * True when `selection`, a child of a paginated field, is resolved once per item of the page:
 * a connection's `edges` and `nodes`, and inline fragments or fragment spreads (which may hold
 * them). `pageInfo`, `totalCount` and `__typename` are resolved once per connection.
 */
function resolvedPerItem(selection: FieldNode | InlineFragmentNode | FragmentSpreadNode): boolean {
  if (selection.kind !== Kind.FIELD) return true;
  return selection.name.value !== 'pageInfo' && selection.name.value !== 'totalCount' && selection.name.value !== '__typename';
}

/** The estimated cost of one operation, and whether it depended on variable values. */
interface CostEstimate {
  cost: number;
  /** True when some `first` / `last` was a variable: the cost holds for these variables only. */
  usesVariables: boolean;
}

/**
 * Estimates the cost of the operation `operationName` of `document` (see the module comment)
 * with `variableValues` as sent by the client (uncoerced JSON).
 * @returns the estimate, or null when the document has no such operation (graphql-js then
 *   answers that itself).
 */
export function estimateOperationCost(
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

  /** The page size a `first` / `last` argument asks for (armor: at least 1). */
  const pageSize = (value: ValueNode): number => {
    let v: ValueNode | undefined = value;
    if (value.kind === Kind.VARIABLE) {
      usesVariables = true;
      const given = variableValues?.[value.name.value];
      if (typeof given === 'number' && Number.isFinite(given)) return Math.max(Math.trunc(given), 1);
      if (given !== undefined) return 1; // null or not a number: no page size (coercion refuses the latter)
      v = defaults.get(value.name.value);
    }
    if (v?.kind !== Kind.INT) return 1;
    const n = parseInt(v.value, 10);
    return Number.isFinite(n) ? Math.max(n, 1) : 1;
  };

  const cost = (node: OperationDefinitionNode | FieldNode | InlineFragmentNode | FragmentSpreadNode | FragmentDefinitionNode): number => {
    if (node.kind === Kind.FIELD && node.name.value === '__schema') return 0; // introspection is not counted (armor's ignoreIntrospection)
    if (node.kind === Kind.OPERATION_DEFINITION) return node.selectionSet.selections.reduce((sum, child) => sum + cost(child), 0);
    if (node.kind === Kind.FRAGMENT_SPREAD) {
      const name = node.name.value;
      const known = visited.get(name);
      if (known !== undefined) return SCALAR_COST + DEPTH_COST_FACTOR * Math.max(known, 0);
      visited.set(name, -1);
      const fragment = fragments.get(name);
      if (!fragment) return SCALAR_COST;
      const fragmentCost = cost(fragment);
      visited.set(name, fragmentCost);
      return SCALAR_COST + DEPTH_COST_FACTOR * fragmentCost;
    }
    if (!node.selectionSet) return SCALAR_COST;
    let page = 1;
    if (node.kind === Kind.FIELD) {
      const arg = node.arguments?.find((a) => a.name.value === 'first' || a.name.value === 'last');
      if (arg) page = pageSize(arg.value);
    }
    let total = OBJECT_COST;
    for (const child of node.selectionSet.selections) total += DEPTH_COST_FACTOR * cost(child) * (page > 1 && resolvedPerItem(child) ? page : 1);
    return total;
  };

  return { cost: cost(operation), usesVariables };
}

/**
 * Envelop plugin: refuses an execution or subscription (HTTP, SSE and WebSocket alike) whose
 * estimated cost (estimateOperationCost, with its variables) exceeds `maxCost`, with one
 * BAD_USER_INPUT error ("Query cost limit of N exceeded, found M.") and nothing run.
 */
export function queryCostLimit(maxCost: number): Plugin {
  // Per parsed document, per operation name ('' for none): the cost when it does not depend on variables.
  const memo = new WeakMap<DocumentNode, Map<string, number>>();
  const check = (args: { document: DocumentNode; operationName?: string | null; variableValues?: unknown }): GraphQLError | null => {
    const key = args.operationName ?? '';
    let cost = memo.get(args.document)?.get(key);
    if (cost === undefined) {
      const variables = typeof args.variableValues === 'object' && args.variableValues !== null ? (args.variableValues as Record<string, unknown>) : null;
      const estimate = estimateOperationCost(args.document, args.operationName, variables);
      if (!estimate) return null;
      cost = estimate.cost;
      if (!estimate.usesVariables) {
        let byOperation = memo.get(args.document);
        if (!byOperation) memo.set(args.document, (byOperation = new Map()));
        byOperation.set(key, cost);
      }
    }
    if (cost <= maxCost) return null;
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
