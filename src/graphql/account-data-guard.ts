/**
 * Refuses, before anything runs, an operation whose selection reaches account-wide data that the
 * caller may not read (src/graphql/access.ts): a service key without the `read` scope that asks
 * a mutation's result for e.g. `recordUsage { account { balance { total } } }` or
 * `grantCredits { batch { remaining } }` gets one FORBIDDEN error and `data: null`, and the
 * mutation is not executed, so the refusal changes nothing (contract: a failed mutation changes
 * nothing). Without this check the same rule would still hold field by field (the types' auth
 * scopes, enforced by Pothos scope-auth at resolve time), but only after the mutation had run.
 *
 * Which fields need account data is read from the schema itself: a field whose type-level
 * `authScopes` (Pothos) include `accountData` and that does not `skipTypeScopes`, or whose own
 * `authScopes` include it; on an interface or union, on any type it may resolve to. The walk
 * covers the operation that runs and the fragments it spreads (conservatively, including
 * selections skipped by @include/@skip). Its answer depends on the document and the operation
 * name only, so it is memoized per parsed document and operation (yoga's parser cache hands the
 * same DocumentNode to repeated queries): on the hot path (`recordUsage { id cost }` from a usage:write key) the check
 * is one WeakMap lookup and never reads the database.
 */
import {
  Kind,
  TypeInfo,
  getOperationAST,
  isAbstractType,
  isObjectType,
  visit,
  visitWithTypeInfo,
  type ASTNode,
  type DocumentNode,
  type FragmentDefinitionNode,
  type GraphQLField,
  type GraphQLNamedType,
  type GraphQLSchema,
  GraphQLError,
} from 'graphql';
import type { Plugin } from 'graphql-yoga';
import { canReadAccountData } from './access.js';
import { codedError } from './errors.js';
import type { GraphQLContext } from './context.js';

/** True when a Pothos `authScopes` option (object form) requires the accountData scope. */
function requiresAccountData(authScopes: unknown): boolean {
  return typeof authScopes === 'object' && authScopes !== null && (authScopes as { accountData?: unknown }).accountData === true;
}

/** The Pothos options kept in a type's or field's extensions (pothosOptions), or {}. */
function pothosOptions(node: { extensions?: unknown }): Record<string, unknown> {
  const ext = node.extensions as { pothosOptions?: Record<string, unknown> } | null | undefined;
  return ext?.pothosOptions ?? {};
}

/**
 * True when reading `field` of `parentType` needs the accountData scope: the field's own
 * authScopes require it, or the type's do and the field does not skip type scopes.
 */
function fieldNeedsAccountData(parentType: GraphQLNamedType, field: GraphQLField<unknown, unknown>): boolean {
  const fieldOptions = pothosOptions(field);
  if (requiresAccountData(fieldOptions['authScopes'])) return true;
  return requiresAccountData(pothosOptions(parentType)['authScopes']) && fieldOptions['skipTypeScopes'] !== true;
}

/**
 * `Type.field` when selecting `fieldName` on `parent` needs account data on `parent` or, for an
 * interface or union (`... on Node { id }`), on any object type it may resolve to; else null.
 * Meta fields (`__typename`) never do.
 */
function accountDataAt(schema: GraphQLSchema, parent: GraphQLNamedType, fieldName: string): string | null {
  if (fieldName.startsWith('__')) return null;
  const candidates = isAbstractType(parent) ? schema.getPossibleTypes(parent) : isObjectType(parent) ? [parent] : [];
  for (const type of candidates) {
    const field = type.getFields()[fieldName];
    if (field && fieldNeedsAccountData(type, field)) return `${type.name}.${fieldName}`;
  }
  return null;
}

/**
 * The first field (`Type.field`) that needs account data in the operation of `document` that
 * would run (`operationName`, or the document's only operation) and the fragments it spreads,
 * directly or through other fragments; null when none does (or when no operation matches: yoga
 * refuses that itself). Fields the schema does not know are left to validation (which runs
 * before this). Other operations of the document are not looked at: they do not run.
 */
function firstAccountDataField(schema: GraphQLSchema, document: DocumentNode, operationName?: string | null): string | null {
  const operation = getOperationAST(document, operationName ?? undefined);
  if (!operation) return null;
  const fragments = new Map<string, FragmentDefinitionNode>();
  for (const d of document.definitions) if (d.kind === Kind.FRAGMENT_DEFINITION) fragments.set(d.name.value, d);
  const pending: ASTNode[] = [operation];
  const seen = new Set<string>();
  let found: string | null = null;
  while (pending.length > 0 && found === null) {
    const typeInfo = new TypeInfo(schema);
    visit(
      pending.pop()!,
      visitWithTypeInfo(typeInfo, {
        Field(node) {
          if (found) return false;
          const parent = typeInfo.getParentType();
          if (parent) found = accountDataAt(schema, parent, node.name.value);
          return undefined;
        },
        FragmentSpread(node) {
          const fragment = fragments.get(node.name.value);
          if (fragment && !seen.has(node.name.value)) {
            seen.add(node.name.value);
            pending.push(fragment);
          }
        },
      }),
    );
  }
  return found;
}

/**
 * The envelop plugin: for a caller without account-data access (canReadAccountData false, i.e. a
 * service key without `read`; anonymous callers are refused by the fields' own scopes), an
 * execution or subscription whose document selects account data ends before it starts with
 * FORBIDDEN. Runs over HTTP, SSE and WebSocket alike (the WebSocket path uses yoga's envelop).
 */
export function accountDataGuard(): Plugin<GraphQLContext> {
  // Per parsed document, per operation name ('' for none).
  const memo = new WeakMap<DocumentNode, Map<string, string | null>>();
  const refusal = (schema: GraphQLSchema, document: DocumentNode, operationName: string | null | undefined, context: GraphQLContext): GraphQLError | null => {
    if (!context.principal || canReadAccountData(context.principal)) return null;
    let byOperation = memo.get(document);
    if (!byOperation) memo.set(document, (byOperation = new Map()));
    let field = byOperation.get(operationName ?? '');
    if (field === undefined) {
      field = firstAccountDataField(schema, document, operationName);
      byOperation.set(operationName ?? '', field);
    }
    if (field === null) return null;
    return codedError('FORBIDDEN', `This credential may not read account data (${field}): that needs an API key with the read scope.`);
  };
  return {
    onExecute({ args, setResultAndStopExecution }) {
      const error = refusal(args.schema, args.document, args.operationName, args.contextValue as GraphQLContext);
      if (error) setResultAndStopExecution({ data: null, errors: [error] });
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      const error = refusal(args.schema, args.document, args.operationName, args.contextValue as GraphQLContext);
      if (error) setResultAndStopExecution({ data: null, errors: [error] });
    },
  };
}
