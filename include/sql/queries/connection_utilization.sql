-- Percent of max_connections in use by client backends on the whole server (connections count
-- against max_connections whatever their database). Background processes, autovacuum workers and
-- walsenders have their own slots and are not counted. Cheap: pg_stat_activity, no locks.
SELECT round(100.0 * count(*) / current_setting('max_connections')::int, 1) AS value
FROM pg_stat_activity
WHERE backend_type = 'client backend'
