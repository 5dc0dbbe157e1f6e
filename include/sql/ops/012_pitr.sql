-- Point-in-time recovery: physical base backups are catalogued in dbops.backups beside the logical
-- ones (kind 'basebackup' for a full, 'incremental' for one on top of a parent; their recovery tests
-- go to dbops.recovery_tests), and every WAL segment shipped to the store gets a row here.
-- The kind check is rebuilt from the kinds it allows now plus the two new ones, so that kinds other
-- migrations added are kept whatever order they were applied in.
DO $$
DECLARE
    kinds text[];
BEGIN
    SELECT array_agg(DISTINCT m[1]) INTO kinds
    FROM pg_constraint c, regexp_matches(pg_get_constraintdef(c.oid), '''([^'']+)''', 'g') AS m
    WHERE c.conrelid = 'dbops.backups'::regclass AND c.conname = 'backups_kind_check';
    ALTER TABLE dbops.backups DROP CONSTRAINT IF EXISTS backups_kind_check;
    EXECUTE format('ALTER TABLE dbops.backups ADD CONSTRAINT backups_kind_check CHECK (kind = ANY (%L::text[]))',
                   ARRAY(SELECT DISTINCT unnest(coalesce(kinds, ARRAY['full', 'tenant'])
                                                || ARRAY['basebackup', 'incremental']) ORDER BY 1));
END
$$;

CREATE TABLE dbops.wal_segments (
    target     text        NOT NULL,
    segment    text        NOT NULL CHECK (segment ~ '^[0-9A-F]{24}$'),  -- WAL file name, timeline first
    partial    boolean     NOT NULL,                                     -- the unfinished segment, replaced later
    key        text        NOT NULL,                                     -- store key
    bytes      bigint      NOT NULL,                                     -- stored (zstd)
    raw_bytes  bigint      NOT NULL,                                     -- WAL bytes in it
    sha256     text        NOT NULL,                                     -- of the stored object
    stored_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (target, segment)
);
