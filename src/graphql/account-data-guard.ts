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
 * `authScopes` include it. The walk covers every operation and fragment of the document
 * (conservatively, including ones skipped by @include/@skip). Its answer depends on the document
 * only, so it is memoized per parsed document (yoga's parser cache hands the same DocumentNode to
 * repeated queries): on the hot path (`recordUsage { id cost }` from a usage:write key) the check
 * is one WeakMap lookup and never reads the database.
 */
import {
  TypeInfo,
  visit,
  visitWithTypeInfo,
  type DocumentNode,
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
export function fieldNeedsAccountData(parentType: GraphQLNamedType, field: GraphQLField<unknown, unknown>): boolean {
  const fieldOptions = pothosOptions(field);
  if (requiresAccountData(fieldOptions['authScopes'])) return true;
  return requiresAccountData(pothosOptions(parentType)['authScopes']) && fieldOptions['skipTypeScopes'] !== true;
}

/**
 * The first field (`Type.field`) of `document` that needs account data, or null when none does.
 * Fields the schema does not know are left to validation (which runs before this).
 */
export function firstAccountDataField(schema: GraphQLSchema, document: DocumentNode): string | null {
  const typeInfo = new TypeInfo(schema);
  let found: string | null = null;
  visit(
    document,
    visitWithTypeInfo(typeInfo, {
      Field() {
        if (found) return false;
        const parent = typeInfo.getParentType();
        const field = typeInfo.getFieldDef();
        if (parent && field && fieldNeedsAccountData(parent, field)) found = `${parent.name}.${field.name}`;
        return undefined;
      },
    }),
  );
  return found;
}

/**
 * The envelop plugin: for a caller without account-data access (canReadAccountData false, i.e. a
 * service key without `read`; anonymous callers are refused by the fields' own scopes), an
 * execution or subscription whose document selects account data ends before it starts with
 * FORBIDDEN. Runs over HTTP, SSE and WebSocket alike (the WebSocket path uses yoga's envelop).
 */
export function accountDataGuard(): Plugin<GraphQLContext> {
  const memo = new WeakMap<DocumentNode, string | null>();
  const refusal = (schema: GraphQLSchema, document: DocumentNode, context: GraphQLContext): GraphQLError | null => {
    if (!context.principal || canReadAccountData(context.principal)) return null;
    let field = memo.get(document);
    if (field === undefined) {
      field = firstAccountDataField(schema, document);
      memo.set(document, field);
    }
    if (field === null) return null;
    return codedError('FORBIDDEN', `This credential may not read account data (${field}): that needs an API key with the read scope.`);
  };
  return {
    onExecute({ args, setResultAndStopExecution }) {
      const error = refusal(args.schema, args.document, args.contextValue as GraphQLContext);
      if (error) setResultAndStopExecution({ data: null, errors: [error] });
    },
    onSubscribe({ args, setResultAndStopExecution }) {
      const error = refusal(args.schema, args.document, args.contextValue as GraphQLContext);
      if (error) setResultAndStopExecution({ data: null, errors: [error] });
    },
  };
}
