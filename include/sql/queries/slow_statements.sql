-- Worst mean execution time, in milliseconds, of the statements of the current database that
-- pg_stat_statements recorded more than 10 calls of (mean_exec_time, PostgreSQL 13+). The means are
-- cumulative since the last pg_stat_statements_reset(): a statement that was fixed keeps its old mean
-- until the statistics are reset. 0 when no statement qualifies.
-- Only runs where the extension is installed (requires_extension). pg_stat_statements(false) skips
-- reading the query texts file: the texts are not needed here and reading them is the costly part.
SELECT coalesce(round(max(mean_exec_time)::numeric, 1), 0) AS value
FROM pg_stat_statements(false)
WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND calls > 10
