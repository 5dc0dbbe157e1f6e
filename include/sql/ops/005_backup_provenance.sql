-- The backup catalog records when a backup's data was read (taken_at: its snapshot time, which names
-- a full backup's folder), the logical date of the run it was taken for (covers), the kind of run that
-- took it (run_type) and which storage of dbops.yaml holds it; recovery tests get a per-target index.
ALTER TABLE dbops.backups
    ADD COLUMN taken_at timestamptz,  -- snapshot time; NULL only for rows written without it (created_at then)
    ADD COLUMN covers   timestamptz,  -- logical date of the run that took it; NULL for a run without one
    ADD COLUMN run_type text,         -- Airflow run type: scheduled, backfill, manual, ...; NULL when unknown
    ADD COLUMN storage  text;         -- key of `storage:` in dbops.yaml; NULL when recorded before this migration

-- Rows from before: the dump started about dump + upload seconds before the manifest was made.
UPDATE dbops.backups SET
    taken_at = coalesce((manifest -> 'extra' ->> 'created_at')::timestamptz, created_at)
               - make_interval(secs => coalesce((manifest -> 'timings' ->> 'dump_seconds')::float8, 0)
                                       + coalesce((manifest -> 'timings' ->> 'upload_seconds')::float8, 0)),
    covers = logical_date,
    run_type = CASE WHEN split_part(run_id, '__', 1) IN ('scheduled', 'backfill', 'manual', 'asset_triggered',
                                                         'asset_materialization', 'operator_triggered')
                    THEN split_part(run_id, '__', 1) END;

CREATE INDEX backups_target_taken ON dbops.backups (target, kind, taken_at DESC);
CREATE INDEX backups_run ON dbops.backups (target, kind, run_id);
CREATE INDEX recovery_tests_target_started ON dbops.recovery_tests (target, started_at DESC);
