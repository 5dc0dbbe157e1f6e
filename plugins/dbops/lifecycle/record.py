"""Lifecycle figures in the ops database (``dbops.lifecycle_runs``): one row per policy, job and try.

The functions work in the caller's transaction (:meth:`OpsDatabaseHook.transaction`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

from dbops.lifecycle.batches import Tally


def start(conn: psycopg.Connection, target: str, job: str, table: str, logical_date: datetime, run_id: str,
          try_number: int, cutoff: datetime, cadence_seconds: float) -> int:
    return conn.execute(
        "INSERT INTO dbops.lifecycle_runs (target, job, table_name, logical_date, run_id, try_number, cutoff, "
        "cadence_seconds, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 'running') RETURNING id",
        (target, job, table, logical_date, run_id, try_number, cutoff, cadence_seconds)).fetchone()[0]


def reconcile(conn: psycopg.Connection, target: str, job: str, table: str, run_id: str,
              try_number: int) -> list[str]:
    """Mark ``abandoned`` the rows of ``target``'s ``job`` of ``table`` still ``running``: tries that never
    finished (killed). Call it holding the target's lifecycle lock, so that no other try can be running;
    ``run_id`` and ``try_number`` name the try that found them. Returns one line per row."""
    rows = conn.execute(
        "UPDATE dbops.lifecycle_runs SET status = 'abandoned', error = format('abandoned: try %%s of run %%s "
        "(started %%s) never finished (killed?); found by try %%s of run %%s', try_number, run_id, started_at, "
        "%s::int, %s::text) WHERE target = %s AND job = %s AND table_name = %s AND status = 'running' "
        "RETURNING error", (try_number, run_id, target, job, table)).fetchall()
    return [row[0] for row in rows]


def finish(conn: psycopg.Connection, entry: int, status: str, figures: dict[str, Any],
           error: str | None = None) -> None:
    """Close row ``entry`` with ``figures`` (keys: rows_moved, rows_purged, rows_held_back, rows_behind,
    files_deleted, batches, seconds, max_batch_seconds; missing ones keep their defaults)."""
    conn.execute(
        "UPDATE dbops.lifecycle_runs SET status = %(status)s, rows_moved = %(rows_moved)s, "
        "rows_purged = %(rows_purged)s, rows_held_back = %(rows_held_back)s, rows_behind = %(rows_behind)s, "
        "files_deleted = %(files_deleted)s, batches = %(batches)s, seconds = %(seconds)s, "
        "max_batch_seconds = %(max_batch_seconds)s, error = %(error)s, finished_at = now() WHERE id = %(id)s",
        {"rows_moved": 0, "rows_purged": 0, "rows_held_back": 0, "rows_behind": None, "files_deleted": 0,
         "batches": 0, "seconds": None, "max_batch_seconds": None, **figures, "status": status, "error": error,
         "id": entry})


def tally_figures(tally: Tally, kind: str) -> dict[str, Any]:
    """The figures of a batch loop, its rows counted as ``kind`` (``rows_moved`` or ``rows_purged``)."""
    return {kind: tally.rows, "batches": tally.batches, "seconds": round(tally.seconds, 3),
            "max_batch_seconds": round(tally.max_batch_seconds, 3)}


def latest(conn: psycopg.Connection, target: str | None = None) -> list[tuple]:
    """The newest row per target, job and table: (target, job, table, status, moved, purged, held back,
    behind, cutoff, seconds)."""
    return conn.execute(
        "SELECT DISTINCT ON (target, job, table_name) target, job, table_name, status, rows_moved, rows_purged, "
        "rows_held_back, rows_behind, cutoff, seconds FROM dbops.lifecycle_runs "
        "WHERE %(target)s::text IS NULL OR target = %(target)s "
        "ORDER BY target, job, table_name, started_at DESC", {"target": target}).fetchall()
