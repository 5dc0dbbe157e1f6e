-- A retirement is recorded as 'detaching' before its DETACH runs, so that a task killed between the DETACH and
-- the record leaves a row the next run resumes (never a detached table tracked by nothing).
ALTER TABLE dbops.partition_retirements DROP CONSTRAINT partition_retirements_status_check;
ALTER TABLE dbops.partition_retirements ADD CONSTRAINT partition_retirements_status_check
    CHECK (status IN ('detaching', 'detached', 'archived', 'dropped', 'drop_refused'));
