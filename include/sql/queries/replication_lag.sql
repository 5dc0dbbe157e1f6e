-- Replication lag in seconds.
-- On a primary (or a cascading standby): one row per connected replica of pg_stat_replication,
-- labelled application_name and client_addr, value = replay_lag; for a WAL receiver that does not
-- replay (pg_receivewal, barman) flush_lag, then write_lag. PostgreSQL resets these lags to NULL once
-- a replica has caught up and no WAL is written, so NULL means 0. Base backups (state 'backup') are
-- no replicas and are left out.
-- On a standby (in recovery): one row, now() - the commit time of the last replayed transaction, or 0
-- when everything received has been replayed (an idle primary writes no transactions, so the replay
-- timestamp alone would grow forever). NULL (ignored) until a transaction was replayed at all.
-- A standalone server (no replicas, not in recovery) returns no row: nothing to alert on.
-- A replica that disconnected disappears from pg_stat_replication: this query does not see it.
-- Cheap: shared-memory views and functions only, no locks.
SELECT coalesce(application_name, '') AS application_name,
       coalesce(host(client_addr), 'local') AS client_addr,
       round(extract(epoch FROM coalesce(replay_lag, flush_lag, write_lag, interval '0'))::numeric, 1) AS value
FROM pg_stat_replication
WHERE state <> 'backup'
UNION ALL
SELECT coalesce(nullif(current_setting('cluster_name'), ''), 'this standby') AS application_name,
       'local' AS client_addr,
       CASE WHEN pg_last_wal_receive_lsn() IS NOT NULL AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()
            THEN 0
            ELSE round(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::numeric, 1)
       END AS value
WHERE pg_is_in_recovery()
