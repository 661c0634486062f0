/**
 * Prints the schema as SDL. `tsx src/graphql/print-schema.ts --write` updates
 * schema/schema.graphql (committed; a test fails when it is stale).
 */
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { lexicographicSortSchema, printSchema } from 'graphql';
import { schema } from './schema.js';

/** The SDL of the schema, sorted, as committed in schema/schema.graphql. */
export function printedSchema(): string {
  return `${printSchema(lexicographicSortSchema(schema))}\n`;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const sdl = printedSchema();
  if (process.argv.includes('--write')) {
    writeFileSync(new URL('../../schema/schema.graphql', import.meta.url), sdl);
    console.log('wrote schema/schema.graphql');
  } else process.stdout.write(sdl);
}
