-- Index of the backups in the stores (the manifest beside each backup is the source of truth)
-- and every verification restore ever run: the proof that a backup restores.
CREATE TABLE dbops.backups (
    backup_id     text        PRIMARY KEY,          -- <target>/<kind>/<logical date>
    target        text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('full', 'tenant')),
    logical_date  timestamptz NOT NULL,
    run_id        text        NOT NULL,
    location      text        NOT NULL,             -- store URL and key prefix
    bytes         bigint      NOT NULL,
    tables        integer     NOT NULL,
    total_rows    bigint      NOT NULL,
    verified      boolean,                          -- NULL until a verification restore finished
    status        text        NOT NULL DEFAULT 'complete' CHECK (status IN ('complete', 'deleting', 'deleted')),
    manifest      jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    deleted_at    timestamptz
);
CREATE INDEX backups_target_date ON dbops.backups (target, kind, logical_date DESC);

CREATE TABLE dbops.recovery_tests (
    id              bigserial   PRIMARY KEY,
    backup_id       text        NOT NULL REFERENCES dbops.backups (backup_id),
    target          text        NOT NULL,
    run_id          text        NOT NULL,
    started_at      timestamptz NOT NULL,
    restore_seconds double precision,
    ok              boolean     NOT NULL,
    checks          jsonb       NOT NULL,           -- per-check results
    error           text
);
CREATE INDEX recovery_tests_backup ON dbops.recovery_tests (backup_id, started_at DESC);
