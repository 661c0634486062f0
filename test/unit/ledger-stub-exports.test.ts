/**
 * The perf bench's ledger-stub server (bench/perf/ledger-stub) hands src/graphql/mutations.ts
 * bench/perf/ledger-stub/record-usage.ts in place of src/services/record-usage.ts. A name the
 * resolvers import that the stub lacks makes the stub server fail at start, and with it every
 * full perf run (it happened when the resolvers began importing assertBatchSize).
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

describe('the ledger stub', () => {
  it('exports every value mutations.ts imports from services/record-usage.js', async () => {
    const source = readFileSync(new URL('../../src/graphql/mutations.ts', import.meta.url), 'utf8');
    const clause = /import \{([^}]*)\} from '\.\.\/services\/record-usage\.js';/.exec(source);
    expect(clause, 'mutations.ts imports from ../services/record-usage.js').not.toBeNull();
    const names = clause![1]!
      .split(',')
      .map((n) => n.trim())
      .filter((n) => n !== '' && !n.startsWith('type '));
    expect(names).toContain('recordUsage');
    const stub = (await import('../../bench/perf/ledger-stub/record-usage.js')) as Record<string, unknown>;
    expect(names.filter((n) => typeof stub[n] !== 'function')).toEqual([]);
  });
});
