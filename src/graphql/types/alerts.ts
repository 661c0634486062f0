/**
 * GraphQL node `CreditAlert` (contract) and `Account.alerts`, backed by the Prisma model
 * CreditAlert; ids are Relay global ids.
 */
import { builder } from '../builder.js';
import { newestFirstRows, toGlobalId } from '../ids.js';
import { ACCOUNT_DATA } from './ledger.js';

/** GraphQL node `CreditAlert`: a threshold of percentRemaining reached (once per threshold per period). */
export const CreditAlertRef = builder.prismaNode('CreditAlert', {
  authScopes: ACCOUNT_DATA,
  id: { field: 'id', skipTypeScopes: true }, // an id tells nothing (CreditBatch)
  fields: (t) => ({
    accountId: t.id({ resolve: (a) => toGlobalId('Account', a.accountId) }),
    threshold: t.exposeInt('threshold', { description: 'The threshold crossed: 25, 15 or 0 by default.' }),
    percentRemaining: t.exposeFloat('percentRemaining'),
    available: t.field({ type: 'Credits', resolve: (a) => a.availableMicroCredits }),
    periodStart: t.field({ type: 'DateTime', resolve: (a) => a.periodStart }),
    createdAt: t.field({ type: 'DateTime', resolve: (a) => a.createdAt }),
  }),
});

builder.prismaObjectField('Account', 'alerts', (t) =>
  t.relatedConnection(
    'alerts',
    {
      cursor: 'id',
      maxSize: 100,
      description: 'Credit alerts raised for this account, newest first.',
      query: newestFirstRows('alerts'),
    },
    { name: 'CreditAlertConnection' },
    { name: 'CreditAlertEdge' },
  ),
);
