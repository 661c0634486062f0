/**
 * Test data factories: accounts with known credit, built through the real services.
 */
import { randomUUID } from 'node:crypto';
import { createAccount } from '../../src/services/create-account.js';
import { grantCredits } from '../../src/services/grant-credits.js';
import { credits } from '../../src/ledger/credits.js';
import type { ServiceContext } from '../../src/services/context.js';

/** Creates an ORGANIZATION account without welcome bonus, then grants the given whole credits. */
export async function createFundedAccount(
  services: ServiceContext,
  opts: { free?: number; paid?: number; freeExpiresAt?: Date | null; kind?: 'ORGANIZATION' | 'USER'; externalId?: string } = {},
): Promise<string> {
  const { accountId } = await createAccount(services, {
    externalId: opts.externalId ?? `test-${randomUUID()}`,
    name: 'Test account',
    kind: opts.kind ?? 'ORGANIZATION',
    welcomeBonus: false,
    testMode: false,
    testClockStart: null,
  });
  if (opts.free) {
    await grantCredits(services, {
      accountId,
      amountMicroCredits: credits(opts.free),
      type: 'FREE',
      source: 'PROMO_CODE',
      expiresAt: opts.freeExpiresAt ?? null,
      reference: null,
      idempotencyKey: 'factory-free',
    });
  }
  if (opts.paid) {
    await grantCredits(services, {
      accountId,
      amountMicroCredits: credits(opts.paid),
      type: 'PAID',
      source: 'PURCHASE',
      expiresAt: null,
      reference: null,
      idempotencyKey: 'factory-paid',
    });
  }
  return accountId;
}
