-- ops database. Hours since the newest complete, verified full backup of the target %(target)s was
-- recorded (dbops.backups.created_at, status complete, verified = true). 1000000 (a sentinel, about
-- 114 years) when the target never had one, so that the rule fires instead of staying silent.
-- Parameters: target. Cheap: index backups_target_date (target, kind, ...), no locks.
SELECT coalesce(round((extract(epoch FROM now() - max(created_at)) / 3600)::numeric, 2), 1000000) AS value
FROM dbops.backups
WHERE target = %(target)s
  AND kind = 'full'
  AND status = 'complete'
  AND verified
