"""Heartbeat markers on the real PostgreSQL server: what is counted, and what is compared after recovery.

The recovered database is stood in for by the same database, changed the way a recovery could differ."""

from __future__ import annotations

import psycopg

from dbops.backup.heartbeat import check_markers, write_markers
from scripts.stack.postgres import libpq_conninfo


def test_tables_written_during_the_marker_window_are_not_compared_and_the_still_ones_are(scratch_db):
    dsn = libpq_conninfo(scratch_db())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE still AS SELECT generate_series(1, 10) AS id")
        conn.execute("CREATE TABLE busy (id serial PRIMARY KEY)")
        conn.execute("CREATE UNLOGGED TABLE cache AS SELECT 1 AS id")
        write_markers(conn, "creates the heartbeat table")
        # an application write inside the marker window: it commits with the after marker, so the first count
        # cannot see it and the second one does
        conn.execute("CREATE FUNCTION app_write() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN INSERT INTO busy DEFAULT VALUES; RETURN NULL; END $$")
        conn.execute("CREATE TRIGGER app_write AFTER INSERT ON dbops_pitr_heartbeat FOR EACH ROW "
                     "WHEN (NEW.position = 'after') EXECUTE FUNCTION app_write()")
    with psycopg.connect(dsn) as conn:
        markers = write_markers(conn, "run-1")
    assert markers.changing == {"public.busy", "public.dbops_pitr_heartbeat"}  # the latter: the after marker
    assert markers.rows["public.still"] == 10 and "public.cache" not in markers.rows, "unlogged: empty after recovery"

    with psycopg.connect(dsn) as conn:
        conn.execute("INSERT INTO busy SELECT nextval('busy_id_seq') FROM generate_series(1, 5)")  # 6 rows, 0 counted
        row_counts = check_markers(conn, markers)["row_counts"]
    assert row_counts["ok"] and row_counts["written_during_the_test"] == ["public.busy", "public.dbops_pitr_heartbeat"]

    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM still WHERE id = 1")
        row_counts = check_markers(conn, markers)["row_counts"]
    assert not row_counts["ok"] and row_counts["mismatched"] == {"public.still": {"expected": 10, "recovered": 9}}
