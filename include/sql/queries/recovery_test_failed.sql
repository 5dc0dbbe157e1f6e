-- ops database. Whether the newest verification restore (dbops.recovery_tests) of the target
-- %(target)s failed: 1 when its ok is false, 0 when it succeeded; no row (no alert) when the target
-- was never tested. Parameters: target. Cheap: one target's rows, no locks.
SELECT CASE WHEN ok THEN 0 ELSE 1 END AS value
FROM dbops.recovery_tests
WHERE target = %(target)s
ORDER BY started_at DESC, id DESC
LIMIT 1
