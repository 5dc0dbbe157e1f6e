-- Percent of max_connections in use.
SELECT round(100.0 * count(*) / current_setting('max_connections')::int, 1) AS value
FROM pg_stat_activity
