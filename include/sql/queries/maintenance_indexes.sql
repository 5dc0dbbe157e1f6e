-- Per index of the current database: size, validity, usage and, for btree indexes, a statistics-based
-- size estimate (the ioguix btree-bloat query, adapted: real size measured now; 16-byte special space,
-- 8-byte index tuple header plus null bitmap, columns' average widths from pg_stats, fillfactor 90
-- unless set). Expression columns take the index's own statistics. expected_bytes NULL: no estimate.
-- is_exclusion: the index backs an EXCLUDE constraint (REINDEX CONCURRENTLY refuses those).
WITH idx AS (
    SELECT i.indexrelid AS oid, i.indrelid, n.nspname AS schema_name, t.relname AS table_name,
           c.relname AS index_name, am.amname, i.indisvalid, i.indisready, i.indisunique, i.indisprimary,
           i.indnatts, i.indkey, greatest(coalesce(nullif(c.reltuples, -1), t.reltuples), 0) AS reltuples,
           coalesce(substring(array_to_string(c.reloptions, ' ') FROM 'fillfactor=([0-9]+)')::int, 90) AS fillfactor,
           pg_relation_size(c.oid) AS index_bytes,
           EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid) AS backs_constraint,
           EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid AND k.contype = 'x'
                                                   AND k.conrelid = i.indrelid) AS is_exclusion
      FROM pg_index i
      JOIN pg_class c ON c.oid = i.indexrelid
      JOIN pg_class t ON t.oid = i.indrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_am am ON am.oid = c.relam
     WHERE c.relkind = 'i' AND t.relkind IN ('r', 'm') AND c.relpersistence <> 't'
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast'
),
cols AS (
    SELECT idx.oid, s.null_frac, s.avg_width, s.attname IS NULL AS missing
      FROM idx
     CROSS JOIN LATERAL generate_series(1, idx.indnatts) AS pos
      LEFT JOIN pg_attribute a ON a.attrelid = CASE WHEN idx.indkey[pos - 1] = 0 THEN idx.oid ELSE idx.indrelid END
                              AND a.attnum = CASE WHEN idx.indkey[pos - 1] = 0 THEN pos ELSE idx.indkey[pos - 1] END
      LEFT JOIN pg_class r ON r.oid = a.attrelid
      LEFT JOIN pg_stats s ON s.schemaname = idx.schema_name AND s.tablename = r.relname AND s.attname = a.attname
                          AND NOT s.inherited
     WHERE idx.amname = 'btree'
),
width AS (
    SELECT oid,
           CASE WHEN max(coalesce(null_frac, 0)) = 0 THEN 8 ELSE 16 END AS hdr,
           sum((1 - coalesce(null_frac, 0)) * coalesce(avg_width, 1024)) AS data_width,
           bool_or(missing) AS stats_missing
      FROM cols GROUP BY oid
),
usage AS (
    SELECT indexrelid AS oid, idx_scan, last_idx_scan FROM pg_stat_all_indexes
)
SELECT idx.oid::bigint AS oid, idx.indrelid::bigint AS table_oid, idx.schema_name, idx.table_name,
       idx.index_name, idx.amname, idx.indisvalid AS is_valid, idx.indisunique AS is_unique,
       idx.indisprimary AS is_primary, idx.backs_constraint, idx.is_exclusion, idx.index_bytes,
       CASE WHEN w.oid IS NULL OR w.stats_missing THEN NULL ELSE
           (current_setting('block_size')::bigint * (1 + ceil(idx.reltuples / floor(
               (current_setting('block_size')::int - 24 - 16) * idx.fillfactor / 100.0
               / (4 + 8 * ceil(w.hdr / 8.0) + 8 * ceil(w.data_width / 8.0))))))::bigint
       END AS expected_bytes,
       coalesce(u.idx_scan, 0) AS idx_scan, u.last_idx_scan
  FROM idx
  LEFT JOIN width w ON w.oid = idx.oid
  LEFT JOIN usage u ON u.oid = idx.oid
 ORDER BY idx.schema_name, idx.table_name, idx.index_name
