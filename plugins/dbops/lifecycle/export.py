"""Exports of archived rows to the backup store: one zstd-compressed JSON-lines file per batch, with a
manifest (table, cutoff, rows, sha256, newest row time), both written before the batch's delete commits.

Which files belong to committed batches is recorded in ``archive.dbops_exports`` of the target, in the
batch's own transaction: a file whose batch rolled back (a crash after the upload) is not in it and is
deleted by the next export of the table, so the store never holds a row twice. Files whose newest row is
past retention are deleted by the retention purge.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import datetime

import psycopg
import zstandard
from psycopg import sql

from dbops.core.store import BackupStore
from dbops.lifecycle.policy import ARCHIVE_SCHEMA, LifecyclePolicy

EXPORTS_TABLE = sql.Identifier(ARCHIVE_SCHEMA, "dbops_exports")
COMPRESSION_LEVEL = 3


def export_prefix(target: str, table: str) -> str:
    return f"{target}/lifecycle/{table}/"


class Exporter:
    """Writes each batch's rows (JSON lines) to the store inside the batch's transaction."""

    def __init__(self, store: BackupStore, target: str, policy: LifecyclePolicy, cutoff: datetime):
        self.store, self.policy, self.cutoff = store, policy, cutoff
        self.prefix = export_prefix(target, policy.table)
        self.prepared = False

    def _prepare(self, conn: psycopg.Connection) -> None:
        """Create the exports table; delete files of batches that never committed (outside any batch)."""
        with conn.transaction():  # a savepoint inside the batch's transaction
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(ARCHIVE_SCHEMA)))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (key text PRIMARY KEY, table_name text NOT NULL, "
                                 "cutoff timestamptz NOT NULL, newest timestamptz, rows bigint NOT NULL, "
                                 "sha256 text NOT NULL, bytes bigint NOT NULL, "
                                 "created_at timestamptz NOT NULL DEFAULT now())").format(EXPORTS_TABLE))
            committed = {r[0] for r in conn.execute(sql.SQL("SELECT key FROM {} WHERE table_name = %s").format(
                EXPORTS_TABLE), (self.policy.table,)).fetchall()}
        for key in self.store.list_keys(self.prefix):
            if key.removesuffix(".manifest.json") not in committed:
                self.store.delete(key)
        self.prepared = True

    def write(self, conn: psycopg.Connection, lines: list[str]) -> str:
        """Store ``lines`` and its manifest, and record the file in the batch's transaction; returns the key."""
        if not self.prepared:
            self._prepare(conn)
        raw = ("\n".join(lines) + "\n").encode()
        data = zstandard.ZstdCompressor(level=COMPRESSION_LEVEL, write_checksum=True).compress(raw)
        sha256 = hashlib.sha256(data).hexdigest()
        times = [json.loads(line).get(self.policy.time_column) for line in lines]
        newest = max((datetime.fromisoformat(t) for t in times if t), default=None)
        key = f"{self.prefix}{self.cutoff:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:12]}.jsonl.zst"
        manifest = {"table": self.policy.table, "cutoff": self.cutoff.isoformat(), "rows": len(lines),
                    "sha256": sha256, "bytes": len(data), "newest": newest.isoformat() if newest else None,
                    "format": "JSON lines (row_to_json), zstd"}
        self.store.put_bytes(key, data)
        self.store.put_bytes(f"{key}.manifest.json", json.dumps(manifest, indent=2).encode())
        conn.execute(sql.SQL("INSERT INTO {} (key, table_name, cutoff, newest, rows, sha256, bytes) "
                             "VALUES (%s, %s, %s, %s, %s, %s, %s)").format(EXPORTS_TABLE),
                     (key, self.policy.table, self.cutoff, newest, len(lines), sha256, len(data)))
        return key


def purge_exports(conn: psycopg.Connection, store: BackupStore, target: str, policy: LifecyclePolicy,
                  cutoff: datetime) -> int:
    """Delete the exported files of ``policy`` whose newest row is older than ``cutoff``; returns how many."""
    if conn.execute("SELECT to_regclass(%s)", (f"{ARCHIVE_SCHEMA}.dbops_exports",)).fetchone()[0] is None:
        return 0
    keys = [r[0] for r in conn.execute(sql.SQL("SELECT key FROM {} WHERE table_name = %s AND newest < %s").format(
        EXPORTS_TABLE), (policy.table, cutoff)).fetchall()]
    for key in keys:
        store.delete(f"{key}.manifest.json")
        store.delete(key)
        conn.execute(sql.SQL("DELETE FROM {} WHERE key = %s").format(EXPORTS_TABLE), (key,))
    return len(keys)
