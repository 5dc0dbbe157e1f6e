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

from dbops.core.manifest import MANIFEST_NAME, FileEntry, Manifest, backup_prefix
from dbops.operators.base import TargetOperator
from dbops.core.processes import tool_timeout

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.backup.policy import BackupPolicy
    from dbops.core.config import DbopsConfig
    from dbops.backup.dump import DumpResult
    from dbops.hooks.ops import OpsDatabaseHook
    from dbops.hooks.store import BackupStore

DUMP_FILE = "dump.pgc.zst"  # custom format
DUMP_FILES = {"custom": DUMP_FILE, "directory": "dump.dir.tar.zst"}
ARCHIVES = {"custom": "pg_dump custom, -Z0", "directory": "pg_dump directory (tar), -Z0"}
_CRON_PRESETS = {"@quarterly": "0 0 1 */3 *"}  # croniter knows Airflow's other presets


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


def run_type_of(context: Context) -> str:
    """The run's type as a string: ``scheduled``, ``backfill``, ``manual``, ``asset_triggered``, ..."""
    run_type = context["dag_run"].run_type
    return getattr(run_type, "value", str(run_type))


def provenance(context: Context, storage: str, taken_at: datetime) -> dict[str, str | None]:
    """Manifest fields: when the data was read, the logical date and type of the run, the storage key."""
    logical_date = context.get("logical_date")
    return {"taken_at": taken_at.isoformat(), "covers": logical_date.isoformat() if logical_date else None,
            "run_type": run_type_of(context), "storage": storage}


def is_past_period(schedule: str | None, period: datetime, run_type: str, now: datetime) -> bool:
    """Whether a run is for a past period: a backfill, or a run starting once its schedule's next slot came.

    A dump reads the database as it is now, so such a run cannot make that period's backup.

    :param schedule: the backup schedule (cron or preset); None for manual-only DAGs.
    :param period: the run's logical date (its scheduled time).
    """
    from croniter import croniter

    if run_type == "backfill":
        return True
    if not schedule or schedule == "@once":
        return False
    return now >= croniter(_CRON_PRESETS.get(schedule, schedule), period).get_next(datetime)


def staging_dir(config: DbopsConfig, target: str, run_id: str) -> Path:
    """Where a run's dump waits until it is stored (one per run, so a retry finds it)."""
    import hashlib

    return config.staging_path / f"{target}__full__{hashlib.sha1(run_id.encode()).hexdigest()[:12]}"


class PgBackupOperator(_BackupTargetOperator):
    """Dump the target in one snapshot, store the archive, verify what was stored, write the manifest last.

    A backup is named by its snapshot time, ``<target>/full/<UTC snapshot time>/``, and records the
    logical date of the run it was taken for (``covers``), the run type and the storage. A retried task
    finds the backup its run already made. A run for a past period (:func:`is_past_period`) does
    nothing when a backup (not failed verification) was taken at or after the period's scheduled time,
    and says which; otherwise it takes one now. So a backfill over three missed nights makes one backup,
    not three copies of today. Folders of incomplete attempts are removed first; a dump that finished
    but could not be stored is kept in staging and reused by the retry.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.errors import classify
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.core.manifest import write_manifest
        from dbops.backup.restore import read_manifest

        config, policy, store = self._setup()
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        try:
            existing = self._existing_backup(context, policy, ops, store)
            if existing is not None:
                return existing
            self._remove_incomplete(store)
        except AirflowFailException:
            raise
        except Exception as err:
            raise classify(err, f"reading the catalog or {store.describe()} failed before dumping") from err

        staging = staging_dir(config, self.target, context["run_id"])
        dump, taken_at = self._staged_or_new_dump(config, policy, store, staging)
        prefix = backup_prefix(self.target, "full", taken_at)
        started = time.monotonic()
        try:
            manifest = read_manifest(store, prefix)  # an earlier attempt stored it but could not record it
            if manifest is None:
                store.put_file(dump.path, f"{prefix}/{dump.path.name}")
                _verify_stored(store, f"{prefix}/{dump.path.name}", dump.bytes, dump.sha256)
                manifest = self._manifest(context, policy, store, prefix, dump, taken_at, time.monotonic() - started)
                write_manifest(store, manifest)
        except Exception as err:
            raise classify(err, f"storing {prefix} in {store.describe()} failed; the dump stays staged in "
                                f"{staging}") from err
        ops.record_backup(manifest)
        shutil.rmtree(staging, ignore_errors=True)
        self.log.info("backup %s complete (snapshot %s, for the run of %s): %d bytes (%d raw), %d tables, %d rows, "
                      "dump %.1f s, upload %.1f s", prefix, manifest.taken_at, manifest.covers or "-", dump.bytes,
                      dump.raw_bytes, len(dump.tables), sum(dump.tables.values()), dump.seconds,
                      manifest.timings["upload_seconds"])
        return _result(manifest)

    def _existing_backup(self, context: Context, policy: BackupPolicy, ops: OpsDatabaseHook,
                         store: BackupStore) -> dict[str, Any] | None:
        """This run's own complete backup (a retry), or for a past period one taken since its scheduled time."""
        from dbops.backup.restore import read_manifest
        from dbops.core.runs import run_date

        own = ops.backup_of_run(self.target, context["run_id"])
        if own is not None and read_manifest(store, own.backup_id) is not None:
            self.log.info("backup %s of this run is already complete in %s; not dumping again", own.backup_id,
                          store.describe())
            return _result(own)
        period = run_date(context)
        if not is_past_period(policy.schedule, period, run_type_of(context), datetime.now(timezone.utc)):
            return None
        newer = ops.backup_taken_since(self.target, period)
        if newer is not None and read_manifest(store, newer.backup_id) is not None:
            self.log.info("run for the past period %s: backup %s (snapshot %s) already holds data at least that new; "
                          "nothing dumped", period.isoformat(), newer.backup_id, newer.taken_at)
            return {**_result(newer), "covered_period": period.isoformat()}
        self.log.info("run for the past period %s: no backup was taken since; dumping now, named by its snapshot "
                      "time (a dump cannot read the past)", period.isoformat())
        return None

    def _remove_incomplete(self, store: BackupStore) -> None:
        """Delete the folders under ``<target>/full/`` that have no manifest: leftovers of failed attempts.

        The target's pool runs one backup at a time, so no other attempt is writing there.
        """
        folders: dict[str, list[str]] = {}
        for key in store.list_keys(f"{self.target}/full/"):
            folder, _, name = key.rpartition("/")
            folders.setdefault(folder, []).append(name)
        for folder, names in folders.items():
            if MANIFEST_NAME not in names:
                self.log.info("removing %s, left incomplete by an earlier attempt (%d files)", folder, len(names))
                for name in names:
                    store.delete(f"{folder}/{name}")

    def _staged_or_new_dump(self, config: DbopsConfig, policy: BackupPolicy, store: BackupStore,
                            staging: Path) -> tuple[DumpResult, datetime]:
        """The dump and its snapshot time: staged by an earlier attempt of this run, or taken now."""
        from dbops.backup.dump import DumpResult, dump_database
        from dbops.core.errors import classify, dump_permission_fix
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.hooks.tools import ToolVersionError, find_tool
        from dbops.core.streams import file_sha256

        record = staging / "staged.json"
        if record.exists():
            staged = json.loads(record.read_text())
            dump = DumpResult(**{**staged["dump"], "path": Path(staged["dump"]["path"])})
            if dump.path.exists() and file_sha256(dump.path) == dump.sha256:
                self.log.info("reusing the dump staged by an earlier attempt: %s", dump.path)
                return dump, datetime.fromisoformat(staged["taken_at"])
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        hook = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        taken_at = self._snapshot_time(store)
        try:
            tool = find_tool("pg_dump", hook.server_version_num(), config.tools.bin_dir)
            self._check_staging_space(hook, staging)
            dump = dump_database(hook, tool, staging / DUMP_FILES[policy.format], policy.compression_level,
                                 encryption_key(policy.encryption_conn_id), policy.lock_wait_timeout,
                                 policy.format, policy.dump_jobs, timeout=tool_timeout(self.execution_timeout))
        except ToolVersionError as err:
            raise AirflowFailException(str(err)) from err
        except AirflowFailException:
            raise
        except Exception as err:
            shutil.rmtree(staging, ignore_errors=True)
            raise classify(err, f"dumping {self.target} failed", dump_permission_fix(str(err))) from err
        record.write_text(json.dumps({"dump": {**asdict(dump), "path": str(dump.path)},
                                      "taken_at": taken_at.isoformat()}))
        return dump, taken_at

    def _snapshot_time(self, store: BackupStore) -> datetime:
        """Now, to the second, that no backup of the target is named by yet (the next second otherwise).

        The snapshot is exported right after: the dump's data is at least this new.
        """
        while True:
            now = datetime.now(timezone.utc)
            if not store.list_keys(backup_prefix(self.target, "full", now)):
                return now.replace(microsecond=0)
            time.sleep(1 - now.microsecond / 1_000_000)

    def _check_staging_space(self, hook, staging: Path) -> None:
        """Fail before dumping when staging cannot hold the dump (at most the database's size)."""
        needed = int(hook.get_first("SELECT pg_database_size(current_database())")[0])
        free = shutil.disk_usage(staging).free
        if free < needed:
            raise AirflowFailException(
                f"staging {staging} has {free / 2**20:.0f} MiB free; the dump of {self.target} may need up to "
                f"{needed / 2**20:.0f} MiB (its database size). Free space or set staging_dir in dbops.yaml.")

    def _manifest(self, context: Context, policy: BackupPolicy, store: BackupStore, prefix: str,
                  dump: DumpResult, taken_at: datetime, upload_seconds: float) -> Manifest:
        from dbops.core.runs import run_date

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
            **provenance(context, policy.storage, taken_at),
        )


def _verify_stored(store: BackupStore, key: str, size: int, sha256: str) -> None:
    """Read back what was stored: its size and its sha256 must be the staged file's."""
    from dbops.core.streams import ChecksumMismatch

    stored = store.size(key)
    if stored != size:
        raise ChecksumMismatch(f"{key}: stored {stored} bytes, staged {size}")
    if store.sha256(key) != sha256:
        raise ChecksumMismatch(f"{key}: stored sha256 differs from the staged file's {sha256}")


def _result(manifest: Manifest) -> dict[str, Any]:
    """XCom of a backup: small figures for the next tasks and the report."""
    entry = manifest.files[0]
    return {"backup_id": manifest.backup_id, "location": manifest.location, "bytes": manifest.total_bytes,
            "raw_bytes": entry.raw_bytes, "tables": len(manifest.tables), "rows": manifest.total_rows,
            "taken_at": manifest.taken_at, **manifest.timings}


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
        made = (f"taken earlier; it covers this run's past period {backup['covered_period']}, nothing dumped"
                if "covered_period" in backup else "made by this run")
        self.log.info(
            "backup %s (snapshot %s, %s): %d bytes stored (%.1fx compression of %d), dump %.1f s, upload %.1f s, "
            "restore %s s, %d tables, %d rows, verified %s", backup["backup_id"], backup.get("taken_at") or "-", made,
            backup["bytes"], ratio, backup["raw_bytes"], backup.get("dump_seconds", 0.0),
            backup.get("upload_seconds", 0.0), verify.get("restore_seconds", "-"), backup["tables"], backup["rows"],
            "yes" if verified else "no")
        if not verified:
            raise AirflowSkipException("the backup is not verified: no Asset event for it")
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {
                "backup_id": backup["backup_id"], "location": backup["location"], "bytes": backup["bytes"]}
