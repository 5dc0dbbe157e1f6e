-- Number of unused indexes in the current database: valid, non-unique, non-primary-key indexes that
-- back no exclusion constraint and were never scanned since the statistics were last reset
-- (pg_stat_user_indexes.idx_scan = 0). Scans on replicas are not counted here: an index used only by
-- queries on a standby looks unused on the primary.
-- "Never scanned" means something only over a long enough window: while the database's statistics
-- are younger than 7 days the value is NULL (no sample, the rules cannot fire). Their age counts from
-- pg_stat_database.stats_reset or, never reset, from the server's start (a database created later
-- looks older than it is: SELECT pg_stat_reset() in it starts its window). Another minimum age per
-- database or role: ALTER DATABASE … SET dbops.unused_indexes_min_stats_age = '30 days'.
-- Cheap: catalog and statistics views, no locks.
SELECT CASE WHEN now() - coalesce((SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()),
                                  pg_postmaster_start_time())
                 >= coalesce(nullif(current_setting('dbops.unused_indexes_min_stats_age', true), ''),
                             '7 days')::interval
            THEN count(*) END AS value
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0
  AND i.indisvalid
  AND NOT i.indisunique
  AND NOT i.indisprimary
  AND NOT i.indisexclusion
