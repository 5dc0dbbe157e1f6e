-- What the nightly pg_dump reads and the connection's role may not (preflight's dump_access check):
-- schemas without USAGE, tables and sequences without SELECT, large objects it cannot read
-- (pg_read_all_data covers the first three, not large objects), and tables whose row-level security
-- applies to the role (pg_dump runs without --enable-row-security, so it refuses them unless the role
-- bypasses it). Objects of extensions are not dumped and not listed. One row per kind: kind, how many,
-- the first five names.
WITH schemas AS (
    SELECT n.oid, n.nspname
    FROM pg_namespace n
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_namespace'::regclass
                      AND d.objid = n.oid AND d.deptype = 'e')
), missing AS (
    SELECT 'schema' AS kind, quote_ident(s.nspname) AS name
    FROM schemas s
    WHERE NOT has_schema_privilege(s.oid, 'USAGE')
    UNION ALL
    SELECT CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END,
           quote_ident(s.nspname) || '.' || quote_ident(c.relname)
    FROM pg_class c
    JOIN schemas s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'S')
      AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                      AND d.objid = c.oid AND d.deptype = 'e')
      AND NOT has_table_privilege(c.oid, 'SELECT')
    UNION ALL
    SELECT 'row-level security table', quote_ident(s.nspname) || '.' || quote_ident(c.relname)
    FROM pg_class c
    JOIN schemas s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND c.relrowsecurity AND row_security_active(c.oid)
    UNION ALL
    SELECT 'large object', l.oid::text
    FROM pg_largeobject_metadata l
    WHERE NOT current_setting('lo_compat_privileges')::boolean
      AND NOT pg_has_role(l.lomowner, 'USAGE')
      AND NOT EXISTS (SELECT 1 FROM aclexplode(l.lomacl) a
                      WHERE a.privilege_type = 'SELECT' AND (a.grantee = 0 OR pg_has_role(a.grantee, 'USAGE')))
)
SELECT kind, count(*) AS objects, (array_agg(name ORDER BY name))[1:5] AS first
FROM missing
GROUP BY kind
ORDER BY kind
