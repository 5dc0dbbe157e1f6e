"""The maintenance log in the ops database (include/sql/ops/004_maintenance_log.sql)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from dbops.hooks.ops import OpsDatabaseHook
from dbops.maintenance.plan import Action


class MaintenanceLogHook(OpsDatabaseHook):
    """History of every maintenance attempt, per target, kind (weekly/daily) and logical date.

    :param postgres_conn_id: the ops database connection.
    """

    hook_name = "dbops maintenance log"

    def done(self, target: str, kind: str, logical_date: datetime) -> dict[tuple[str, str, str], dict[str, Any]]:
        """``(schema, name, action)`` → the finished row, for everything this logical date finished."""
        rows = self.get_records(
            "SELECT schema_name, object_name, action, bytes_before, bytes_after, seconds FROM dbops.maintenance_log "
            "WHERE target = %s AND kind = %s AND logical_date = %s AND status = 'done'",
            parameters=(target, kind, logical_date))
        return {(s, n, a): {"bytes_before": b, "bytes_after": f, "seconds": sec} for s, n, a, b, f, sec in rows}

    def start(self, target: str, kind: str, logical_date: datetime, run_id: str, try_number: int,
              action: Action) -> int:
        """Record an attempt as running (earlier attempts still 'running' were abandoned); return its id."""
        with self.get_conn() as conn:
            conn.execute(
                "UPDATE dbops.maintenance_log SET status = 'failed', finished_at = now(), "
                "error = 'abandoned: the attempt ended without recording an outcome (worker killed or timed out)' "
                "WHERE target = %s AND kind = %s AND logical_date = %s AND schema_name = %s AND object_name = %s "
                "AND action = %s AND status = 'running'",
                (target, kind, logical_date, action.schema_name, action.name, action.action))
            row = conn.execute(
                "INSERT INTO dbops.maintenance_log (target, kind, logical_date, run_id, try_number, object_kind, "
                "schema_name, object_name, action, reason, status) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 'running') RETURNING id",
                (target, kind, logical_date, run_id, try_number, action.object_kind, action.schema_name,
                 action.name, action.action, action.reason)).fetchone()
        return int(row[0])

    def finish(self, entry_id: int, status: str, bytes_before: int | None = None, bytes_after: int | None = None,
               seconds: float | None = None, error: str | None = None) -> None:
        self.run("UPDATE dbops.maintenance_log SET status = %s, bytes_before = %s, bytes_after = %s, seconds = %s, "
                 "error = %s, finished_at = now() WHERE id = %s",
                 parameters=(status, bytes_before, bytes_after, seconds, error, entry_id))

    def attempts(self, target: str, kind: str, logical_date: datetime) -> list[dict[str, Any]]:
        """Every attempt of the logical date, oldest first."""
        with self.get_conn() as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT schema_name, object_name, object_kind, action, status, try_number, run_id, bytes_before, "
                "bytes_after, seconds, error, reason FROM dbops.maintenance_log "
                "WHERE target = %s AND kind = %s AND logical_date = %s ORDER BY id",
                (target, kind, logical_date))
            names = [d.name for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]

    def record_plan(self, target: str, kind: str, logical_date: datetime, run_id: str, dry_run: bool,
                    plan: dict[str, Any]) -> None:
        self.run(
            "INSERT INTO dbops.maintenance_runs (target, kind, logical_date, run_id, dry_run, plan) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (target, kind, logical_date) DO UPDATE SET "
            "run_id = EXCLUDED.run_id, dry_run = EXCLUDED.dry_run, plan = EXCLUDED.plan, planned_at = now()",
            parameters=(target, kind, logical_date, run_id, dry_run, json.dumps(plan, default=str)))

    def record_report(self, target: str, kind: str, logical_date: datetime, report: dict[str, Any]) -> None:
        self.run("UPDATE dbops.maintenance_runs SET report = %s, reported_at = now() "
                 "WHERE target = %s AND kind = %s AND logical_date = %s",
                 parameters=(json.dumps(report, default=str), target, kind, logical_date))
