-- ops database. Per lifecycle policy (table) and job (archive, retention) of %(target)s: how many cadences
-- have passed since its last successful run (done, or partial: stopped cleanly at the time budget); a
-- policy that never succeeded counts from its first try. value 2 = twice the cadence (the monthly archive
-- counts 31 days, daily work 1 day, as recorded with each run). Parameters: target. Cheap: a few rows per run.
SELECT job, table_name,
       round((extract(epoch FROM now() - coalesce(max(finished_at) FILTER (WHERE status IN ('done', 'partial')),
                                                  min(started_at)))
              / max(cadence_seconds))::numeric, 2) AS value
FROM dbops.lifecycle_runs
WHERE target = %(target)s
GROUP BY job, table_name
