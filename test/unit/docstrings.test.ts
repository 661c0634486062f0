/**
 * The project rule (README "Tests"): every exported function and type in src/ (but
 * src/generated/, which codegen writes) and workers/ has a docstring, a `/** ... *\/` block
 * directly before it. This test lists the top-level exports of those files with the TypeScript
 * compiler API and fails naming each `file:line name` that has none.
 *
 * Checked: exported functions, classes, interfaces, type aliases, enums, namespaces, variable
 * statements (`export const x = ...`), `export default ...`, and local declarations exported by
 * `export { a, b }`. Exempt: re-exports from another module (`export { a } from`,
 * `export * from`) and members of classes, interfaces and enums.
 *
 * "Directly before" means the last `/**` comment in the declaration's leading trivia, with no
 * blank line between it and the declaration (only whitespace or `//` comments), so a file header
 * separated by a blank line does not count. An empty `/** *\/` does not count either.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** One top-level export: its file (relative to the repository root, `/`-separated), 1-based line and name. */
interface ExportSite {
  file: string;
  line: number;
  name: string;
  documented: boolean;
}

/** Every `.ts` file under `dir` (recursively), skipping any directory whose root-relative path is in `skip`. */
function tsFiles(dir: string, skip: readonly string[]): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    const rel = relative(ROOT, path).split(sep).join('/');
    if (entry.isDirectory()) {
      if (!skip.includes(rel) && entry.name !== 'node_modules') out.push(...tsFiles(path, skip));
    } else if (entry.isFile() && entry.name.endsWith('.ts')) {
      out.push(path);
    }
  }
  return out.sort();
}

/** True when the node carries the `export` keyword among its modifiers. */
function isExported(node: ts.Node): boolean {
  return (
    ts.canHaveModifiers(node) && (ts.getModifiers(node) ?? []).some((m) => m.kind === ts.SyntaxKind.ExportKeyword)
  );
}

/**
 * True when a non-empty `/** ... *\/` comment stands directly before `node` (see the file
 * header for what "directly" allows).
 */
function hasDocstring(node: ts.Node, sf: ts.SourceFile): boolean {
  const text = sf.text;
  const ranges = ts.getLeadingCommentRanges(text, node.pos) ?? [];
  const docs = ranges.filter(
    (r) => r.kind === ts.SyntaxKind.MultiLineCommentTrivia && text.startsWith('/**', r.pos) && !text.startsWith('/**/', r.pos),
  );
  const last = docs.at(-1);
  if (last === undefined) return false;
  const body = text
    .slice(last.pos + 3, last.end - 2)
    .replace(/^\s*\*/gm, '')
    .trim();
  if (body === '') return false;
  // The whole lines between the comment and the declaration: none may be blank.
  const between = text.slice(last.end, node.getStart(sf)).split('\n').slice(1, -1);
  return between.every((l) => l.trim() !== '');
}

/** The top-level exports of one source file on disk, each with whether it has its docstring. */
function exportsOf(path: string): ExportSite[] {
  const sf = ts.createSourceFile(path, readFileSync(path, 'utf8'), ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  return exportsOfSource(sf, relative(ROOT, path).split(sep).join('/'));
}

/** The top-level exports of a parsed source file (parent pointers set), reported under the name `file`. */
function exportsOfSource(sf: ts.SourceFile, file: string): ExportSite[] {
  const out: ExportSite[] = [];
  const add = (node: ts.Node, name: string, docNode: ts.Node = node): void => {
    const line = sf.getLineAndCharacterOfPosition(node.getStart(sf)).line + 1;
    out.push({ file, line, name, documented: hasDocstring(docNode, sf) });
  };
  // Local declarations by name, for `export { a, b }` without a module specifier.
  const locals = new Map<string, ts.Node>();
  for (const st of sf.statements) {
    if (ts.isVariableStatement(st)) {
      for (const d of st.declarationList.declarations) if (ts.isIdentifier(d.name)) locals.set(d.name.text, st);
    } else if (
      (ts.isFunctionDeclaration(st) ||
        ts.isClassDeclaration(st) ||
        ts.isInterfaceDeclaration(st) ||
        ts.isTypeAliasDeclaration(st) ||
        ts.isEnumDeclaration(st)) &&
      st.name !== undefined &&
      !locals.has(st.name.text)
    ) {
      locals.set(st.name.text, st);
    }
  }
  const seenFunctions = new Set<string>();
  for (const st of sf.statements) {
    if (ts.isExportDeclaration(st)) {
      if (st.moduleSpecifier !== undefined) continue; // a re-export: exempt
      if (st.exportClause !== undefined && ts.isNamedExports(st.exportClause)) {
        for (const el of st.exportClause.elements) {
          const local = locals.get((el.propertyName ?? el.name).text);
          // Not found locally: an imported name passed on, i.e. a re-export.
          if (local !== undefined && !isExported(local)) add(local, el.name.text);
        }
      }
      continue;
    }
    if (ts.isExportAssignment(st)) {
      add(st, 'default');
      continue;
    }
    if (!isExported(st)) continue;
    if (ts.isVariableStatement(st)) {
      const names = st.declarationList.declarations.map((d) => d.name.getText(sf));
      add(st, names.join(', '));
    } else if (ts.isFunctionDeclaration(st)) {
      const name = st.name?.text ?? 'default';
      // Overloads: the docstring goes before the first signature.
      if (seenFunctions.has(name)) continue;
      seenFunctions.add(name);
      add(st, name);
    } else if (
      ts.isClassDeclaration(st) ||
      ts.isInterfaceDeclaration(st) ||
      ts.isTypeAliasDeclaration(st) ||
      ts.isEnumDeclaration(st) ||
      ts.isModuleDeclaration(st)
    ) {
      add(st, st.name?.getText(sf) ?? 'default');
    }
  }
  return out;
}

/** Every top-level export of src/ (but src/generated/) and workers/. */
function allExports(): ExportSite[] {
  const files = [...tsFiles(join(ROOT, 'src'), ['src/generated']), ...tsFiles(join(ROOT, 'workers'), [])];
  return files.flatMap(exportsOf);
}

describe('docstrings', () => {
  it('tells documented exports from undocumented ones and skips re-exports (the checker itself)', () => {
    const source = [
      'import { x } from "./x.js";',
      '/** Documented. */',
      'export function a(): void {}',
      'export function b(): void {}',
      '/** Header. */',
      '',
      'export const c = 1;',
      '/** */',
      'export type D = number;',
      'export interface E {}',
      'export { x } from "./x.js";',
      'export * from "./y.js";',
      'const f = 2;',
      'export { f };',
      'export default f;',
      '/** Documented. */',
      '// eslint-disable-next-line',
      'export class G { h(): void {} }',
      'export enum H { A }',
      '/**',
      ' * Overloaded: documented once, before the first signature.',
      ' */',
      'export function i(a: string): string;',
      'export function i(a: number): number;',
      'export function i(a: unknown): unknown { return a; }',
      '/** Both. */',
      'export const j = 1, k = 2;',
      '/** The processor. */',
      'export default async function (): Promise<void> {}',
      'export namespace L {}',
    ].join('\n');
    expect(scratchExports(source)).toEqual([
      'a documented',
      'b missing',
      'c missing',
      'D missing',
      'E missing',
      'f missing',
      'default missing',
      'G documented',
      'H missing',
      'i documented',
      'j, k documented',
      'default documented',
      'L missing',
    ]);
  });

  it('every exported function and type in src/ and workers/ has a docstring', () => {
    const sites = allExports();
    expect(sites.length).toBeGreaterThan(100);
    const missing = sites.filter((s) => !s.documented).map((s) => `${s.file}:${s.line} ${s.name}`);
    expect(missing, `exports without a /** docstring */:\n${missing.join('\n')}\n`).toEqual([]);
  });
});

/** Runs the checker over in-memory source: each export as `name documented|missing`, in order. */
function scratchExports(source: string): string[] {
  const sf = ts.createSourceFile('scratch.ts', source, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  return exportsOfSource(sf, 'scratch.ts').map((e) => `${e.name} ${e.documented ? 'documented' : 'missing'}`);
}
