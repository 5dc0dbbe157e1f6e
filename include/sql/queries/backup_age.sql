-- ops database. Hours since the snapshot of the newest complete, verified full backup of the target
-- %(target)s: dbops.backups.taken_at, when its data was read (not when it was recorded, so a
-- backup recorded late never makes old data look new); rows written without taken_at count from
-- created_at. value is 1000000 (a sentinel, about 114 years) when the target never had one, so that
-- the rule fires instead of staying silent; the label `newest` says 'never' or the snapshot time (UTC)
-- for the summary. Parameters: target. Cheap: a target has a few hundred catalog rows at most, no locks.
SELECT coalesce(round((extract(epoch FROM now() - newest) / 3600)::numeric, 2), 1000000) AS value,
       coalesce(to_char(newest AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI "UTC"'), 'never') AS newest
FROM (SELECT max(coalesce(taken_at, created_at)) AS newest
      FROM dbops.backups
      WHERE target = %(target)s
        AND kind = 'full'
        AND status = 'complete'
        AND verified) AS newest_verified
