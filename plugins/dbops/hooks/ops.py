"""The ops database: the backup catalog and the recovery tests (history that outlives any target)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from dbops.hooks.postgres import DbopsPostgresHook
from dbops.manifest import Manifest
from dbops.retention import BackupRecord


class OpsDatabaseHook(DbopsPostgresHook):
    """:class:`DbopsPostgresHook` (bounded connect) on the ops database (connection ``ops_conn_id`` in dbops.yaml).

    :param postgres_conn_id: the ops database connection.
    """

    hook_name = "dbops ops database"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("log_sql", False)  # manifests are long; the operators log one line per action
        super().__init__(*args, **kwargs)

    def record_backup(self, manifest: Manifest) -> None:
        """Index a complete backup (idempotent: a retried task re-records the same row)."""
        self.run(
            """
            INSERT INTO dbops.backups (backup_id, target, kind, logical_date, run_id, location, bytes, tables,
                                       total_rows, verified, manifest)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s)
            ON CONFLICT (backup_id) DO UPDATE SET manifest = EXCLUDED.manifest, status = 'complete',
                deleted_at = NULL
            """,
            parameters=(manifest.backup_id, manifest.target, manifest.kind, manifest.logical_date, manifest.run_id,
                        manifest.location, manifest.total_bytes, len(manifest.tables), manifest.total_rows,
                        manifest.to_json().decode()),
        )

    def record_recovery_test(self, backup_id: str, target: str, run_id: str, started_at: datetime,
                             restore_seconds: float | None, ok: bool, checks: dict[str, Any],
                             error: str | None) -> None:
        """Store one verification restore and set the backup's verified flag to its outcome, atomically."""
        with self.get_conn() as conn:
            conn.execute(
                "INSERT INTO dbops.recovery_tests (backup_id, target, run_id, started_at, restore_seconds, ok, "
                "checks, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                (backup_id, target, run_id, started_at, restore_seconds, ok, json.dumps(checks), error))
            conn.execute("UPDATE dbops.backups SET verified = %s WHERE backup_id = %s", (ok, backup_id))

    def backups(self, target: str, kind: str = "full", status: str = "complete") -> list[BackupRecord]:
        """The target's backups in ``status``, newest first."""
        rows = self.get_records(
            "SELECT backup_id, logical_date, verified FROM dbops.backups WHERE target = %s AND kind = %s "
            "AND status = %s ORDER BY logical_date DESC, backup_id DESC",
            parameters=(target, kind, status))
        return [BackupRecord(backup_id, logical_date, verified) for backup_id, logical_date, verified in rows]

    def manifest(self, backup_id: str) -> Manifest | None:
        row = self.get_first("SELECT manifest FROM dbops.backups WHERE backup_id = %s AND status = 'complete'",
                             parameters=(backup_id,))
        return None if row is None else Manifest.from_json(json.dumps(row[0]).encode())

    def set_status(self, backup_id: str, status: str) -> None:
        self.run("UPDATE dbops.backups SET status = %s, deleted_at = CASE WHEN %s = 'deleted' THEN now() END "
                 "WHERE backup_id = %s", parameters=(status, status, backup_id))
