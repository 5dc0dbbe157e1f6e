"""The maintenance log in the ops database (include/sql/ops/004_maintenance_log.sql).

Every attempt of an action, per target, kind (weekly/daily) and logical date, and each run's plan and
report (``dbops.maintenance_runs``). Each function works in the transaction of the ops-database
connection it is given (``OpsDatabaseHook.transaction()``).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dbops.maintenance.plan import Action

ABANDONED = "abandoned: the attempt ended without recording an outcome (worker killed or timed out)"


def finished(conn: psycopg.Connection, target: str, kind: str, logical_date: datetime
             ) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``(schema, name, action)`` → the finished row, for everything this logical date finished."""
    rows = conn.execute(
        "SELECT schema_name, object_name, action, bytes_before, bytes_after, seconds FROM dbops.maintenance_log "
        "WHERE target = %s AND kind = %s AND logical_date = %s AND status = 'done'",
        (target, kind, logical_date)).fetchall()
    return {(s, n, a): {"bytes_before": b, "bytes_after": f, "seconds": sec} for s, n, a, b, f, sec in rows}


def done_since(conn: psycopg.Connection, target: str, action: Action, since: datetime) -> dict[str, Any] | None:
    """The newest attempt of any run that finished ``action`` on the same object after ``since``."""
    row = conn.execute(
        "SELECT run_id, finished_at, bytes_before, bytes_after, seconds FROM dbops.maintenance_log "
        "WHERE target = %s AND schema_name = %s AND object_name = %s AND action = %s AND status = 'done' "
        "AND finished_at >= %s ORDER BY finished_at DESC LIMIT 1",
        (target, action.schema_name, action.name, action.action, since)).fetchone()
    if row is None:
        return None
    return dict(zip(("run_id", "finished_at", "bytes_before", "bytes_after", "seconds"), row))


def start(conn: psycopg.Connection, target: str, kind: str, logical_date: datetime, run_id: str,
          try_number: int, action: Action) -> int:
    """Record an attempt as running (earlier attempts still 'running' were abandoned); return its id."""
    conn.execute(
        "UPDATE dbops.maintenance_log SET status = 'failed', finished_at = now(), error = %s "
        "WHERE target = %s AND kind = %s AND logical_date = %s AND schema_name = %s AND object_name = %s "
        "AND action = %s AND status = 'running'",
        (ABANDONED, target, kind, logical_date, action.schema_name, action.name, action.action))
    row = conn.execute(
        "INSERT INTO dbops.maintenance_log (target, kind, logical_date, run_id, try_number, object_kind, "
        "schema_name, object_name, action, reason, status) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'running') RETURNING id",
        (target, kind, logical_date, run_id, try_number, action.object_kind, action.schema_name,
         action.name, action.action, action.reason)).fetchone()
    return int(row[0])


def finish(conn: psycopg.Connection, entry_id: int, status: str, bytes_before: int | None = None,
           bytes_after: int | None = None, seconds: float | None = None, error: str | None = None) -> None:
    """Record the outcome of the attempt ``entry_id``."""
    conn.execute(
        "UPDATE dbops.maintenance_log SET status = %s, bytes_before = %s, bytes_after = %s, seconds = %s, "
        "error = %s, finished_at = now() WHERE id = %s",
        (status, bytes_before, bytes_after, seconds, error, entry_id))


def attempts(conn: psycopg.Connection, target: str, kind: str, logical_date: datetime) -> list[dict[str, Any]]:
    """Every attempt of the logical date, oldest first."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT schema_name, object_name, object_kind, action, status, try_number, run_id, bytes_before, "
            "bytes_after, seconds, error, reason FROM dbops.maintenance_log "
            "WHERE target = %s AND kind = %s AND logical_date = %s ORDER BY id",
            (target, kind, logical_date)).fetchall()


def record_plan(conn: psycopg.Connection, target: str, kind: str, logical_date: datetime, run_id: str,
                dry_run: bool, plan: dict[str, Any]) -> None:
    """Store the run's plan (a rerun for the same logical date replaces it)."""
    conn.execute(
        "INSERT INTO dbops.maintenance_runs (target, kind, logical_date, run_id, dry_run, plan) "
        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (target, kind, logical_date) DO UPDATE SET "
        "run_id = EXCLUDED.run_id, dry_run = EXCLUDED.dry_run, plan = EXCLUDED.plan, planned_at = now()",
        (target, kind, logical_date, run_id, dry_run, Jsonb(plan, dumps=_dumps)))


def record_report(conn: psycopg.Connection, target: str, kind: str, logical_date: datetime,
                  report: dict[str, Any]) -> None:
    """Store the run's report beside its plan."""
    conn.execute(
        "UPDATE dbops.maintenance_runs SET report = %s, reported_at = now() "
        "WHERE target = %s AND kind = %s AND logical_date = %s",
        (Jsonb(report, dumps=_dumps), target, kind, logical_date))


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)
