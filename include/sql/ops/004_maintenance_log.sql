-- Maintenance history: one row per attempt at one object's action (VACUUM FULL, REINDEX CONCURRENTLY,
-- VACUUM (ANALYZE), ANALYZE, dropping an invalid REINDEX leftover), with sizes before and after; and one
-- row per run with its plan and report (unused / duplicate indexes as data).
CREATE TABLE dbops.maintenance_log (
    id             bigserial   PRIMARY KEY,
    target         text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('weekly', 'daily')),
    logical_date   timestamptz NOT NULL,
    run_id         text        NOT NULL,
    try_number     integer     NOT NULL,
    object_kind    text        NOT NULL CHECK (object_kind IN ('table', 'index')),
    schema_name    text        NOT NULL,
    object_name    text        NOT NULL,
    action         text        NOT NULL,
    reason         text        NOT NULL,             -- why the plan chose the action
    status         text        NOT NULL CHECK (status IN ('running', 'done', 'retry', 'skipped', 'failed')),
    bytes_before   bigint,
    bytes_after    bigint,
    seconds        double precision,
    error          text,                             -- what went wrong (retry / skipped / failed)
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);
CREATE INDEX maintenance_log_run ON dbops.maintenance_log (target, kind, logical_date);
CREATE INDEX maintenance_log_object ON dbops.maintenance_log (target, schema_name, object_name, started_at DESC);
-- A logical date finishes each object's action once: a rerun of that date does not redo it.
CREATE UNIQUE INDEX maintenance_log_done_once ON dbops.maintenance_log
    (target, kind, logical_date, schema_name, object_name, action) WHERE status = 'done';

CREATE TABLE dbops.maintenance_runs (
    target         text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('weekly', 'daily')),
    logical_date   timestamptz NOT NULL,
    run_id         text        NOT NULL,
    dry_run        boolean     NOT NULL,
    plan           jsonb       NOT NULL,
    report         jsonb,                            -- NULL until the report task ran
    planned_at     timestamptz NOT NULL DEFAULT now(),
    reported_at    timestamptz,
    PRIMARY KEY (target, kind, logical_date)
);
