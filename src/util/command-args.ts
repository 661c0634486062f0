/**
 * Arguments of the long-running commands that take none but `--help`: `npm run serve`
 * (src/main.ts) and `npm run workers` (workers/main.ts). Their settings come from the environment
 * (src/config/env.ts); they used to ignore their arguments, so a `npm run serve -- --port 5000`
 * started on the default port as if nothing was said. Now anything but `--help` / `-h` is refused
 * the way the operator commands refuse a wrong option (scripts/*.ts, prisma/seed.ts): what is
 * wrong on stderr, exit {@link USAGE_ERROR_EXIT_CODE}, before the environment is read or anything
 * is started. It imports nothing and sits in src/util, so both entry points can use it.
 */

/** Exit code of every operator command on a usage error (nothing read or changed): the shells' convention for misuse. */
export const USAGE_ERROR_EXIT_CODE = 2;

const FROM_ENVIRONMENT = 'its settings come from the environment (README "Running the service")';

/** What {@link checkNoArguments} found. */
export type NoArgumentsOutcome =
  | { kind: 'run' }
  | { kind: 'help' }
  /** `message`: the one line to print on stderr (what is wrong, a hint, the usage). */
  | { kind: 'usage-error'; message: string };

/**
 * Decides what a command that takes no arguments but `--help` does with `args`.
 *
 * @param command the command's name as the operator types it after `npm run` (`serve`, `workers`),
 *   which starts the message
 * @param usage the usage, one line without a trailing newline (`usage: npm run serve [-- --help]`)
 * @param args the arguments (process.argv.slice(2))
 * @param settingNames the environment variables the command reads (src/config/env.ts
 *   ENV_VARIABLE_NAMES): an option spelling one of them (`--port 5000`, `--redis-url=...`) gets a
 *   hint naming the variable (`PORT=<value> npm run serve`; an option's value is never repeated,
 *   it may be a secret)
 * @returns `run` when `args` is empty, `help` when it holds only `--help` / `-h`, else
 *   `usage-error` naming the first other argument, in one line.
 */
export function checkNoArguments(command: string, usage: string, args: readonly string[], settingNames: readonly string[] = []): NoArgumentsOutcome {
  const isHelp = (a: string) => a === '--help' || a === '-h';
  // As node:util parseArgs in strict mode (the other commands): a wrong argument is refused even next to --help.
  const first = args.find((a) => !isHelp(a));
  if (first === undefined) return { kind: args.length > 0 ? 'help' : 'run' };
  const option = /^--?([^=]+)/.exec(first);
  if (!option || first === '--') {
    return { kind: 'usage-error', message: `${command}: takes no arguments, got "${first}": ${FROM_ENVIRONMENT}; ${usage}` };
  }
  // The option's value is never echoed: it may be a secret (`--admin-api-key ...`, a URL with a password).
  const variable = option[1]!.replaceAll('-', '_').toUpperCase();
  const hint = settingNames.includes(variable)
    ? `set ${variable} in the environment instead (${variable}=<value> npm run ${command})`
    : FROM_ENVIRONMENT;
  return { kind: 'usage-error', message: `${command}: unknown option ${first.split('=')[0]!}: ${hint}; ${usage}` };
}

/**
 * The entry points' use of {@link checkNoArguments} on process.argv: returns when there are no
 * arguments; prints `help` and `usage` on stdout and exits 0 for `--help`; prints the one-line
 * usage error on stderr and exits {@link USAGE_ERROR_EXIT_CODE} otherwise.
 * Called from a module the entry point imports first (src/main-arguments.ts,
 * workers/main-arguments.ts), so that an answer does not wait for the whole application to load
 * (seconds under tsx on a busy machine).
 */
export function exitUnlessNoArguments(command: string, usage: string, help: string, settingNames: readonly string[]): void {
  const outcome = checkNoArguments(command, usage, process.argv.slice(2), settingNames);
  if (outcome.kind === 'help') {
    console.log(`${help}\n${usage}`);
    process.exit(0);
  }
  if (outcome.kind === 'usage-error') {
    console.error(outcome.message);
    process.exit(USAGE_ERROR_EXIT_CODE);
  }
}
