/**
 * Module hooks of the ledger-stub server (bench/perf/ledger-stub/main.ts): when the GraphQL
 * mutations (src/graphql/mutations.ts) import the charge services
 * (`../services/record-usage.js`), they get bench/perf/ledger-stub/record-usage.ts instead. Every
 * other import, of the mutations and of every other module, resolves as usual, so the rest of the
 * server is the product's code. Node's module customization hooks (node:module `register`;
 * https://nodejs.org/docs/latest-v20.x/api/module.html#customization-hooks), chained before tsx's.
 */
let stubUrl = '';

/** Receives the stub's URL from `register(…, { data: { stubUrl } })`. */
export function initialize(data) {
  stubUrl = data.stubUrl;
}

/** Redirects the mutations' import of the charge services to the stub; passes everything else on. */
export async function resolve(specifier, context, nextResolve) {
  if (specifier === '../services/record-usage.js' && /\/src\/graphql\/mutations\.(ts|js)$/.test(context.parentURL ?? '')) {
    // Resolved by the next hooks (tsx's), so that tsx also loads (compiles) the stub.
    return nextResolve(stubUrl, context);
  }
  return nextResolve(specifier, context);
}
