/**
 * `npm run serve`'s arguments (src/main.ts imports this module first, so the answer does not wait
 * for the application to load): none but `--help` / `-h`, which says what the command does and
 * exits 0. Anything else prints one line on stderr (what is wrong, the environment variable an
 * option like `--port` spells, the usage) and exits 2 before the environment is read or anything
 * starts (src/util/command-args.ts). It used to ignore them: `npm run serve -- --port 5000`
 * started on the default port.
 */
import { ENV_VARIABLE_NAMES } from './config/env.js';
import { exitUnlessNoArguments } from './util/command-args.js';

exitUnlessNoArguments(
  'serve',
  'usage: npm run serve [-- --help]',
  'Runs the GraphQL API on $PORT (default 4000) over $DATABASE_URL and $REDIS_URL: applies pending migrations (MIGRATE_ON_BOOT), ' +
    'then serves, running the workers in-process unless RUN_WORKERS=false (settings: the environment, README "Running the service").',
  ENV_VARIABLE_NAMES,
);
