/**
 * Assembles the GraphQL schema from the type modules (import order matters only for side
 * effects: every module registers its types into the builder).
 */
import { builder } from './builder.js';
import './scalars.js';
import './types/enums.js';
import './types/ledger.js';
import './types/account.js';
import './types/pricing.js';
import './inputs.js';
import './queries.js';
import './mutations.js';
import './growth.js';
import './types/alerts.js';
import './subscriptions.js';
import './plans.js';
import './billing.js';
import './audit.js';
import './statements.js';

/** The executable schema. */
export const schema = builder.toSchema({ sortSchema: false });
