-- Seconds since a replication slot was last used (PostgreSQL 17+: pg_replication_slots.inactive_since),
-- one row per inactive slot, labelled slot_name and slot_type. dbops's own WAL shipping slot
-- (dbops_wal_<target>) is never streamed from, so it is inactive since it was created: its inactive_since is
-- refreshed by each shipping run's pg_replication_slot_advance (every 5 minutes by default), thresholds are
-- well above the shipping interval. Its receive slot (dbops_wal_<target>_recv) exists only during a run. Active slots and servers before 17 return no row.
-- Cheap: a shared-memory view, no locks.
SELECT slot_name::text AS slot_name,
       slot_type,
       round(extract(epoch FROM now() - inactive_since)::numeric, 0) AS value
FROM pg_replication_slots
WHERE NOT active
  AND inactive_since IS NOT NULL
