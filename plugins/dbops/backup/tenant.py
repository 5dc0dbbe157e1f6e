"""Per-tenant export: one tenant's rows of every tenant-scoped table, read in one exported snapshot."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from airflow.sdk.exceptions import AirflowFailException
from psycopg import sql

from dbops.backup.dump import exported_snapshot
from dbops.core.manifest import FileEntry
from dbops.core.streams import write_compressed
from dbops.hooks.postgres import DbopsPostgresHook

TOOL = "COPY ... TO STDOUT (FORMAT csv, HEADER)"
_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class TenantExport:
    files: list[FileEntry]
    tables: dict[str, int]
    snapshot_id: str
    server_version: str
    seconds: float


def checked_tenant_id(tenant_id: str) -> str:
    """The tenant id, stripped; anything but 1-128 letters, digits, '.', '_' or '-' is refused."""
    tenant = str(tenant_id).strip()
    if not _TENANT_ID.match(tenant):
        raise AirflowFailException(f"tenant id {tenant_id!r} must be 1-128 letters, digits, '.', '_' or '-'")
    return tenant


def export_tenant(hook: DbopsPostgresHook, tables: list[str], tenant: str, staging: Path, level: int,
                  key: bytes | None) -> TenantExport:
    """Write the rows of ``tables`` whose ``tenant_id`` is ``tenant`` to ``staging/<table>.csv.zst`` (with a
    header, zstd, optionally encrypted), every table read in the same snapshot."""
    started = time.monotonic()
    files, counts = [], {}
    with exported_snapshot(hook) as snapshot:
        for table in tables:
            name = sql.Identifier(*table.split(".", 1))
            counts[table] = snapshot.conn.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(name), (tenant,)).fetchone()[0]
            copy = sql.SQL("COPY (SELECT * FROM {} WHERE tenant_id = {}) TO STDOUT (FORMAT csv, HEADER)").format(
                name, sql.Literal(tenant))
            file_name = f"{table}.csv.zst"
            with snapshot.conn.cursor().copy(copy) as stream:
                stored, raw, sha = write_compressed((bytes(block) for block in stream), staging / file_name,
                                                    level, key)
            files.append(FileEntry(file_name, stored, sha, raw))
    return TenantExport(files, counts, snapshot.snapshot_id, snapshot.server_version, time.monotonic() - started)
