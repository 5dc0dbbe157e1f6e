-- Deadlocks detected in the current database: pg_stat_database.deadlocks, a cumulative COUNTER since
-- the statistics were last reset. Rules on it must compare the increase since the last evaluation,
-- not the raw value. Cheap: one row of a statistics view, no locks.
SELECT deadlocks AS value
FROM pg_stat_database
WHERE datname = current_database()
