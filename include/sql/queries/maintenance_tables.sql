-- Per table (and materialized view) of the current database: sizes, a statistics-based bloat estimate
-- and vacuum/analyze activity. The estimate is the well-known ioguix table-bloat query, adapted: the
-- expected heap+TOAST size follows from reltuples and pg_stats' average column widths at the table's
-- fillfactor; the real size is measured now (pg_relation_size), not taken from relpages.
-- stats_missing: no reltuples yet, or columns without pg_stats rows (never analyzed): no estimate.
WITH tbl AS (
    SELECT c.oid, n.nspname AS schema_name, c.relname AS table_name, c.relkind, c.reltuples,
           c.reltoastrelid,
           coalesce(substring(array_to_string(c.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int, 100) AS fillfactor,
           pg_relation_size(c.oid) AS heap_bytes,
           CASE WHEN c.reltoastrelid <> 0 THEN pg_total_relation_size(c.reltoastrelid) ELSE 0 END AS toast_bytes,
           pg_indexes_size(c.oid) AS index_bytes,
           coalesce(t.reltuples, 0) AS toast_tuples
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      LEFT JOIN pg_class t ON t.oid = c.reltoastrelid
     WHERE c.relkind IN ('r', 'm') AND c.relpersistence <> 't'
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
),
width AS (
    SELECT a.attrelid AS oid,
           23 + CASE WHEN max(coalesce(s.null_frac, 0)) > 0 THEN (7 + count(*)) / 8 ELSE 0 END AS hdr,
           sum((1 - coalesce(s.null_frac, 0)) * coalesce(s.avg_width, 0)) AS data_width,
           count(*) FILTER (WHERE s.attname IS NULL) > 0 AS stats_missing
      FROM pg_attribute a
      JOIN tbl ON tbl.oid = a.attrelid
      LEFT JOIN pg_stats s ON s.schemaname = tbl.schema_name AND s.tablename = tbl.table_name
                          AND s.attname = a.attname AND NOT s.inherited
     WHERE a.attnum > 0 AND NOT a.attisdropped
     GROUP BY a.attrelid
),
est AS (
    SELECT tbl.oid,
           -- tuple: line pointer 4 + header and data, each padded to MAXALIGN 8
           4 + 8 * ceil(coalesce(w.hdr, 23) / 8.0) + 8 * ceil(coalesce(w.data_width, 0) / 8.0) AS tuple_bytes,
           coalesce(w.stats_missing, true) OR tbl.reltuples < 0 AS stats_missing
      FROM tbl LEFT JOIN width w ON w.oid = tbl.oid
)
SELECT tbl.oid::bigint AS oid, tbl.schema_name, tbl.table_name, tbl.relkind::text AS relkind, tbl.fillfactor,
       tbl.heap_bytes, tbl.toast_bytes, tbl.index_bytes,
       tbl.heap_bytes + tbl.toast_bytes + tbl.index_bytes AS total_bytes,
       greatest(tbl.reltuples, 0)::bigint AS live_tuples_estimate,
       CASE WHEN est.stats_missing THEN NULL ELSE
           (current_setting('block_size')::bigint * (
               ceil(greatest(tbl.reltuples, 0) / floor((current_setting('block_size')::int - 24)
                                                       * tbl.fillfactor / 100.0 / est.tuple_bytes))
               + ceil(tbl.toast_tuples / 4)))::bigint
       END AS expected_bytes,
       coalesce(s.n_live_tup, 0) AS n_live_tup, coalesce(s.n_dead_tup, 0) AS n_dead_tup,
       coalesce(s.n_mod_since_analyze, 0) AS n_mod_since_analyze,
       greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
       greatest(s.last_analyze, s.last_autoanalyze) AS last_analyze,
       est.stats_missing
  FROM tbl
  JOIN est ON est.oid = tbl.oid
  LEFT JOIN pg_stat_all_tables s ON s.relid = tbl.oid
 ORDER BY tbl.schema_name, tbl.table_name
