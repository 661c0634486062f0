/**
 * Mutation fields. Each resolver checks scopes, translates input, calls ONE service (one
 * transaction), then loads the result for the response. Resolvers never write themselves.
 * The charge resolvers (recordUsage, recordUsageBatch, settleReservation) count each usage event's
 * outcome for GET /metrics (ctx.usageOutcomes, metrics/usage-outcomes.ts) once it is known.
 */
import { singleLine } from '../ledger/text-input.js';
import { builder } from './builder.js';
import { CAPPED_LIST_COST_ITEMS, listSizedBy } from './cost-limit.js';
import { decodeId } from './ids.js';
import {
  CreateAccountInputRef,
  GrantCreditsInputRef,
  PriceBookInputRef,
  RecordUsageInputRef,
  ReserveCreditsInputRef,
  SettingsInputRef,
  SettleReservationInputRef,
  toPriceBookInput,
  toUsageInput,
} from './inputs.js';
import { AccountRef } from './types/account.js';
import { CreditGrantRef, ReservationRef, UsageEventRef } from './types/ledger.js';
import { PriceBookRef, SettingsRef } from './types/pricing.js';
import { createAccount } from '../services/create-account.js';
import { grantCredits } from '../services/grant-credits.js';
import { voidGrant } from '../services/void-grant.js';
import { assertBatchSize, recordUsage, recordUsageBatch } from '../services/record-usage.js';
import { MAX_RESERVATION_TTL_SECONDS, reserveCredits } from '../services/reserve-credits.js';
import { settleReservation } from '../services/settle-reservation.js';
import { releaseReservation } from '../services/release-reservation.js';
import { extendReservation } from '../services/extend-reservation.js';
import { refundUsage } from '../services/refund-usage.js';
import { publishPriceBook } from '../services/publish-price-book.js';
import { updateSettings } from '../services/update-settings.js';
import { LedgerError } from '../ledger/errors.js';
import { maskError } from './errors.js';
import { formatCredits } from '../ledger/credits.js';
import { validateIdempotencyKey } from '../services/usage-command.js';
import type { UsageEvent } from '../generated/prisma/client.js';
import { reservationFromRow } from '../db/reservation-row.js';
import { usageEventFromRow } from '../db/usage-event-row.js';
import { usageOutcomeOf } from '../metrics/usage-outcomes.js';

/** One item of recordUsageBatch: the event, or why it was refused. */
interface BatchResultShape {
  event: UsageEvent | null;
  errorCode: string | null;
  errorMessage: string | null;
}

const RecordUsageResultRef = builder.objectRef<BatchResultShape>('RecordUsageResult').implement({
  fields: (t) => ({
    event: t.field({ type: UsageEventRef, nullable: true, resolve: (r) => r.event }),
    errorCode: t.exposeString('errorCode', { nullable: true, description: 'Set instead of event when this item failed: its error code, e.g. INSUFFICIENT_CREDITS.' }),
    errorMessage: t.exposeString('errorMessage', { nullable: true }),
  }),
});

const optCredits = (v: bigint | null | undefined) => (v === null || v === undefined ? undefined : formatCredits(v));

builder.mutationType({
  fields: (t) => ({
    createAccount: t.prismaField({
      type: AccountRef,
      authScopes: { creditsWrite: true },
      args: { input: t.arg({ type: CreateAccountInputRef, required: true }) },
      resolve: async (query, _root, { input }, ctx) => {
        const { accountId } = await createAccount(ctx.services, {
          externalId: input.externalId,
          name: input.name,
          kind: input.kind,
          welcomeBonus: input.welcomeBonus ?? true,
          testMode: input.testMode ?? false,
          testClockStart: input.testClockStart ?? null,
        });
        return ctx.prisma.account.findUniqueOrThrow({ ...query, where: { id: accountId } });
      },
    }),
    grantCredits: t.prismaField({
      type: CreditGrantRef,
      authScopes: { creditsWrite: true },
      args: { input: t.arg({ type: GrantCreditsInputRef, required: true }) },
      resolve: async (query, _root, { input }, ctx) => {
        if (input.reference != null && input.reference.length > 500) throw new LedgerError('BAD_USER_INPUT', 'reference: at most 500 characters');
        if (input.reference != null) singleLine(input.reference, 'reference');
        const { grantId } = await grantCredits(ctx.services, {
          accountId: decodeId(String(input.accountId), 'Account', 'account'),
          amountMicroCredits: input.amount,
          type: input.type,
          source: input.source,
          expiresAt: input.expiresAt ?? null,
          reference: input.reference ?? null,
          idempotencyKey: validateIdempotencyKey(input.idempotencyKey),
        });
        return ctx.prisma.creditGrant.findUniqueOrThrow({ ...query, where: { id: grantId } });
      },
    }),
    voidGrant: t.prismaField({
      type: CreditGrantRef,
      authScopes: { creditsWrite: true },
      args: { grantId: t.arg.id({ required: true }), reason: t.arg.string({ required: true }) },
      resolve: async (query, _root, args, ctx) => {
        const id = await voidGrant(ctx.services, decodeId(String(args.grantId), 'CreditGrant', 'grant'), args.reason);
        return ctx.prisma.creditGrant.findUniqueOrThrow({ ...query, where: { id } });
      },
    }),
    recordUsage: t.prismaField({
      type: UsageEventRef,
      authScopes: { usageWrite: true },
      args: { input: t.arg({ type: RecordUsageInputRef, required: true }) },
      resolve: async (query, _root, { input }, ctx) => {
        let charged;
        try {
          charged = await recordUsage(ctx.services, toUsageInput(input));
        } catch (error) {
          ctx.usageOutcomes.count(usageOutcomeOf(error));
          throw error;
        }
        const { eventId, replayed, row } = charged;
        ctx.usageOutcomes.count(replayed ? 'replayed' : 'recorded');
        // A new event is answered from the row its INSERT returned (relations the selection asks
        // for are loaded by the Prisma plugin); a replay reads the stored event.
        if (row) return usageEventFromRow(row);
        return ctx.prisma.usageEvent.findUniqueOrThrow({ ...query, where: { id: eventId } });
      },
    }),
    recordUsageBatch: t.field({
      type: [RecordUsageResultRef],
      description: 'Bulk ingestion: each item succeeds or fails on its own.',
      authScopes: { usageWrite: true },
      args: { inputs: t.arg({ type: [RecordUsageInputRef], required: true }) },
      // One result per input: the estimate counts the inputs sent, at most CAPPED_LIST_COST_ITEMS
      // (a weight, as for a capped list: the results are answered from the rows the call wrote,
      // so a batch of 1,000 with its events' fields fits the default limit, while a page nested
      // under every result still multiplies by 100 and is refused).
      extensions: listSizedBy('inputs', CAPPED_LIST_COST_ITEMS),
      resolve: async (_root, args, ctx) => {
        let decoded: ({ ok: true; input: ReturnType<typeof toUsageInput> } | { ok: false; error: unknown })[];
        let results: Awaited<ReturnType<typeof recordUsageBatch>>;
        try {
          // The cap counts every item sent, also those refused below for an id that cannot be read.
          assertBatchSize(args.inputs.length, ctx.env.MAX_BATCH_ITEMS);
          decoded = args.inputs.map((i) => {
            try {
              return { ok: true as const, input: toUsageInput(i) };
            } catch (error) {
              return { ok: false as const, error };
            }
          });
          const valid = decoded.flatMap((d) => (d.ok ? [d.input] : []));
          results = await recordUsageBatch(ctx.services, valid, { maxItems: ctx.env.MAX_BATCH_ITEMS, concurrency: 4 });
        } catch (error) {
          // The whole batch refused (too many items) or failed: every item it carried has that outcome.
          ctx.usageOutcomes.count(usageOutcomeOf(error), args.inputs.length);
          throw error;
        }
        for (const d of decoded) if (!d.ok) ctx.usageOutcomes.count(usageOutcomeOf(d.error));
        for (const r of results) ctx.usageOutcomes.count(r.ok ? (r.result.replayed ? 'replayed' : 'recorded') : usageOutcomeOf(r.error));
        const events = new Map<string, UsageEvent>();
        for (const r of results) if (r.ok && r.result.row) events.set(r.result.eventId, usageEventFromRow(r.result.row));
        const replayedIds = results.flatMap((r) => (r.ok && !r.result.row ? [r.result.eventId] : []));
        if (replayedIds.length > 0) for (const e of await ctx.prisma.usageEvent.findMany({ where: { id: { in: replayedIds } } })) events.set(e.id, e);
        let k = 0;
        let unavailableLogged = false; // one warning per request, not one per item
        return decoded.map((d): BatchResultShape => {
          const r = d.ok ? results[k++]! : { ok: false as const, error: d.error };
          if (r.ok) return { event: events.get(r.result.eventId) ?? null, errorCode: null, errorMessage: null };
          // Each item's error as maskError answers a whole request (a refusal keeps its code, a
          // public visitor's billing refusal reads UNAVAILABLE, a database failure is UNAVAILABLE and
          // no bug, anything else is masked), logged once per request for a database failure.
          const masked = maskError(r.error, ctx.requestId, (err) => ctx.log.error({ err, requestId: ctx.requestId }, 'recordUsageBatch item failed unexpectedly'), {
            publicAudience: ctx.publicAudience,
            onNeutralized: (e) => ctx.log.info({ code: e.code, reason: e.message, details: e.details }, 'billing refusal shown to a public visitor as UNAVAILABLE'),
            onUnavailable: (err) => {
              if (!unavailableLogged) ctx.log.warn({ err, requestId: ctx.requestId }, 'recordUsageBatch items: database unreachable, connection lost or timed out: answered UNAVAILABLE');
              unavailableLogged = true;
            },
          });
          const code = masked.extensions.code as string;
          return { event: null, errorCode: code, errorMessage: code === 'INTERNAL_SERVER_ERROR' ? `Unexpected error (request ${ctx.requestId}).` : masked.message };
        });
      },
    }),
    reserveCredits: t.prismaField({
      type: ReservationRef,
      authScopes: { usageWrite: true },
      args: { input: t.arg({ type: ReserveCreditsInputRef, required: true }) },
      resolve: async (query, _root, { input }, ctx) => {
        const { reservationId, row } = await reserveCredits(ctx.services, {
          accountId: decodeId(String(input.accountId), 'Account', 'account'),
          amountMicroCredits: input.amount,
          ttlSeconds: input.ttlSeconds ?? 900,
          idempotencyKey: input.idempotencyKey,
          agentId: input.agentId ?? null,
          userId: input.userId ?? null,
        });
        // A hold written by this call is answered from its row (as recordUsage is); a replay reads it.
        if (row) return reservationFromRow(row);
        return ctx.prisma.reservation.findUniqueOrThrow({ ...query, where: { id: reservationId } });
      },
    }),
    settleReservation: t.prismaField({
      type: ReservationRef,
      authScopes: { usageWrite: true },
      args: { input: t.arg({ type: SettleReservationInputRef, required: true }) },
      resolve: async (query, _root, { input }, ctx) => {
        // A settle records its usage items together or none of them: each item counts the settle's outcome.
        const items = input.usage.length;
        let settled;
        try {
          settled = await settleReservation(ctx.services, decodeId(String(input.reservationId), 'Reservation', 'reservation'), input.usage.map(toUsageInput));
        } catch (error) {
          ctx.usageOutcomes.count(usageOutcomeOf(error), items);
          throw error;
        }
        const { reservationId, replayed, row } = settled;
        ctx.usageOutcomes.count(replayed ? 'replayed' : 'recorded', items);
        if (row) return reservationFromRow(row);
        return ctx.prisma.reservation.findUniqueOrThrow({ ...query, where: { id: reservationId } });
      },
    }),
    releaseReservation: t.prismaField({
      type: ReservationRef,
      authScopes: { usageWrite: true },
      args: { reservationId: t.arg.id({ required: true }) },
      resolve: async (query, _root, args, ctx) => {
        const id = await releaseReservation(ctx.services, decodeId(String(args.reservationId), 'Reservation', 'reservation'));
        return ctx.prisma.reservation.findUniqueOrThrow({ ...query, where: { id } });
      },
    }),
    extendReservation: t.prismaField({
      type: ReservationRef,
      description: `Heartbeat of a long job: pushes an ACTIVE hold's expiry to now + ttlSeconds (1 to ${MAX_RESERVATION_TTL_SECONDS}, else BAD_USER_INPUT).`,
      authScopes: { usageWrite: true },
      args: { reservationId: t.arg.id({ required: true }), ttlSeconds: t.arg.int({ required: true }) },
      resolve: async (query, _root, args, ctx) => {
        const id = await extendReservation(ctx.services, decodeId(String(args.reservationId), 'Reservation', 'reservation'), args.ttlSeconds);
        return ctx.prisma.reservation.findUniqueOrThrow({ ...query, where: { id } });
      },
    }),
    refundUsage: t.prismaField({
      type: UsageEventRef,
      description: "Gives the event's credit back to the batches it came from (expired and voided ones excepted; credit a payment bought goes to the payment's live grant, less the share of its refunded money not taken back yet; subscription credit a ROLLOVER roll carried over since the event only up to the room its cap left).",
      authScopes: { creditsWrite: true },
      args: { usageEventId: t.arg.id({ required: true }), reason: t.arg.string({ required: true }) },
      resolve: async (query, _root, args, ctx) => {
        const id = await refundUsage(ctx.services, decodeId(String(args.usageEventId), 'UsageEvent', 'usage event'), args.reason);
        return ctx.prisma.usageEvent.findUniqueOrThrow({ ...query, where: { id } });
      },
    }),
    publishPriceBook: t.field({
      type: PriceBookRef,
      authScopes: { admin: true },
      args: { input: t.arg({ type: PriceBookInputRef, required: true }) },
      // The version this call stored, even when a concurrent publish stored a newer one meanwhile.
      resolve: (_root, { input }, ctx) => publishPriceBook(ctx.services, toPriceBookInput(input)),
    }),
    updateSettings: t.field({
      type: SettingsRef,
      authScopes: { admin: true },
      args: { input: t.arg({ type: SettingsInputRef, required: true }) },
      resolve: async (_root, { input }, ctx) => {
        await updateSettings(ctx.services, {
          creditUsdValue: input.creditUsdValue ?? undefined,
          welcomeBonusCredits: optCredits(input.welcomeBonusCredits),
          welcomeBonusExpiresAfterDays: input.welcomeBonusExpiresAfterDays,
          referralRewardCredits: optCredits(input.referralRewardCredits),
          referralMaxRewardsPerAccount: input.referralMaxRewardsPerAccount,
          alertThresholds: input.alertThresholds,
        });
        return ctx.services.pricing.settings();
      },
    }),
  }),
});
