/**
 * `npm run workers`'s arguments (workers/main.ts imports this module first, so the answer does
 * not wait for the workers to load): none but `--help` / `-h`, which says what the command does
 * and exits 0. Anything else prints one line on stderr (what is wrong, the environment variable
 * an option like `--redis-url` spells, the usage) and exits 2 before the environment is read or
 * anything starts (src/util/command-args.ts). It used to ignore them.
 */
import { ENV_VARIABLE_NAMES } from '../src/config/env.js';
import { exitUnlessNoArguments } from '../src/util/command-args.js';

exitUnlessNoArguments(
  'workers',
  'usage: npm run workers [-- --help]',
  'Runs the BullMQ workers (expiries, billing periods, alerts, top-ups, webhook deliveries, the outbox relay) as their own process, ' +
    'on $DATABASE_URL and $REDIS_URL (settings: the environment, README "Running the service"); ' +
    'at start it gives up (exit 1) when Redis has not answered within WORKERS_REDIS_WAIT_MS, then rides out Redis outages.',
  ENV_VARIABLE_NAMES,
);
