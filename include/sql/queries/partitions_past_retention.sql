-- dbops's own (ops database): days the oldest still-attached partition of each managed table of %(target)s
-- is past its retention (0 when none is). Unit: days. Labels: table, retention.
SELECT table_name AS "table", retention::text AS retention,
       round((greatest(0, extract(epoch FROM (now() - retention) - oldest_upper)) / 86400)::numeric, 1) AS value
FROM dbops.partition_status
WHERE target = %(target)s AND retention IS NOT NULL AND oldest_upper IS NOT NULL
