"""The PITR rows of the ops database: physical base backups in ``dbops.backups`` (kinds ``basebackup`` and
``incremental``) and shipped WAL segments in ``dbops.wal_segments``.

Every function takes a connection from :meth:`OpsDatabaseHook.transaction`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import psycopg

from dbops.core.manifest import Manifest

FULL = "basebackup"
INCREMENTAL = "incremental"


@dataclass(frozen=True)
class BaseBackup:
    backup_id: str
    kind: str
    taken_at: datetime
    verified: bool | None
    manifest: Manifest

    @property
    def parent(self) -> str | None:
        return self.manifest.extra.get("parent")

    @property
    def start_lsn(self) -> str:
        return self.manifest.extra["start_lsn"]


def base_backups(conn: psycopg.Connection, target: str) -> list[BaseBackup]:
    """The target's complete base backups (full and incremental), newest first."""
    rows = conn.execute(
        "SELECT backup_id, kind, coalesce(taken_at, created_at), verified, manifest FROM dbops.backups "
        "WHERE target = %s AND kind IN (%s, %s) AND status = 'complete' ORDER BY 3 DESC, backup_id DESC",
        (target, FULL, INCREMENTAL)).fetchall()
    return [BaseBackup(b, k, t, v, Manifest.from_json(json.dumps(m).encode())) for b, k, t, v, m in rows]


def chain_of(backups: list[BaseBackup], backup_id: str) -> list[BaseBackup]:
    """The full backup and the incrementals leading to ``backup_id``, oldest first.

    :raises LookupError: a parent of the chain is not a complete backup of the catalog.
    """
    by_id = {b.backup_id: b for b in backups}
    chain: list[BaseBackup] = []
    current: str | None = backup_id
    while current is not None:
        if current not in by_id:
            raise LookupError(f"base backup {current} (in the chain of {backup_id}) is not a complete backup "
                              "in the catalog")
        chain.append(by_id[current])
        current = by_id[current].parent
    return chain[::-1]


def record_segment(conn: psycopg.Connection, target: str, segment: str, partial: bool, key: str, stored: int,
                   raw: int, sha256: str) -> None:
    """Record a stored segment (a finished one replaces its partial row; re-recording is idempotent)."""
    conn.execute(
        "INSERT INTO dbops.wal_segments (target, segment, partial, key, bytes, raw_bytes, sha256) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (target, segment) DO UPDATE SET partial = "
        "EXCLUDED.partial, key = EXCLUDED.key, bytes = EXCLUDED.bytes, raw_bytes = EXCLUDED.raw_bytes, "
        "sha256 = EXCLUDED.sha256, stored_at = now() WHERE dbops.wal_segments.partial",
        (target, segment, partial, key, stored, raw, sha256))


def segments(conn: psycopg.Connection, target: str, since: str = "",
             until: str = "~") -> dict[str, tuple[bool, str, str]]:
    """Stored segments of the target named ``since`` to ``until``: ``{segment: (partial, key, sha256)}``."""
    rows = conn.execute("SELECT segment, partial, key, sha256 FROM dbops.wal_segments WHERE target = %s "
                        "AND segment >= %s AND segment <= %s ORDER BY segment", (target, since, until)).fetchall()
    return {segment: (partial, key, sha) for segment, partial, key, sha in rows}


def histories(conn: psycopg.Connection, target: str) -> dict[str, tuple[bool, str, str]]:
    """The stored timeline history files of the target, as :func:`segments` lists segments."""
    rows = conn.execute("SELECT segment, partial, key, sha256 FROM dbops.wal_segments WHERE target = %s "
                        "AND segment LIKE '%%.history' ORDER BY segment", (target,)).fetchall()
    return {segment: (partial, key, sha) for segment, partial, key, sha in rows}


def forget_segments(conn: psycopg.Connection, target: str, before: str) -> int:
    """Drop the rows of segments named before ``before`` (their files were deleted); return how many. History
    files are kept (a few bytes each; recovery across a timeline switch needs them)."""
    return conn.execute("DELETE FROM dbops.wal_segments WHERE target = %s AND segment < %s "
                        "AND segment NOT LIKE '%%.history'", (target, before)).rowcount
