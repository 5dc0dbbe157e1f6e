-- Data lifecycle history (pg_archive__<target>, pg_retention__<target>): one row per policy (table), job
-- and task try, with its cutoff and figures. 'partial': stopped cleanly at the time budget (the next run
-- continues). rows_behind: rows past the cutoff still in the table after the run and not held back by a
-- reference (the run fell behind); rows_held_back: rows past the cutoff kept because a row that stays
-- references them.
CREATE TABLE dbops.lifecycle_runs (
    id                 bigserial   PRIMARY KEY,
    target             text        NOT NULL,
    job                text        NOT NULL CHECK (job IN ('archive', 'retention')),
    table_name         text        NOT NULL,
    logical_date       timestamptz NOT NULL,
    run_id             text        NOT NULL,
    try_number         integer     NOT NULL,
    cutoff             timestamptz NOT NULL,
    cadence_seconds    double precision NOT NULL,        -- longest expected interval between two runs
    status             text        NOT NULL CHECK (status IN ('running', 'done', 'partial', 'failed')),
    rows_moved         bigint      NOT NULL DEFAULT 0,
    rows_purged        bigint      NOT NULL DEFAULT 0,    -- table and archive table
    rows_held_back     bigint      NOT NULL DEFAULT 0,
    rows_behind        bigint,
    files_deleted      integer     NOT NULL DEFAULT 0,    -- exported files past retention
    batches            integer     NOT NULL DEFAULT 0,
    seconds            double precision,
    max_batch_seconds  double precision,
    error              text,
    started_at         timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);
CREATE INDEX lifecycle_runs_policy ON dbops.lifecycle_runs (target, job, table_name, started_at DESC);
