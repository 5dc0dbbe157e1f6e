-- A lifecycle try killed mid-run (kill -9, a lost worker) leaves its row 'running'. The next run of the same
-- target, job and table, holding the target's lifecycle lock (so no other try can still be running), marks
-- it 'abandoned', its error naming the try and the run that found it.
ALTER TABLE dbops.lifecycle_runs DROP CONSTRAINT lifecycle_runs_status_check;
ALTER TABLE dbops.lifecycle_runs ADD CONSTRAINT lifecycle_runs_status_check
    CHECK (status IN ('running', 'done', 'partial', 'failed', 'abandoned'));
