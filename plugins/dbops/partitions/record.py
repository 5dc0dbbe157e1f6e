"""The partitions history in the ops database (include/sql/ops/010_partitions.sql, 013_partition_detaching.sql).

Each function works in the transaction of the ops-database connection it is given
(``OpsDatabaseHook.transaction()``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from dbops.partitions.plan import RetiredRange
from dbops.partitions.tree import TableInspection, as_dict
from dbops.partitions.policy import TablePolicy


def record_plan(conn: psycopg.Connection, target: str, logical_date: datetime, run_id: str, dry_run: bool,
                plan: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO dbops.partition_runs (target, logical_date, run_id, dry_run, plan) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (target, logical_date) DO UPDATE SET run_id = EXCLUDED.run_id, dry_run = EXCLUDED.dry_run, "
        "plan = EXCLUDED.plan, planned_at = now()", (target, logical_date, run_id, dry_run, Jsonb(plan)))


def record_report(conn: psycopg.Connection, target: str, logical_date: datetime, report: dict[str, Any]) -> None:
    conn.execute("UPDATE dbops.partition_runs SET report = %s, reported_at = now() WHERE target = %s "
                 "AND logical_date = %s", (Jsonb(report), target, logical_date))


def record_step(conn: psycopg.Connection, target: str, logical_date: datetime, run_id: str, table: str, step: str,
                partition: str, status: str, rows: int | None = None, bytes_: int | None = None,
                seconds: float | None = None, detail: str | None = None) -> None:
    conn.execute(
        "INSERT INTO dbops.partition_steps (target, logical_date, run_id, table_name, step, partition_name, status, "
        "rows, bytes, seconds, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (target, logical_date, run_id, table, step, partition, status, rows, bytes_, seconds, detail))


def steps_of_run(conn: psycopg.Connection, target: str, logical_date: datetime, run_id: str) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT table_name, step, partition_name, status, rows, bytes, seconds, detail "
                           "FROM dbops.partition_steps WHERE target = %s AND logical_date = %s AND run_id = %s "
                           "ORDER BY id", (target, logical_date, run_id)).fetchall()


def record_retirement(conn: psycopg.Connection, target: str, table: str, schema: str, name: str, lower: str,
                      upper: str, mode: str, status: str, **fields: Any) -> None:
    """Insert or update the retired partition's row; ``fields``: backup_id, rows, sha256, bytes, error."""
    columns = ("backup_id", "rows", "sha256", "bytes", "error")
    values = [fields.get(c) for c in columns]
    conn.execute(
        "INSERT INTO dbops.partition_retirements (target, table_name, partition_schema, partition_name, lower_bound, "
        "upper_bound, mode, status, backup_id, rows, sha256, bytes, error) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (target, partition_schema, partition_name) DO UPDATE SET mode = EXCLUDED.mode, "
        "status = EXCLUDED.status, backup_id = coalesce(EXCLUDED.backup_id, partition_retirements.backup_id), "
        "rows = coalesce(EXCLUDED.rows, partition_retirements.rows), "
        "sha256 = coalesce(EXCLUDED.sha256, partition_retirements.sha256), "
        "bytes = coalesce(EXCLUDED.bytes, partition_retirements.bytes), error = EXCLUDED.error, updated_at = now()",
        (target, table, schema, name, lower, upper, mode, status, *values))


def unfinished_retirements(conn: psycopg.Connection, target: str, table: str,
                           cutoff: datetime | None) -> list[dict[str, Any]]:
    """Partitions due for retirement (upper bound at or before ``cutoff``; None: none) whose detach an earlier
    run started (``detaching``: it may have been killed before recording the outcome), or detached by earlier
    runs with their archive or drop still to do (or refused)."""
    if cutoff is None:
        return []
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT partition_schema, partition_name, lower_bound, upper_bound, mode, status "
            "FROM dbops.partition_retirements WHERE target = %s AND table_name = %s AND upper_bound <= %s "
            "AND ((status = 'detached' AND mode <> 'detach') OR status IN ('detaching', 'drop_refused')) "
            "ORDER BY lower_bound",
            (target, table, cutoff)).fetchall()


def retired_ranges(conn: psycopg.Connection, target: str) -> dict[str, list[RetiredRange]]:
    """Every retirement of the target's tables, per table (the plan never re-creates a range retired after its
    logical date; tables named like partitions that dbops retired are not reported as strays)."""
    ranges: dict[str, list[RetiredRange]] = {}
    for table, *fields in conn.execute(
            "SELECT table_name, partition_schema, partition_name, lower_bound, upper_bound, status, updated_at "
            "FROM dbops.partition_retirements WHERE target = %s ORDER BY lower_bound", (target,)).fetchall():
        ranges.setdefault(table, []).append(RetiredRange(*fields))
    return ranges


def record_status(conn: psycopg.Connection, target: str, found: TableInspection, policy: TablePolicy,
                  logical_date: datetime, covered: datetime | None) -> None:
    """The table's state for the alert rules (one row per table, replaced by each inspection)."""
    attached = [p for p in found.partitions if not p.detach_pending and p.upper is not None]
    parts = policy.retention_parts
    partitions = [as_dict(p) for p in found.partitions] + ([as_dict(found.default)] if found.default else [])
    conn.execute(
        "INSERT INTO dbops.partition_status (target, table_name, logical_date, interval, premake, retention, "
        "covered_until, oldest_upper, default_rows, detach_pending, partitions) "
        "VALUES (%s, %s, %s, %s, %s, %s::interval, %s, %s, %s, %s, %s) "
        "ON CONFLICT (target, table_name) DO UPDATE SET logical_date = EXCLUDED.logical_date, "
        "interval = EXCLUDED.interval, premake = EXCLUDED.premake, retention = EXCLUDED.retention, "
        "covered_until = EXCLUDED.covered_until, oldest_upper = EXCLUDED.oldest_upper, "
        "default_rows = EXCLUDED.default_rows, detach_pending = EXCLUDED.detach_pending, "
        "partitions = EXCLUDED.partitions, updated_at = now()",
        (target, found.table, logical_date, policy.interval, policy.premake,
         f"{parts[0]} {parts[1]}" if parts else None, covered, min((p.upper for p in attached), default=None),
         found.default_rows, sum(p.detach_pending for p in found.partitions), Jsonb(partitions)))
