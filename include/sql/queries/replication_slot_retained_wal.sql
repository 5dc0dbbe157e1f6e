-- WAL a replication slot makes the server keep, in MB: pg_current_wal_lsn() - restart_lsn, one row per
-- slot holding WAL, labelled slot_name, slot_type and active ('yes'/'no'). A slot whose consumer stopped
-- (a WAL shipper such as pg_wal_ship__<target>, a replica, a logical subscriber) makes pg_wal grow until
-- the disk is full. Slots that hold nothing (restart_lsn NULL) and invalidated slots are left out.
-- On a standby pg_current_wal_lsn() is not available: pg_last_wal_receive_lsn() is used instead.
-- Cheap: shared-memory views, no locks.
SELECT slot_name::text AS slot_name,
       slot_type,
       CASE WHEN active THEN 'yes' ELSE 'no' END AS active,
       round(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn()
                                  ELSE pg_current_wal_lsn() END, restart_lsn) / 1048576.0, 1) AS value
FROM pg_replication_slots
WHERE restart_lsn IS NOT NULL
  AND coalesce(wal_status, '') <> 'lost'
