-- Buffer cache hit ratio (percent) of the current database; 100 when nothing was read yet.
SELECT coalesce(round(100.0 * blks_hit / nullif(blks_hit + blks_read, 0), 2), 100) AS value
FROM pg_stat_database
WHERE datname = current_database()
