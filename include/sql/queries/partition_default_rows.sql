-- Rows in each DEFAULT partition of the target (the statistics' live-tuple count: an estimate, no scan).
-- Unit: rows. Labels: parent, partition.
SELECT format('%I.%I', pn.nspname, p.relname) AS parent, format('%I.%I', dn.nspname, d.relname) AS partition,
       coalesce(s.n_live_tup, 0) AS value
FROM pg_partitioned_table pt
JOIN pg_class p ON p.oid = pt.partrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_class d ON d.oid = pt.partdefid JOIN pg_namespace dn ON dn.oid = d.relnamespace
LEFT JOIN pg_stat_all_tables s ON s.relid = d.oid
