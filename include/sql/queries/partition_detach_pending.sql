-- Partitions left "detach pending" by an interrupted DETACH PARTITION ... CONCURRENTLY. Unit: 1 per partition.
-- Labels: parent, partition.
SELECT format('%I.%I', pn.nspname, p.relname) AS parent, format('%I.%I', cn.nspname, c.relname) AS partition,
       1 AS value
FROM pg_inherits i
JOIN pg_class p ON p.oid = i.inhparent JOIN pg_namespace pn ON pn.oid = p.relnamespace
JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace cn ON cn.oid = c.relnamespace
WHERE i.inhdetachpending
