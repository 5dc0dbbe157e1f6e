"""A consistent dump: row counts and pg_dump read the same exported snapshot.

A REPEATABLE READ transaction exports its snapshot and stays open while ``pg_dump --snapshot``
dumps it; meanwhile the same transaction counts every table's rows and lists the constraints, so the
manifest's figures describe exactly what the dump holds. pg_dump writes an uncompressed custom-format
archive to a pipe and Python compresses it with multi-threaded zstd (much faster than pg_dump's gzip).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from dbops.hooks.postgres import DbopsPostgresHook
from dbops.hooks.tools import PgTool
from dbops.core.processes import DEFAULT_TIMEOUT, supervised, tool_failed
from dbops.core.streams import CHUNK, write_compressed

# Leaf tables whose data pg_dump writes (partitioned parents hold none; extension tables are skipped).
_TABLES = """
SELECT n.nspname, c.relname, format('%I.%I', n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' {logged_only}
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
  AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                  AND d.deptype = 'e')
ORDER BY 1, 2
"""
# Primary-key, unique, foreign-key and check constraints, schema-qualified whatever the search_path (and
# with the bare table name, as manifests of older versions may have them), and whether each is validated.
_CONSTRAINTS = """
SELECT format('%I.%I %s %I', n.nspname, t.relname, c.contype, c.conname),
       format('%I %s %I', t.relname, c.contype, c.conname), c.convalidated
FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE c.contype IN ('p', 'u', 'f', 'c') AND c.conislocal
  AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'
ORDER BY 1
"""


@dataclass(frozen=True)
class Snapshot:
    """An open transaction that exported its snapshot: other sessions (pg_dump) can read the same data."""

    conn: psycopg.Connection
    snapshot_id: str
    server_version: str


@contextmanager
def exported_snapshot(hook: DbopsPostgresHook, lock_wait_ms: int | None = None) -> Iterator[Snapshot]:
    """A REPEATABLE READ, READ ONLY transaction on the hook's database that exports its snapshot; rolled back
    after the block. With ``lock_wait_ms`` its own statements wait at most that long for a lock."""
    with hook.get_conn() as conn:
        conn.autocommit = False
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if lock_wait_ms is not None:
            conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_wait_ms)))
        snapshot_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        server_version = conn.execute("SHOW server_version").fetchone()[0]
        yield Snapshot(conn, snapshot_id, server_version)
        conn.rollback()


@dataclass(frozen=True)
class DumpResult:
    path: Path
    bytes: int
    raw_bytes: int
    sha256: str
    snapshot_id: str
    server_version: str
    tool: str
    tables: dict[str, int]
    constraints: list[str]
    seconds: float
    not_validated: list[str] | None = None  # None: names from before they were schema-qualified


def dump_database(hook: DbopsPostgresHook, tool: PgTool, dest: Path, level: int, key: bytes | None = None,
                  lock_wait_seconds: float = 300, fmt: str = "custom", jobs: int = 1,
                  timeout: float = DEFAULT_TIMEOUT) -> DumpResult:
    """Dump the hook's database in one snapshot into ``dest`` (zstd, optionally encrypted).

    ``fmt`` ``custom`` streams pg_dump's archive straight into the compressor; ``directory`` lets
    ``jobs`` pg_dump workers dump tables in parallel into a staging directory, then stores it as one
    tar stream. Neither pg_dump nor the row counts wait longer than ``lock_wait_seconds`` for a lock;
    pg_dump (and tar) are killed after ``timeout`` seconds, and at once when compressing fails.
    """
    started = time.monotonic()
    lock_wait_ms = int(lock_wait_seconds * 1000)
    workdir = dest.with_name(dest.name + ".d")
    args = [tool.path, f"--format={fmt}", "--compress=0", "--no-password", f"--lock-wait-timeout={lock_wait_ms}"]
    if fmt == "directory":
        args += [f"--jobs={max(jobs, 1)}", f"--file={workdir}"]
    stored = raw = sha = returncode = None
    stderr: list[bytes] = []
    counts: dict = {}
    try:
        with exported_snapshot(hook, lock_wait_ms) as snapshot:
            conn = snapshot.conn
            counter = threading.Thread(target=_count_into, args=(conn, counts), daemon=True)
            counter.start()
            try:
                with hook.cli_environment() as env, supervised(
                        [*args, f"--snapshot={snapshot.snapshot_id}"], timeout, env=env, stderr=subprocess.PIPE,
                        stdout=subprocess.PIPE if fmt == "custom" else subprocess.DEVNULL) as proc:
                    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
                    reader.start()
                    if fmt == "custom":  # a failure here kills pg_dump, which would block on the full pipe
                        stored, raw, sha = write_compressed(iter(lambda: proc.stdout.read(CHUNK), b""), dest,
                                                            level, key)
                    returncode = proc.wait()  # the snapshot's transaction stays open until every worker is done
                    reader.join()
            finally:
                if returncode != 0:
                    conn.cancel_safe()  # the counts are worthless now; do not wait for them
                counter.join()
        if "error" in counts and not isinstance(counts["error"], psycopg.errors.QueryCanceled):
            raise counts["error"]  # the first cause: pg_dump fails too once the snapshot's transaction aborts
        if returncode != 0:
            raise tool_failed("pg_dump", returncode, b"".join(stderr).decode(errors="replace"))
        if fmt == "directory":
            with closing(_tar_stream(workdir, timeout)) as chunks:
                stored, raw, sha = write_compressed(chunks, dest, level, key)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return DumpResult(dest, stored, raw, sha, snapshot.snapshot_id, snapshot.server_version,
                      f"{tool.name} {tool.version}", counts["tables"], counts["constraints"],
                      time.monotonic() - started, counts["not_validated"])


def _tar_stream(directory: Path, timeout: float) -> Iterator[bytes]:
    """The files of a pg_dump directory archive as one uncompressed tar stream, in chunks."""
    with supervised(["tar", "-C", str(directory), "-cf", "-", "."], timeout, stdout=subprocess.PIPE) as proc:
        yield from iter(lambda: proc.stdout.read(CHUNK), b"")
        if proc.wait() != 0:
            raise OSError(f"tar of {directory} exited with {proc.returncode}")


def count_rows(conn, logged_only: bool = False) -> dict[str, int]:
    """Rows of every table whose data pg_dump writes (``ONLY`` the table, not its inheritance children),
    keyed by quoted ``schema.table``; ``logged_only`` leaves out unlogged tables (empty after recovery)."""
    tables = {}
    query = _TABLES.format(logged_only="AND c.relpersistence = 'p'" if logged_only else "")
    for schema, table, name in conn.execute(query).fetchall():
        count = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        tables[name] = conn.execute(count).fetchone()[0]
    return tables


def constraints(conn) -> list[tuple[str, str, bool]]:
    """Primary-key, unique, foreign-key and check constraints: (``schema.table type name``, the same with
    the bare table name, validated)."""
    return conn.execute(_CONSTRAINTS).fetchall()


def _count_into(conn, out: dict) -> None:
    """Count rows and list constraints in the exporting transaction (the dump's snapshot)."""
    try:
        out["tables"] = count_rows(conn)
        listed = constraints(conn)
        out["constraints"] = [name for name, _, _ in listed]
        out["not_validated"] = [name for name, _, valid in listed if not valid]
    except Exception as err:  # re-raised in the caller's thread
        out["error"] = err
