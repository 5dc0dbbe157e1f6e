"""Restore a stored backup and prove it: checksums, pg_restore, row counts, constraints, amcheck."""

from __future__ import annotations

import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

from dbops.dump import constraint_names, count_rows
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.hooks.store import BackupStore
from dbops.hooks.tools import PgTool, candidates, tool_version
from dbops.manifest import MANIFEST_NAME, Manifest
from dbops.streams import ChecksumMismatch, read_decompressed


class RestoreError(Exception):
    """pg_restore or a post-restore check failed."""


@dataclass
class Verification:
    ok: bool
    checks: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    restore_seconds: float | None = None


def read_manifest(store: BackupStore, prefix: str) -> Manifest | None:
    """The manifest of the backup at ``prefix``, or None when the backup is not complete."""
    key = f"{prefix}/{MANIFEST_NAME}"
    return Manifest.from_json(store.read_bytes(key)) if store.exists(key) else None


def fetch(store: BackupStore, manifest: Manifest, prefix: str, staging: Path, key: bytes | None) -> Path:
    """Download the backup's archive, check size and sha256, decrypt and decompress; return the archive
    (a file, or a directory for a directory-format dump)."""
    staging.mkdir(parents=True, exist_ok=True)
    (entry,) = manifest.files
    stored_size = store.size(f"{prefix}/{entry.name}")
    if stored_size != entry.bytes:
        raise ChecksumMismatch(f"{entry.name}: stored size {stored_size} differs from the manifest's {entry.bytes}")
    downloaded = staging / entry.name
    archive = staging / entry.name.removesuffix(".zst")
    store.get_file(f"{prefix}/{entry.name}", downloaded)
    try:
        read_decompressed(downloaded, archive, entry.sha256, key)
    finally:
        downloaded.unlink(missing_ok=True)
    if archive.suffix != ".tar":
        return archive
    directory = staging / "archive.d"  # a directory-format archive: pg_restore reads the directory
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    archive.unlink()
    return directory


def create_database(admin: DbopsPostgresHook, name: str, replace: bool = False) -> None:
    """Create ``name`` (dropping it first when ``replace``) on the admin hook's server."""
    with admin.get_conn() as conn:
        conn.autocommit = True
        if replace:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))


def drop_database(admin: DbopsPostgresHook, name: str) -> None:
    with admin.get_conn() as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_exists(admin: DbopsPostgresHook, name: str) -> bool:
    return admin.get_first("SELECT 1 FROM pg_database WHERE datname = %s", parameters=(name,)) is not None


def pg_restore(tool: PgTool, admin: DbopsPostgresHook, database: str, archive: Path, jobs: int) -> float:
    """Restore ``archive`` into ``database`` with ``jobs`` parallel jobs; return seconds."""
    started = time.monotonic()
    with admin.cli_environment(database) as env:
        result = subprocess.run(
            [tool.path, "--no-owner", "--no-privileges", "--exit-on-error", f"--jobs={max(jobs, 1)}",
             f"--dbname={database}", str(archive)],
            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RestoreError(f"pg_restore exited with {result.returncode}: {result.stderr.strip()[-2000:]}")
    return time.monotonic() - started


def check_restored(hook: DbopsPostgresHook, manifest: Manifest) -> dict[str, Any]:
    """Compare the restored database with the manifest: every table's rows, every constraint."""
    with hook.get_conn() as conn:
        restored = count_rows(conn)
        names = constraint_names(conn)
        invalid = [row[0] for row in conn.execute(
            "SELECT format('%s %I', conrelid::regclass, conname) FROM pg_constraint "
            "WHERE NOT convalidated AND contype IN ('f', 'c')").fetchall()]
    mismatched = {table: {"expected": manifest.tables.get(table), "restored": restored.get(table)}
                  for table in sorted(set(manifest.tables) | set(restored))
                  if manifest.tables.get(table) != restored.get(table)}
    missing = sorted(set(manifest.constraints) - set(names))
    return {
        "row_counts": {"ok": not mismatched, "tables": len(manifest.tables), "rows": sum(restored.values()),
                       "mismatched": mismatched},
        "constraints": {"ok": not missing and not invalid, "count": len(manifest.constraints),
                        "missing": missing, "not_validated": invalid},
    }


def amcheck(admin: DbopsPostgresHook, database: str, jobs: int) -> dict[str, Any]:
    """Run pg_amcheck on the restored database (indexes and heap), when a fitting one exists."""
    server_major = admin.server_version_num() // 10000
    usable = [path for path in candidates("pg_amcheck") if tool_version(path)[0] >= server_major]
    if not usable:
        return {"ok": True, "skipped": f"no pg_amcheck of version {server_major} or newer"}
    with admin.cli_environment(database) as env:
        result = subprocess.run([usable[0], "--install-missing", f"--jobs={max(jobs, 1)}", f"--database={database}"],
                                env=env, capture_output=True, text=True)
    return {"ok": result.returncode == 0, "output": (result.stdout + result.stderr).strip()[-2000:]}
