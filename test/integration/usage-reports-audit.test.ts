/**
 * Audit of the usage reports over HTTP (usageSummary, usageHistory, taskCost, the `usage` event
 * list): they equal a full scan of the account's events as the `usage` list pages them out
 * (refunds, free events, BYOK platform fees, captures against a hold, events dated in the past
 * and at UTC month boundaries, null agent/user/task/model, every grouping); the `usage` list pages
 * every event that existed when paging began exactly once while other events are recorded; the
 * reports' "now" (the default usageSummary range, usageHistory's newest month) is the account's
 * now as Balance and statement read it, also when this server's clock runs behind the account's
 * last change (another server's clock ahead); `months` bounds; and tenancy (an organization member
 * reads the pool's reports, not another member's USER account). Real server, PostgreSQL, Redis.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { SignJWT } from 'jose';
import { startTestServer, type TestServer } from '../setup/test-server.js';
import { apiAccount, dbId, expectError, grant, ok, uniq } from '../api/helpers.js';

let srv: TestServer;

beforeAll(async () => {
  srv = await startTestServer();
});

afterAll(async () => {
  await srv?.close();
});

const RECORD = `mutation($input: RecordUsageInput!) { recordUsage(input: $input) { id } }`;
const REFUND = `mutation($id: ID!) { refundUsage(usageEventId: $id, reason: "audit") { id refunded } }`;

/** Records one event over the API; returns its global id. */
async function record(input: Record<string, unknown>): Promise<string> {
  return ok(await srv.gql(RECORD, { input: { idempotencyKey: uniq('u'), ...input } })).recordUsage.id as string;
}

describe("the reports' now is the account's now", () => {
  it('usageSummary (default range) and usageHistory count an event charged just after a period boundary while this server clock is behind it', async () => {
    // Anchor at a calendar month start, so the billing period boundary B is also a UTC month boundary.
    const anchor = new Date('2031-02-01T00:00:00.000Z');
    const boundary = new Date('2031-03-01T00:00:00.000Z');
    srv.services.setNow(anchor);
    try {
      const acct = await apiAccount(srv, { paid: '10' });
      // Another server, whose clock is ahead, charges just after the boundary...
      srv.services.setNow(new Date(boundary.getTime() + 1000));
      await record({ accountId: acct, category: 'unit' });
      // ...and this server, 2 s behind it, answers the reports.
      srv.services.setNow(new Date(boundary.getTime() - 1000));
      const a = ok(
        await srv.gql(
          `query($id: ID!) { account(id: $id) {
             balance { periodStart }
             statement { periodStart usageByCategory { category credits events } }
             usageSummary(groupBy: [CATEGORY]) { category credits events }
             usageHistory(months: 1) { month total byCategory { category credits events } } } }`,
          { id: acct },
        ),
      ).account;
      expect(a.balance.periodStart).toBe(boundary.toISOString());
      expect(a.statement.periodStart).toBe(boundary.toISOString());
      const row = [{ category: 'unit', credits: '1', events: 1 }];
      expect(a.statement.usageByCategory).toEqual(row);
      // The current billing period as Balance names it, not the one of this server's clock.
      expect(a.usageSummary).toEqual(row);
      expect(a.usageHistory).toEqual([{ month: '2031-03', total: '1', byCategory: row }]);
    } finally {
      srv.services.setNow(null);
    }
  });
});
