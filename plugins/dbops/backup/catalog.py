"""The backup catalog in the ops database: ``dbops.backups`` (one row per backup or tenant export) and
``dbops.recovery_tests`` (one row per verification restore).

Every function takes a connection from :meth:`OpsDatabaseHook.transaction`; a write commits with it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from airflow.sdk.exceptions import AirflowFailException

from dbops.backup.retention import BackupRecord
from dbops.core.manifest import IncompleteBackup, Manifest, write_manifest

if TYPE_CHECKING:
    from dbops.core.store import BackupStore

# A backup's snapshot time; rows written without one count from when they were recorded.
_TAKEN_AT = "coalesce(taken_at, created_at)"


class BackupGone(AirflowFailException):
    """The backup's catalog row is being deleted (or is deleted): it is never made complete again."""


def record_backup(conn: psycopg.Connection, manifest: Manifest) -> None:
    """Index a complete backup (idempotent: a retried task re-records the same row).

    :raises BackupGone: the row exists and is being deleted or deleted; it stays so.
    """
    recorded = conn.execute(
        """
        INSERT INTO dbops.backups (backup_id, target, kind, logical_date, run_id, location, bytes, tables,
                                   total_rows, verified, manifest, taken_at, covers, run_type, storage)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, NULL, %s, %s, %s, %s, %s)
        ON CONFLICT (backup_id) DO UPDATE SET manifest = EXCLUDED.manifest
        WHERE dbops.backups.status = 'complete'
        RETURNING 1
        """,
        (manifest.backup_id, manifest.target, manifest.kind, manifest.logical_date, manifest.run_id,
         manifest.location, manifest.total_bytes, len(manifest.tables), manifest.total_rows,
         manifest.to_json().decode(), manifest.taken_at, manifest.covers, manifest.run_type,
         manifest.storage)).fetchone()
    if recorded is None:
        raise BackupGone(f"backup {manifest.backup_id} is being deleted by retention (or is deleted); "
                         "it is not recorded as complete again")


def record_recovery_test(conn: psycopg.Connection, backup_id: str, target: str, run_id: str, started_at: datetime,
                         restore_seconds: float | None, ok: bool, checks: dict[str, Any], error: str | None,
                         failure_unverifies: bool = True) -> None:
    """Store one verification restore and set the backup's verified flag to its outcome (a failure leaves
    the flag alone unless ``failure_unverifies``)."""
    conn.execute(
        "INSERT INTO dbops.recovery_tests (backup_id, target, run_id, started_at, restore_seconds, ok, "
        "checks, error) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (backup_id, target, run_id, started_at, restore_seconds, ok, json.dumps(checks), error))
    if ok or failure_unverifies:
        conn.execute("UPDATE dbops.backups SET verified = %s WHERE backup_id = %s", (ok, backup_id))


def rewrite_manifest(conn: psycopg.Connection, store: BackupStore, manifest: Manifest) -> None:
    """Rewrite a catalogued backup's manifest (e.g. with its verification) under a share lock of its row.

    Retention marks a row ``deleting`` with an UPDATE, which waits for this lock until the transaction
    ends: the manifest is written only while the row is ``complete`` and every file it lists is stored.

    :raises BackupGone: the row is being deleted or deleted.
    :raises AirflowFailException: a file of the backup is missing or has another size.
    """
    row = conn.execute("SELECT status FROM dbops.backups WHERE backup_id = %s FOR SHARE",
                       (manifest.backup_id,)).fetchone()
    if row is None or row[0] != "complete":
        state = "not in the catalog" if row is None else f"{row[0]} in the catalog"
        raise BackupGone(f"backup {manifest.backup_id} is {state}; its manifest is not rewritten")
    try:
        write_manifest(store, manifest)
    except IncompleteBackup as err:
        raise AirflowFailException(str(err)) from err
    conn.execute("UPDATE dbops.backups SET manifest = %s WHERE backup_id = %s",
                 (manifest.to_json().decode(), manifest.backup_id))


def backups(conn: psycopg.Connection, target: str, kind: str = "full", status: str = "complete") -> list[BackupRecord]:
    """The target's backups of ``kind`` in ``status``, newest snapshot first."""
    rows = conn.execute(
        f"SELECT backup_id, {_TAKEN_AT}, verified, run_type FROM dbops.backups "
        f"WHERE target = %s AND kind = %s AND status = %s ORDER BY 2 DESC, backup_id DESC",
        (target, kind, status)).fetchall()
    return [BackupRecord(*row) for row in rows]


def backup_of_run(conn: psycopg.Connection, target: str, run_id: str) -> Manifest | None:
    """The complete full backup the run ``run_id`` took, if any (a retried task finds its own)."""
    return _manifest_where(conn, "run_id = %s ORDER BY taken_at DESC", (target, run_id))


def backups_taken_since(conn: psycopg.Connection, target: str, since: datetime) -> list[Manifest]:
    """Complete full backups, not failed verification, whose snapshot is at or after ``since``, oldest first."""
    rows = conn.execute(f"SELECT manifest FROM dbops.backups WHERE target = %s AND kind = 'full' "
                        f"AND status = 'complete' AND verified IS NOT FALSE AND {_TAKEN_AT} >= %s "
                        f"ORDER BY {_TAKEN_AT}", (target, since)).fetchall()
    return [Manifest.from_json(json.dumps(row[0]).encode()) for row in rows]


def _manifest_where(conn: psycopg.Connection, condition: str, parameters: tuple) -> Manifest | None:
    row = conn.execute(f"SELECT manifest FROM dbops.backups WHERE target = %s AND kind = 'full' "
                       f"AND status = 'complete' AND {condition} LIMIT 1", parameters).fetchone()
    return None if row is None else Manifest.from_json(json.dumps(row[0]).encode())


def is_catalogued(conn: psycopg.Connection, backup_id: str) -> bool:
    """Whether the catalog has a row for ``backup_id``, whatever its status."""
    return conn.execute("SELECT 1 FROM dbops.backups WHERE backup_id = %s", (backup_id,)).fetchone() is not None


def mark_deleting(conn: psycopg.Connection, backup_id: str) -> bool:
    """Mark a backup ``deleting`` (its row lock waits for a manifest being rewritten); False when deleted."""
    row = conn.execute("UPDATE dbops.backups SET status = 'deleting' WHERE backup_id = %s "
                       "AND status IN ('complete', 'deleting') RETURNING 1", (backup_id,)).fetchone()
    return row is not None


def mark_deleted(conn: psycopg.Connection, backup_id: str) -> None:
    """Record a backup whose files are all gone as ``deleted``."""
    conn.execute("UPDATE dbops.backups SET status = 'deleted', deleted_at = now() WHERE backup_id = %s",
                 (backup_id,))
