-- dbops's own (ops database): how many intervals ahead of now the partitions of each managed table of
-- %(target)s reach without a gap (from the newest pg_partitions__ inspection; nominal interval lengths:
-- day, week, 30.44-day month, 365.24-day year). Unit: intervals. Labels: table, interval.
SELECT table_name AS "table", interval,
       round((greatest(0, extract(epoch FROM coalesce(covered_until, now()) - now()))
              / CASE interval WHEN 'daily' THEN 86400 WHEN 'weekly' THEN 604800
                              WHEN 'monthly' THEN 2629746 ELSE 31556952 END)::numeric, 2) AS value
FROM dbops.partition_status
WHERE target = %(target)s
