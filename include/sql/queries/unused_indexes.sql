-- Number of unused indexes in the current database: valid, non-unique, non-primary-key indexes that
-- back no exclusion constraint and were never scanned since the statistics were last reset
-- (pg_stat_user_indexes.idx_scan = 0). Scans on replicas are not counted here: an index used only by
-- queries on a standby looks unused on the primary.
-- Cheap: catalog and statistics views, no locks.
SELECT count(*) AS value
FROM pg_stat_user_indexes s
JOIN pg_index i ON i.indexrelid = s.indexrelid
WHERE s.idx_scan = 0
  AND i.indisvalid
  AND NOT i.indisunique
  AND NOT i.indisprimary
  AND NOT i.indisexclusion
