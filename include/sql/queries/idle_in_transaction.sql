-- Longest idle-in-transaction session of the current database, in seconds: how long the oldest
-- session has been sitting inside an open (or aborted) transaction without running anything
-- (now() - state_change). Such a session keeps its locks and may hold back the vacuum horizon.
-- 0 when there is none. Cheap: one pass over pg_stat_activity, no locks.
SELECT coalesce(round(extract(epoch FROM max(now() - state_change))::numeric, 1), 0) AS value
FROM pg_stat_activity
WHERE datname = current_database()
  AND backend_type = 'client backend'
  AND state IN ('idle in transaction', 'idle in transaction (aborted)')
  AND pid <> pg_backend_pid()
