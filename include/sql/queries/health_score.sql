-- Health score of the current database, 0 (bad) to 100 (healthy); seed 001's
-- calculate_database_health_score(): above 75 good, above 90 excellent.
-- Sum of six components; each earns its full points at or better than its "good" level, none at or
-- worse than its "bad" level, and linearly in between:
--   points = weight * clamp((bad - x) / (bad - good), 0, 1)   (for "higher is better", swap the signs)
--   component                                     weight   good      bad
--   cache hit ratio, % (pg_stat_database)            25   >= 99     <= 90
--   connection utilization, % of max_connections     20   <= 60     >= 95
--   dead tuples, % of all tuples of user tables      15   <= 10     >= 50
--   rollback rate, % of transactions                 15   <= 1      >= 10   (full points below 1000 xacts)
--   longest running query, s                         15   <= 30     >= 300
--   longest idle-in-transaction session, s           10   <= 60     >= 1800
-- The same definitions as the cache_hit_ratio, connection_utilization, rollback_rate,
-- long_running_queries and idle_in_transaction queries (ratios are cumulative since the statistics
-- were last reset). Cheap: statistics views only, no locks.
WITH m AS (
    SELECT
        (SELECT coalesce(100.0 * blks_hit / nullif(blks_hit + blks_read, 0), 100)
         FROM pg_stat_database WHERE datname = current_database()) AS cache_hit,
        (SELECT 100.0 * count(*) / current_setting('max_connections')::int
         FROM pg_stat_activity WHERE backend_type = 'client backend') AS connections,
        (SELECT coalesce(100.0 * sum(n_dead_tup) / nullif(sum(n_live_tup + n_dead_tup), 0), 0)
         FROM pg_stat_user_tables) AS dead_tuples,
        (SELECT CASE WHEN xact_commit + xact_rollback >= 1000
                     THEN 100.0 * xact_rollback / (xact_commit + xact_rollback) ELSE 0 END
         FROM pg_stat_database WHERE datname = current_database()) AS rollback_rate,
        (SELECT coalesce(max(extract(epoch FROM now() - query_start)), 0)
         FROM pg_stat_activity
         WHERE datname = current_database() AND backend_type = 'client backend'
           AND state IN ('active', 'fastpath function call') AND pid <> pg_backend_pid()) AS longest_query,
        (SELECT coalesce(max(extract(epoch FROM now() - state_change)), 0)
         FROM pg_stat_activity
         WHERE datname = current_database() AND backend_type = 'client backend'
           AND state IN ('idle in transaction', 'idle in transaction (aborted)')
           AND pid <> pg_backend_pid()) AS longest_idle_in_transaction
)
SELECT round((
      25 * least(1, greatest(0, (cache_hit - 90) / (99 - 90)))
    + 20 * least(1, greatest(0, (95 - connections) / (95 - 60)))
    + 15 * least(1, greatest(0, (50 - dead_tuples) / (50 - 10)))
    + 15 * least(1, greatest(0, (10 - rollback_rate) / (10 - 1)))
    + 15 * least(1, greatest(0, (300 - longest_query) / (300 - 30)))
    + 10 * least(1, greatest(0, (1800 - longest_idle_in_transaction) / (1800 - 60)))
    )::numeric, 1) AS value
FROM m
