"""A retired partition's dump in the backup store, proven by a restore before anything is dropped.

The backup package does the work: its exported snapshot, supervised ``pg_dump`` and zstd stream
(:mod:`dbops.backup.dump`, :mod:`dbops.core.streams`), its manifest and store read-back
(:func:`dbops.backup.runs.new_manifest`, :func:`dbops.backup.store_io.store_backup`) and its verification
restore into a scratch database (:func:`dbops.backup.verify.restore_and_check`). Only the table is dumped
(``--section=pre-data --section=data``: its definition and rows, not the indexes and foreign keys that tie
it to other objects), at ``<target>/partition/<schema.table>/<UTC time>/``.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from psycopg import sql

from dbops.backup.dump import exported_snapshot
from dbops.backup.restore import create_database, drop_database
from dbops.backup.runs import new_manifest
from dbops.backup.store_io import store_backup
from dbops.backup.verify import restore_and_check, scratch_database_name, verification_server
from dbops.core.manifest import FileEntry, Manifest, backup_prefix
from dbops.core.processes import supervised, tool_failed
from dbops.core.streams import CHUNK, write_compressed
from dbops.hooks.keys import encryption_key
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.hooks.tools import find_tool

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.core.config import DbopsConfig
    from dbops.core.store import BackupStore

DUMP_FILE = "partition.pgc.zst"
_SLUG = re.compile(r"[^A-Za-z0-9_.-]+")


def pattern(schema: str, name: str) -> str:
    """pg_dump's ``--table`` pattern matching exactly this table (double quotes make every character literal)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in (schema, name))


def prefix_for(target: str, schema: str, name: str, moment: datetime) -> str:
    """Store prefix of a partition's dump; the name is made key-safe and tagged with its hash."""
    qualified = f"{schema}.{name}"
    slug = _SLUG.sub("_", qualified)[:80] + "-" + hashlib.sha1(qualified.encode()).hexdigest()[:8]
    return backup_prefix(target, "partition", moment, tenant=slug)


def dump_partition(config: DbopsConfig, target: str, context: Context, store: BackupStore, schema: str, name: str,
                   staging: Path, timeout: float) -> Manifest:
    """Dump the detached table, count its rows in the dump's own snapshot, store it and its manifest (written
    last, after the stored file was read back: size and sha256)."""
    policy = config.targets[target].backup
    hook = DbopsPostgresHook(postgres_conn_id=config.targets[target].conn_id)
    tool = find_tool("pg_dump", hook.server_version_num(), config.tools.bin_dir, config.tools.exclusive)
    staging.mkdir(parents=True, exist_ok=True)
    dest = staging / DUMP_FILE
    started = time.monotonic()
    taken_at = datetime.now(timezone.utc).replace(microsecond=0)
    stderr: list[bytes] = []
    lock_ms = int(policy.lock_wait_timeout * 1000)
    with exported_snapshot(hook, lock_ms) as snapshot:
        key_name, rows = snapshot.conn.execute(sql.SQL("SELECT format('%I.%I', {}, {}), count(*) FROM {}").format(
            sql.Literal(schema), sql.Literal(name), sql.Identifier(schema, name))).fetchone()
        args = [tool.path, "--format=custom", "--compress=0", "--no-password", f"--lock-wait-timeout={lock_ms}",
                "--section=pre-data", "--section=data", "--strict-names", f"--table={pattern(schema, name)}",
                f"--snapshot={snapshot.snapshot_id}"]
        with hook.cli_environment() as env, supervised(args, timeout, env=env, stdout=subprocess.PIPE,
                                                       stderr=subprocess.PIPE) as proc:
            reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
            reader.start()
            stored, raw, sha = write_compressed(iter(lambda: proc.stdout.read(CHUNK), b""), dest,
                                                policy.compression_level, encryption_key(policy.encryption_conn_id))
            returncode = proc.wait()
            reader.join()
    if returncode != 0:
        dest.unlink(missing_ok=True)
        raise tool_failed("pg_dump", returncode, b"".join(stderr).decode(errors="replace"))
    manifest = new_manifest(context, policy, store, prefix_for(target, schema, name, taken_at), target,
                            kind="partition", taken_at=taken_at, snapshot_id=snapshot.snapshot_id,
                            server_version=snapshot.server_version, tool=f"{tool.name} {tool.version}",
                            files=[FileEntry(DUMP_FILE, stored, sha, raw)], tables={key_name: rows},
                            dump_seconds=time.monotonic() - started, not_validated=[],
                            archive="pg_dump custom, one table, pre-data + data, -Z0")
    store_backup(store, manifest, staging)
    return manifest


def verify_dump(config: DbopsConfig, target: str, store: BackupStore, manifest: Manifest, schema: str,
                timeout: float) -> dict[str, Any]:
    """Restore the stored dump into a scratch database (dropped after) and compare its row count with the
    manifest's; the outcome has ``ok`` and, when not ok, ``error``."""
    admin = verification_server(config, target)
    scratch = scratch_database_name(target, manifest.backup_id)
    create_database(admin, scratch, replace=True)
    try:
        restored = DbopsPostgresHook(postgres_conn_id=admin.postgres_conn_id, database=scratch)
        with restored.get_conn() as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        return restore_and_check(config, config.targets[target].backup, store, manifest, admin, scratch,
                                 run_amcheck=False, owners=False, timeout=timeout)
    finally:
        drop_database(admin, scratch)
