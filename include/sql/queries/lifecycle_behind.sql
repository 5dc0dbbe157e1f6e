-- ops database. Per archived table of %(target)s: rows older than the archive cutoff still in the table
-- after the newest successful archive run, not counting rows held back because a row that stays references
-- them (the run fell behind: time budget, locks). Unit: rows. Parameters: target.
SELECT DISTINCT ON (table_name) table_name, rows_behind AS value
FROM dbops.lifecycle_runs
WHERE target = %(target)s AND job = 'archive' AND status IN ('done', 'partial') AND rows_behind IS NOT NULL
ORDER BY table_name, finished_at DESC
