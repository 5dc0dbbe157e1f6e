-- Estimated bloat of each table of at least 8 MB (1024 pages of 8 kB), in percent of its size: the
-- share of its pages that its live rows would not need, 100 * (1 - expected pages / relpages).
-- One row per table, labelled schema and table; smaller tables are left out (never worth alerting).
-- Statistics-based (like the ioguix estimate, simplified), nothing is read from the tables:
--   row size       = MAXALIGN(23-byte tuple header + null bitmap) + sum over the columns of
--                    avg_width * (1 - null_frac) from pg_stats, rounded up to 8 bytes, + 4-byte line pointer
--   expected pages = ceil(reltuples * row size / ((block_size - 24) * fillfactor / 100))
-- relpages and reltuples are those of the last VACUUM / ANALYZE: bloat a VACUUM has turned into free
-- space still counts (it is space only VACUUM FULL or pg_repack give back). Tables whose columns have
-- no statistics yet (never analyzed) are left out, except empty ones (reltuples = 0): all bloat.
-- Cheap: catalogs and pg_stats only, no locks.
WITH big AS (
    SELECT c.oid, n.nspname, c.relname, c.relpages, greatest(c.reltuples, 0) AS reltuples,
           coalesce((SELECT substring(o FROM 'fillfactor=(\d+)')::int
                     FROM unnest(c.reloptions) o WHERE o LIKE 'fillfactor=%'), 100) AS fillfactor
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm')
      AND c.relpages >= 1024
      AND c.reltuples >= 0  -- -1: never vacuumed nor analyzed, nothing known
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\_toast%'
),
widths AS (
    SELECT b.oid,
           8 * ceil((23 + CASE WHEN bool_or(s.null_frac > 0) THEN ceil(count(*) / 8.0) ELSE 0 END) / 8.0)
             + coalesce(sum(s.avg_width * (1 - s.null_frac)), 0) AS unaligned,
           count(*) AS columns, count(s.attname) AS with_stats
    FROM big b
    JOIN pg_attribute a ON a.attrelid = b.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_stats s ON s.schemaname = b.nspname AND s.tablename = b.relname AND s.attname = a.attname
                        AND NOT s.inherited
    GROUP BY b.oid
)
SELECT b.nspname AS schema, b.relname AS "table",
       round(greatest(0, 100 * (1 - ceil(b.reltuples * (8 * ceil(r.unaligned / 8.0) + 4)
                                        / ((current_setting('block_size')::int - 24) * b.fillfactor / 100.0))
                                   / b.relpages))::numeric, 1) AS value
FROM big b
JOIN widths r ON r.oid = b.oid
WHERE r.with_stats = r.columns OR b.reltuples = 0
