-- Indexes of one table with the same access method, columns, operator classes, collations, expressions and
-- predicate: all but one are redundant. Report only; dbops never drops an index by itself.
SELECT n.nspname AS schema_name, t.relname AS table_name,
       array_agg(c.relname ORDER BY k.conindid IS NULL, c.relname) AS indexes,
       array_agg(pg_relation_size(c.oid) ORDER BY k.conindid IS NULL, c.relname) AS bytes,
       array_agg(k.conindid IS NOT NULL ORDER BY k.conindid IS NULL, c.relname) AS backs_constraint,
       min(pg_get_indexdef(c.oid)) AS definition
  FROM pg_index i
  JOIN pg_class c ON c.oid = i.indexrelid
  JOIN pg_class t ON t.oid = i.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
  LEFT JOIN (SELECT DISTINCT conindid FROM pg_constraint WHERE conindid <> 0) k ON k.conindid = i.indexrelid
 WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_toast' AND i.indisvalid
 GROUP BY n.nspname, t.relname, i.indrelid, c.relam, i.indkey::text, i.indclass::text, i.indcollation::text,
          coalesce(pg_get_expr(i.indexprs, i.indrelid), ''), coalesce(pg_get_expr(i.indpred, i.indrelid), '')
HAVING count(*) > 1
 ORDER BY 1, 2
