/**
 * What PostgreSQL did for one scenario, per unit of work (event, transaction, job, call): from
 * the deltas of pg_stat_database (the scenario's database only: commits, rollbacks, rows
 * inserted/updated/deleted, rows fetched by index and returned by scans, buffer reads) and
 * pg_stat_wal (cluster-wide: WAL written by every database, so other engineers' writes land
 * here too). Backends publish their counters when idle at most once a second, so read the
 * "after" snapshot ~1.5 s after the load stopped.
 */
import type pg from 'pg';
import { round } from './load.js';

/** Raw counters at one instant. */
export interface DbCounters {
  xactCommit: number;
  xactRollback: number;
  tupInserted: number;
  tupUpdated: number;
  tupDeleted: number;
  tupFetched: number;
  tupReturned: number;
  blksRead: number;
  blksHit: number;
  walBytes: number;
  walRecords: number;
  walFpi: number;
}

/** Database work per unit of a scenario. */
export interface DbWork {
  units: number;
  commitsPerUnit: number;
  rollbacksPerUnit: number;
  rowsInsertedPerUnit: number;
  rowsUpdatedPerUnit: number;
  rowsDeletedPerUnit: number;
  /** Rows fetched through indexes (tup_fetched). */
  rowsFetchedPerUnit: number;
  /** Rows returned by scans (tup_returned: index entries and heap rows read). */
  rowsScannedPerUnit: number;
  blocksReadPerUnit: number;
  /** WAL bytes per unit, KiB (cluster-wide, see the module comment). */
  walKiBPerUnit: number;
  walFullPageImagesPerUnit: number;
}

/** Reads the counters of `database` and the cluster's WAL counters. */
export async function readCounters(client: pg.Client, database: string): Promise<DbCounters> {
  const { rows } = await client.query(
    `SELECT d.xact_commit, d.xact_rollback, d.tup_inserted, d.tup_updated, d.tup_deleted, d.tup_fetched, d.tup_returned,
            d.blks_read, d.blks_hit, w.wal_bytes, w.wal_records, w.wal_fpi
       FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = $1`,
    [database],
  );
  const r = rows[0] ?? {};
  const n = (k: string) => Number(r[k] ?? 0);
  return {
    xactCommit: n('xact_commit'),
    xactRollback: n('xact_rollback'),
    tupInserted: n('tup_inserted'),
    tupUpdated: n('tup_updated'),
    tupDeleted: n('tup_deleted'),
    tupFetched: n('tup_fetched'),
    tupReturned: n('tup_returned'),
    blksRead: n('blks_read'),
    blksHit: n('blks_hit'),
    walBytes: n('wal_bytes'),
    walRecords: n('wal_records'),
    walFpi: n('wal_fpi'),
  };
}

/** The work between two snapshots, divided by `units` (null when no unit was done). */
export function workPerUnit(before: DbCounters, after: DbCounters, units: number): DbWork | null {
  if (units <= 0) return null;
  const d = (k: keyof DbCounters) => (after[k] - before[k]) / units;
  return {
    units,
    commitsPerUnit: round(d('xactCommit'), 2),
    rollbacksPerUnit: round(d('xactRollback'), 3),
    rowsInsertedPerUnit: round(d('tupInserted'), 2),
    rowsUpdatedPerUnit: round(d('tupUpdated'), 2),
    rowsDeletedPerUnit: round(d('tupDeleted'), 2),
    rowsFetchedPerUnit: round(d('tupFetched'), 1),
    rowsScannedPerUnit: round(d('tupReturned'), 1),
    blocksReadPerUnit: round(d('blksRead'), 2),
    walKiBPerUnit: round(d('walBytes') / 1024, 2),
    walFullPageImagesPerUnit: round(d('walFpi'), 3),
  };
}
