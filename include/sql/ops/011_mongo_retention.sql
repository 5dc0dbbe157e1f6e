-- MongoDB retention purges (mongo_retention__<target>): one row per run and collection policy with what it
-- deleted, or the TTL index it ensured. A retried task adds to its run's row: each batch is recorded as it
-- commits, so the figures of a run interrupted midway are kept.
CREATE TABLE dbops.mongo_retention_log (
    id            bigserial   PRIMARY KEY,
    target        text        NOT NULL,
    run_id        text        NOT NULL,
    logical_date  timestamptz NOT NULL,
    collection    text        NOT NULL,
    policy        text        NOT NULL,             -- time field and filter, e.g. 'timestamp {"kind": "view"}'
    method        text        NOT NULL CHECK (method IN ('delete', 'ttl')),
    cutoff        timestamptz,                      -- documents older than this were due (delete)
    deleted       bigint      NOT NULL DEFAULT 0,
    batches       integer     NOT NULL DEFAULT 0,
    detail        text,                             -- the TTL index ensured, or how the purge ended
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (target, run_id, collection, policy)
);
CREATE INDEX mongo_retention_log_date ON dbops.mongo_retention_log (target, logical_date);
