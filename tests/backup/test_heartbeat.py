"""Heartbeat markers on the real PostgreSQL server: what is counted, and what is compared after recovery.

The recovered database is stood in for by the same database, changed the way a recovery could differ."""

from __future__ import annotations

import threading

import psycopg

from dbops.backup.heartbeat import check_markers, write_markers
from scripts.stack.postgres import libpq_conninfo


def test_tables_written_during_the_marker_window_are_not_compared_and_the_still_ones_are(scratch_db):
    dsn = libpq_conninfo(scratch_db())
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE still AS SELECT generate_series(1, 10) AS id")
        conn.execute("CREATE TABLE busy (id serial PRIMARY KEY)")
        conn.execute("CREATE UNLOGGED TABLE cache AS SELECT 1 AS id")
    writing, stop = threading.Event(), threading.Event()

    def application() -> None:  # commits into busy without a pause while the markers are written
        with psycopg.connect(dsn, autocommit=True) as writer:
            while not stop.is_set():
                writer.execute("INSERT INTO busy DEFAULT VALUES")
                writing.set()

    thread = threading.Thread(target=application)
    thread.start()
    try:
        assert writing.wait(30)
        with psycopg.connect(dsn) as conn:
            markers = write_markers(conn, "run-1")
    finally:
        stop.set()
        thread.join()
    assert markers.changing == {"public.busy", "public.dbops_pitr_heartbeat"}  # the latter: the after marker
    assert markers.rows["public.still"] == 10 and "public.cache" not in markers.rows, "unlogged: empty after recovery"

    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM busy WHERE id > 3")
        row_counts = check_markers(conn, markers)["row_counts"]
    assert row_counts["ok"] and row_counts["written_during_the_test"] == ["public.busy", "public.dbops_pitr_heartbeat"]

    with psycopg.connect(dsn) as conn:
        conn.execute("DELETE FROM still WHERE id = 1")
        row_counts = check_markers(conn, markers)["row_counts"]
    assert not row_counts["ok"] and row_counts["mismatched"] == {"public.still": {"expected": 10, "recovered": 9}}
