-- Partition management (pg_partitions__<target>): each run's plan and report, every step it took on a
-- partition, the state of each partitioned table for the alert rules, and the partitions it retired
-- (detached tables are followed until they are kept, archived or dropped after a verified dump).
CREATE TABLE dbops.partition_runs (
    target         text        NOT NULL,
    logical_date   timestamptz NOT NULL,
    run_id         text        NOT NULL,
    dry_run        boolean     NOT NULL,
    plan           jsonb       NOT NULL,
    report         jsonb,                            -- NULL until the report task ran
    planned_at     timestamptz NOT NULL DEFAULT now(),
    reported_at    timestamptz,
    PRIMARY KEY (target, logical_date)
);

CREATE TABLE dbops.partition_steps (
    id             bigserial   PRIMARY KEY,
    target         text        NOT NULL,
    logical_date   timestamptz NOT NULL,
    run_id         text        NOT NULL,
    table_name     text        NOT NULL,             -- the partitioned table, schema.table
    step           text        NOT NULL CHECK (step IN ('create', 'move', 'detach', 'finalize', 'archive',
                                                        'drop', 'keep')),
    partition_name text        NOT NULL,             -- schema.table of the partition
    status         text        NOT NULL CHECK (status IN ('done', 'skipped', 'failed')),
    rows           bigint,
    bytes          bigint,
    seconds        double precision,
    detail         text,                             -- why skipped / failed, or what was done
    recorded_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX partition_steps_run ON dbops.partition_steps (target, logical_date);

-- The newest inspection of each table (one row per table), read by the alert rules.
CREATE TABLE dbops.partition_status (
    target            text        NOT NULL,
    table_name        text        NOT NULL,
    logical_date      timestamptz NOT NULL,
    interval          text        NOT NULL,
    premake           integer     NOT NULL,
    retention         interval,                      -- NULL: never retired
    covered_until     timestamptz,                   -- end of the contiguous partitions from the current interval
    oldest_upper      timestamptz,                   -- upper bound of the oldest attached partition
    default_rows      bigint      NOT NULL DEFAULT 0,
    detach_pending    integer     NOT NULL DEFAULT 0,
    partitions        jsonb       NOT NULL,          -- per partition: bounds, rows, bytes, last vacuum/analyze
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, table_name)
);

CREATE TABLE dbops.partition_retirements (
    target            text        NOT NULL,
    table_name        text        NOT NULL,
    partition_schema  text        NOT NULL,
    partition_name    text        NOT NULL,
    lower_bound       timestamptz NOT NULL,
    upper_bound       timestamptz NOT NULL,
    mode              text        NOT NULL CHECK (mode IN ('detach', 'archive_schema', 'drop')),
    status            text        NOT NULL CHECK (status IN ('detached', 'archived', 'dropped', 'drop_refused')),
    backup_id         text,                          -- the verified dump taken before a drop
    rows              bigint,
    sha256            text,
    bytes             bigint,
    error             text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, partition_schema, partition_name)
);
