/**
 * Test data factories: accounts with known credit, built through the real services.
 */
import { randomUUID } from 'node:crypto';
import { createAccount } from '../../src/services/create-account.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits } from '../../src/ledger/credits.js';
import type { ServiceContext } from '../../src/services/context.js';

/** Creates an ORGANIZATION account without welcome bonus (on a test clock if given), then grants the given whole credits. */
export async function createFundedAccount(
  services: ServiceContext,
  opts: {
    free?: number;
    paid?: number;
    freeExpiresAt?: Date | null;
    kind?: 'ORGANIZATION' | 'USER';
    externalId?: string;
    /** A test-mode account whose clock starts here (every rule of the account reads it). */
    testClockStart?: Date;
  } = {},
): Promise<string> {
  const { accountId } = await createAccount(services, {
    externalId: opts.externalId ?? `test-${randomUUID()}`,
    name: 'Test account',
    kind: opts.kind ?? 'ORGANIZATION',
    welcomeBonus: false,
    testMode: opts.testClockStart !== undefined,
    testClockStart: opts.testClockStart ?? null,
  });
  const grants = [
    { whole: opts.free, type: 'FREE' as const, source: 'PROMO_CODE' as const, expiresAt: opts.freeExpiresAt ?? null },
    { whole: opts.paid, type: 'PAID' as const, source: 'PURCHASE' as const, expiresAt: null },
  ];
  for (const g of grants) {
    if (!g.whole) continue;
    await grantCredits(services, {
      accountId,
      amountMicroCredits: credits(g.whole),
      type: g.type,
      source: g.source,
      expiresAt: g.expiresAt,
      reference: null,
      idempotencyKey: `factory-${g.type.toLowerCase()}`,
    });
  }
  return accountId;
}
