-- dbops's own health (ops database): objects whose maintenance failed in the newest run of each kind
-- (weekly, daily) of %(target)s, not counting an action a later try of that run finished. Unit: objects.
WITH newest AS (
    SELECT kind, max(logical_date) AS logical_date
    FROM dbops.maintenance_log
    WHERE target = %(target)s
    GROUP BY kind
)
SELECT n.kind,
       count(*) FILTER (WHERE m.status = 'failed' AND NOT EXISTS (
           SELECT 1 FROM dbops.maintenance_log d
           WHERE d.target = m.target AND d.kind = m.kind AND d.logical_date = m.logical_date
             AND d.schema_name = m.schema_name AND d.object_name = m.object_name AND d.action = m.action
             AND d.status = 'done')) AS value
FROM newest n
JOIN dbops.maintenance_log m ON m.target = %(target)s AND m.kind = n.kind AND m.logical_date = n.logical_date
GROUP BY n.kind
