-- Longest running query of the current database, in seconds: the age of the oldest statement still
-- executing (state active / fastpath) in a client backend. Walsenders, autovacuum and other background
-- workers, idle sessions and this evaluating session itself are left out. 0 when nothing runs.
-- Cheap: one pass over pg_stat_activity (shared memory), no locks.
SELECT coalesce(round(extract(epoch FROM max(now() - query_start))::numeric, 1), 0) AS value
FROM pg_stat_activity
WHERE datname = current_database()
  AND backend_type = 'client backend'
  AND state IN ('active', 'fastpath function call')
  AND pid <> pg_backend_pid()
