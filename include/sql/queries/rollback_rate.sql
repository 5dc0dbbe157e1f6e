-- Rollback rate of the current database in percent: xact_rollback / (xact_commit + xact_rollback)
-- from pg_stat_database, cumulative since the statistics were last reset. NULL (no alert) while
-- fewer than 1000 transactions were counted, so a fresh database never alerts on a handful of them.
-- Cheap: one row of a statistics view, no locks.
SELECT CASE WHEN xact_commit + xact_rollback >= 1000
            THEN round(100.0 * xact_rollback / (xact_commit + xact_rollback), 2)
       END AS value
FROM pg_stat_database
WHERE datname = current_database()
