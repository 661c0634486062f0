/**
 * An auto top-up whose charge was refunded before its job settled it, settled by a transaction
 * that PostgreSQL makes retry (a serialization failure, as a concurrent writer can cause): the
 * refund applied at settlement is logged once, for the attempt that committed, not once per
 * attempt (services/auto-top-up.ts recordOutcome). The failure is a real one: a trigger raises
 * SQLSTATE 40001 the first time the top-up is finished, counted by a sequence (which a rollback
 * does not undo).
 */
import { describe, expect, it } from 'vitest';
import pino from 'pino';
import { Writable } from 'node:stream';
import { processAutoTopUp } from '../../workers/processors/auto-top-up.js';
import { expectLedgerInvariant } from '../setup/invariant.js';
import { dbId, readAccount } from '../api/helpers.js';
import { billingWorkerDeps, topUps } from './billing-helpers.js';
import { intentAnswer, postStripeEvent } from './fake-stripe.js';
import { autoTopUpWithLostAnswer, hookUrl, newPi, refundEvent, useStripeServers } from './reversal-helpers.js';

const servers = useStripeServers();

describe('a kept refund applied by a settling transaction that is retried', () => {
  it('is logged once', async () => {
    const { srv } = servers.main;
    const { accountId, topUpId } = await autoTopUpWithLostAnswer(servers.main, servers.fake);
    const pi = newPi();
    const kept = await postStripeEvent(hookUrl(srv), refundEvent(pi, 200, {}, 200));
    expect([kept.status, kept.body.result]).toEqual([200, 'kept']);

    const suffix = topUpId.replace(/-/g, '');
    const seq = `retry_once_${suffix}`;
    const fn = `retry_once_fn_${suffix}`;
    const trigger = `retry_once_tr_${suffix}`;
    await srv.services.pool.query(`CREATE SEQUENCE ${seq}`);
    await srv.services.pool.query(`
      CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN
        IF NEW.id = '${topUpId}' AND NEW.status = 'SUCCEEDED' AND nextval('${seq}') = 1 THEN
          RAISE EXCEPTION 'test: retry this transaction once' USING ERRCODE = '40001';
        END IF;
        RETURN NEW;
      END $$`);
    await srv.services.pool.query(`CREATE TRIGGER ${trigger} BEFORE UPDATE ON auto_top_ups FOR EACH ROW EXECUTE FUNCTION ${fn}()`);
    try {
      const lines: { msg: string; eventId?: string }[] = [];
      const sink = new Writable({
        write(chunk, _enc, done) {
          for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line));
          done();
        },
      });
      const base = billingWorkerDeps(servers.main);
      const log = pino({ level: 'info' }, sink);
      const deps = { ...base, log, services: { ...base.services, log } };
      servers.fake.planned.push(intentAnswer('succeeded', pi, { amount: 200 }));
      await processAutoTopUp(deps, { id: `auto-top-up-${topUpId}`, name: 'auto-top-up', data: { topUpId, accountId: dbId(accountId) }, attemptsMade: 1, attempts: 3 });

      const { rows } = await srv.services.pool.query(`SELECT last_value::int AS n, is_called FROM ${seq}`);
      expect(rows[0]).toEqual({ n: 2, is_called: true }); // the trigger failed the first attempt; the second committed
      expect(await topUps(srv, accountId)).toMatchObject([{ status: 'SUCCEEDED' }]);
      const applied = lines.filter((l) => l.msg.includes('refunded or disputed before its payment was settled'));
      expect(applied).toHaveLength(1);
      expect((await readAccount(srv, accountId)).balance.paid).toBe('40');
      await expectLedgerInvariant(srv.services.pool, dbId(accountId));
    } finally {
      await srv.services.pool.query(`DROP TRIGGER ${trigger} ON auto_top_ups`);
      await srv.services.pool.query(`DROP FUNCTION ${fn}()`);
      await srv.services.pool.query(`DROP SEQUENCE ${seq}`);
    }
  });
});
