"""Nightly backup: consistent dump → store → verification restore → report."""

from __future__ import annotations

import base64
import json
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from dbops.manifest import MANIFEST_NAME, FileEntry, Manifest, backup_prefix
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.config import BackupPolicy, DbopsConfig
    from dbops.dump import DumpResult
    from dbops.hooks.store import BackupStore

DUMP_FILE = "dump.pgc.zst"  # custom format
DUMP_FILES = {"custom": DUMP_FILE, "directory": "dump.dir.tar.zst"}
ARCHIVES = {"custom": "pg_dump custom, -Z0", "directory": "pg_dump directory (tar), -Z0"}


def encryption_key(conn_id: str | None) -> bytes | None:
    """The AES-256 key: the password of Airflow connection ``conn_id``, base64 of 32 bytes."""
    if not conn_id:
        return None
    from airflow.sdk import BaseHook

    secret = BaseHook.get_connection(conn_id).password or ""
    try:
        key = base64.b64decode(secret, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise AirflowFailException(f"connection {conn_id!r}: the password must be a base64-encoded 32-byte key "
                                   "(e.g. `openssl rand -base64 32`)")
    return key


class _BackupTargetOperator(TargetOperator):
    """A target operator that needs the target's backup policy and store."""

    def _setup(self) -> tuple[DbopsConfig, BackupPolicy, BackupStore]:
        from dbops.hooks.store import get_store

        config = self.load_config()
        policy = config.targets[self.target].backup
        if policy is None:
            raise AirflowFailException(f"target {self.target!r} has no backup policy in {config.path}")
        return config, policy, get_store(config.storage[policy.storage])


class PgBackupOperator(_BackupTargetOperator):
    """Dump the target in one snapshot, store the archive, verify what was stored, write the manifest last.

    A run for a logical date whose backup is complete does nothing (a complete backup is never
    overwritten); leftovers of an incomplete attempt are removed first. A dump that finished but could
    not be stored is kept in staging and reused by the retry.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.errors import classify
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.restore import read_manifest
        from dbops.runs import run_date

        config, policy, store = self._setup()
        logical_date = run_date(context)
        prefix = backup_prefix(self.target, "full", logical_date)
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        try:
            existing = read_manifest(store, prefix)
            leftovers = [] if existing else store.list_keys(prefix)
        except Exception as err:
            raise classify(err, f"reading {store.describe()} failed before dumping") from err
        if existing is not None:
            self.log.info("backup %s is already complete in %s; not overwriting it", prefix, store.describe())
            ops.record_backup(existing)
            return _result(existing)
        for leftover in leftovers:
            self.log.info("removing %s left by an incomplete attempt", leftover)
            store.delete(leftover)

        staging = config.staging_path / prefix.replace("/", "__")
        dump = self._staged_or_new_dump(config, policy, staging)
        started = time.monotonic()
        try:
            store.put_file(dump.path, f"{prefix}/{dump.path.name}")
            _verify_stored(store, f"{prefix}/{dump.path.name}", dump)
        except Exception as err:
            raise classify(err, f"storing {prefix} in {store.describe()} failed; the dump stays staged in "
                                f"{staging}") from err
        upload_seconds = time.monotonic() - started
        manifest = self._manifest(context, policy, store, prefix, dump, upload_seconds)
        store.put_bytes(f"{prefix}/{MANIFEST_NAME}", manifest.to_json())
        ops.record_backup(manifest)
        shutil.rmtree(staging, ignore_errors=True)
        self.log.info("backup %s complete: %d bytes (%d raw), %d tables, %d rows, dump %.1f s, upload %.1f s",
                      prefix, dump.bytes, dump.raw_bytes, len(dump.tables), sum(dump.tables.values()),
                      dump.seconds, upload_seconds)
        return _result(manifest)

    def _staged_or_new_dump(self, config: DbopsConfig, policy: BackupPolicy, staging: Path) -> DumpResult:
        from dbops.dump import DumpResult, dump_database
        from dbops.errors import classify, dump_permission_fix
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.hooks.tools import ToolVersionError, find_tool
        from dbops.streams import file_sha256

        record = staging / "staged.json"
        if record.exists():
            staged = json.loads(record.read_text())
            staged = DumpResult(**{**staged, "path": Path(staged["path"])})
            if staged.path.exists() and file_sha256(staged.path) == staged.sha256:
                self.log.info("reusing the dump staged by an earlier attempt: %s", staged.path)
                return staged
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        hook = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        try:
            tool = find_tool("pg_dump", hook.server_version_num(), config.tools.bin_dir)
            self._check_staging_space(hook, staging)
            dump = dump_database(hook, tool, staging / DUMP_FILES[policy.format], policy.compression_level,
                                 encryption_key(policy.encryption_conn_id), policy.lock_wait_timeout,
                                 policy.format, policy.dump_jobs)
        except ToolVersionError as err:
            raise AirflowFailException(str(err)) from err
        except AirflowFailException:
            raise
        except Exception as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise classify(err, f"dumping {self.target} failed", dump_permission_fix(str(err))) from err
        record.write_text(json.dumps({**asdict(dump), "path": str(dump.path)}))
        return dump

    def _check_staging_space(self, hook, staging: Path) -> None:
        """Fail before dumping when staging cannot hold the dump (at most the database's size)."""
        needed = int(hook.get_first("SELECT pg_database_size(current_database())")[0])
        free = shutil.disk_usage(staging).free
        if free < needed:
            raise AirflowFailException(
                f"staging {staging} has {free / 2**20:.0f} MiB free; the dump of {self.target} may need up to "
                f"{needed / 2**20:.0f} MiB (its database size). Free space or set staging_dir in dbops.yaml.")

    def _manifest(self, context: Context, policy: BackupPolicy, store: BackupStore, prefix: str,
                  dump: DumpResult, upload_seconds: float) -> Manifest:
        from dbops.runs import run_date

        return Manifest(
            backup_id=prefix, target=self.target, kind="full", logical_date=run_date(context).isoformat(),
            run_id=context["run_id"], location=f"{store.describe()}/{prefix}", server_version=dump.server_version,
            tool=dump.tool, snapshot_id=dump.snapshot_id,
            files=[FileEntry(dump.path.name, dump.bytes, dump.sha256, dump.raw_bytes)],
            tables=dump.tables, constraints=dump.constraints, not_validated=dump.not_validated,
            timings={"dump_seconds": round(dump.seconds, 3), "upload_seconds": round(upload_seconds, 3)},
            compression={"codec": "zstd", "level": policy.compression_level, "archive": ARCHIVES[policy.format],
                         "dump_jobs": policy.dump_jobs if policy.format == "directory" else 1},
            encryption={"algorithm": "AES-256-GCM", "key_conn_id": policy.encryption_conn_id}
            if policy.encryption_conn_id else None,
            extra={"created_at": datetime.now(timezone.utc).isoformat()},
        )


def _verify_stored(store: BackupStore, key: str, dump: DumpResult) -> None:
    """Read back what was stored: its size and its sha256 must be the staged file's."""
    from dbops.streams import ChecksumMismatch

    size = store.size(key)
    if size != dump.bytes:
        raise ChecksumMismatch(f"{key}: stored {size} bytes, staged {dump.bytes}")
    if store.sha256(key) != dump.sha256:
        raise ChecksumMismatch(f"{key}: stored sha256 differs from the staged dump's {dump.sha256}")


def _result(manifest: Manifest) -> dict[str, Any]:
    """XCom of a backup: small figures for the next tasks and the report."""
    entry = manifest.files[0]
    return {"backup_id": manifest.backup_id, "location": manifest.location, "bytes": manifest.total_bytes,
            "raw_bytes": entry.raw_bytes, "tables": len(manifest.tables), "rows": manifest.total_rows,
            **manifest.timings}


class BackupReportOperator(_BackupTargetOperator):
    """The run's last word: one summary line, and an Asset event for a verified backup.

    :param backup_task_id: the task that returned the backup's figures.
    :param verify_task_id: the task that returned the verification's figures.
    """

    def __init__(self, *, backup_task_id: str, verify_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_task_id = backup_task_id
        self.verify_task_id = verify_task_id

    def execute(self, context: Context) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        backup = context["ti"].xcom_pull(task_ids=self.backup_task_id)
        verify = context["ti"].xcom_pull(task_ids=self.verify_task_id) or {}
        if not backup:
            raise AirflowSkipException(f"backup of {self.target}: no backup was made in this run")
        verified = bool(verify.get("verified"))
        ratio = backup["raw_bytes"] / backup["bytes"] if backup["bytes"] else 0.0
        self.log.info(
            "backup %s: %d bytes stored (%.1fx compression of %d), dump %.1f s, upload %.1f s, restore %s s, "
            "%d tables, %d rows, verified %s", backup["backup_id"], backup["bytes"], ratio, backup["raw_bytes"],
            backup.get("dump_seconds", 0.0), backup.get("upload_seconds", 0.0), verify.get("restore_seconds", "-"),
            backup["tables"], backup["rows"], "yes" if verified else "no")
        if not verified:
            raise AirflowSkipException("the backup is not verified: no Asset event for it")
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {
                "backup_id": backup["backup_id"], "location": backup["location"], "bytes": backup["bytes"]}
