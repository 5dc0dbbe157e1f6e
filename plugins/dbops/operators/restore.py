"""Restores: the nightly verification restore, its scratch database, and restores on demand."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.operators.backup import _BackupTargetOperator, encryption_key

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.config import BackupPolicy, DbopsConfig
    from dbops.hooks.postgres import DbopsPostgresHook
    from dbops.hooks.store import BackupStore
    from dbops.manifest import Manifest

LATEST = "latest"
LATEST_VERIFIED = "latest-verified"


def resolve_backup_id(config: DbopsConfig, target: str, backup_id: str) -> str:
    """A concrete backup id for ``latest`` (newest complete) or ``latest-verified``; other ids as given."""
    from dbops.hooks.ops import OpsDatabaseHook

    if backup_id not in (LATEST, LATEST_VERIFIED):
        return backup_id
    backups = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).backups(target)
    chosen = next((b for b in backups if backup_id == LATEST or b.verified), None)
    if chosen is None:
        raise AirflowFailException(f"target {target} has no {'verified ' if backup_id == LATEST_VERIFIED else ''}"
                                   "backup in the catalog")
    return chosen.backup_id


def scratch_database_name(target: str, run_id: str) -> str:
    """A per-run scratch database name, within PostgreSQL's 63-byte limit."""
    import hashlib

    return f"dbops_verify_{target[:30]}_{hashlib.sha1(run_id.encode()).hexdigest()[:10]}"


def _admin_hook(config: DbopsConfig, target: str, database: str = "postgres") -> DbopsPostgresHook:
    """A hook on the verification server (``backup.verify_conn_id``, default the target's own server)."""
    from dbops.hooks.postgres import DbopsPostgresHook

    policy = config.targets[target].backup
    conn_id = (policy.verify_conn_id if policy else None) or config.targets[target].conn_id
    return DbopsPostgresHook(postgres_conn_id=conn_id, database=database)


class ScratchDatabaseOperator(_BackupTargetOperator):
    """Create (setup) or drop (teardown) the scratch database a verification restores into.

    :param database: the scratch database's name; default one per run (:func:`scratch_database_name`).
    :param drop: drop it instead of creating it.
    """

    template_fields: Sequence[str] = ("target", "database")

    def __init__(self, *, database: str | None = None, drop: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.database = database
        self.drop = drop

    def execute(self, context: Context) -> None:
        from dbops.restore import create_database, drop_database

        config, _, _ = self._setup()
        admin = _admin_hook(config, self.target)
        database = self.database or scratch_database_name(self.target, context["run_id"])
        if self.drop:
            drop_database(admin, database)
            self.log.info("dropped scratch database %s", database)
        else:
            create_database(admin, database, replace=True)
            self.log.info("created scratch database %s", database)


class VerifyBackupOperator(_BackupTargetOperator):
    """Restore a *stored* backup into a scratch database and prove it, then record the recovery test.

    Downloads the archive from the store (size and sha256 checked), restores it with parallel
    ``pg_restore``, compares every table's row count with the dump snapshot's, checks that every
    primary-key, unique and foreign-key constraint was rebuilt and is valid, and runs ``pg_amcheck``.
    The outcome goes into the ops database (``dbops.recovery_tests``) and into the manifest. A failed
    verification fails the task at once, without retries: the backup will not get better.

    :param backup_id: the backup to verify: its id (its key prefix in the store), ``latest`` or
        ``latest-verified``.
    :param database: the scratch database (created beforehand, dropped by a teardown); default one per
        run (:func:`scratch_database_name`).
    """

    template_fields: Sequence[str] = ("target", "backup_id", "database")

    def __init__(self, *, backup_id: str, database: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.database = database

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.errors import classify
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.manifest import MANIFEST_NAME
        from dbops.restore import read_manifest

        config, policy, store = self._setup()
        self.database = self.database or scratch_database_name(self.target, context["run_id"])
        self.backup_id = resolve_backup_id(config, self.target, self.backup_id)
        manifest = read_manifest(store, self.backup_id)
        if manifest is None:
            raise AirflowFailException(f"backup {self.backup_id} has no manifest in {store.describe()}: "
                                       "it does not exist or is incomplete")
        started_at = datetime.now(timezone.utc)
        try:
            outcome = self._verify(config, policy, store, manifest)
        except AirflowException:
            raise
        except Exception as err:
            raise classify(err, f"verifying {self.backup_id} could not run") from err
        manifest.verification = {"started_at": started_at.isoformat(), "run_id": context["run_id"], **outcome}
        OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).record_recovery_test(
            self.backup_id, self.target, context["run_id"], started_at, outcome["restore_seconds"], outcome["ok"],
            outcome["checks"], outcome["error"])
        store.put_bytes(f"{self.backup_id}/{MANIFEST_NAME}", manifest.to_json())
        for name, check in outcome["checks"].items():
            self.log.info("%s %s: %s", "PASS" if check.get("ok") else "FAIL", name,
                          {k: v for k, v in check.items() if k != "ok"})
        if not outcome["ok"]:
            raise AirflowFailException(f"verification of backup {self.backup_id} FAILED: {outcome['error']}")
        self.log.info("backup %s verified: restored in %.1f s, %d tables and %d rows match the snapshot",
                      self.backup_id, outcome["restore_seconds"], outcome["checks"]["row_counts"]["tables"],
                      outcome["checks"]["row_counts"]["rows"])
        return {"backup_id": self.backup_id, "verified": True, "restore_seconds": outcome["restore_seconds"]}

    def _verify(self, config: DbopsConfig, policy: BackupPolicy, store: BackupStore,
                manifest: Manifest) -> dict[str, Any]:
        admin = _admin_hook(config, self.target)
        return restore_and_check(config, policy, store, manifest, admin, self.database, run_amcheck=True)


def restore_and_check(config: DbopsConfig, policy: BackupPolicy, store: BackupStore, manifest: Manifest,
                      admin: DbopsPostgresHook, database: str, run_amcheck: bool) -> dict[str, Any]:
    """Fetch, restore into the existing ``database`` and check it; a definite failure is an outcome with
    ``ok`` false, a transient fault an exception."""
    from dbops.hooks.postgres import DbopsPostgresHook
    from dbops.hooks.tools import find_tool
    from dbops.restore import RestoreError, amcheck, check_restored, fetch, pg_restore
    from dbops.streams import ChecksumMismatch

    staging = config.staging_path / f"restore__{database}"
    checks: dict[str, Any] = {}
    restore_seconds = None
    try:
        archive = fetch(store, manifest, manifest.backup_id, staging, encryption_key(policy.encryption_conn_id))
        checks["checksums"] = {"ok": True, "files": [f.name for f in manifest.files]}
        tool = find_tool("pg_restore", admin.server_version_num(), config.tools.bin_dir)
        restore_seconds = round(pg_restore(tool, admin, database, archive, policy.jobs), 3)
        checks["restore"] = {"ok": True, "seconds": restore_seconds, "jobs": policy.jobs}
        restored = DbopsPostgresHook(postgres_conn_id=admin.postgres_conn_id, database=database)
        checks.update(check_restored(restored, manifest))
        if run_amcheck:
            checks["amcheck"] = amcheck(admin, database, policy.jobs)
    except ChecksumMismatch as err:
        checks["checksums"] = {"ok": False, "error": str(err)}
    except RestoreError as err:
        checks["restore"] = {"ok": False, "error": str(err)}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    failed = [f"{name}: {check.get('error') or _describe_failure(check)}"
              for name, check in checks.items() if not check.get("ok")]
    complete = "row_counts" in checks and (not run_amcheck or "amcheck" in checks)
    return {"ok": not failed and complete, "checks": checks, "restore_seconds": restore_seconds,
            "error": "; ".join(failed) or None}


def _describe_failure(check: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in check.items() if k != "ok" and v)


class RestoreBackupOperator(_BackupTargetOperator):
    """Restore a backup on demand into a new database on the target's server, checksums verified first.

    Refuses a database that exists unless ``overwrite`` is set, and never restores over the target's
    own database. After the restore, row counts and constraints are checked against the manifest.

    :param backup_id: a backup id, ``latest`` or ``latest-verified``.
    :param database: the database to create and restore into.
    :param overwrite: drop and replace ``database`` if it exists.
    """

    template_fields: Sequence[str] = ("target", "backup_id", "database", "overwrite")

    def __init__(self, *, backup_id: str, database: str, overwrite: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.database = database
        self.overwrite = overwrite

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.restore import create_database, database_exists, read_manifest

        config, policy, store = self._setup()
        overwrite = str(self.overwrite).lower() in ("true", "1", "yes")
        admin = _admin_hook(config, self.target)
        own = admin.connection.schema
        if not self.database or len(self.database.encode()) > 63:
            raise AirflowFailException(f"database name {self.database!r} must be 1 to 63 bytes")
        if self.database == own:
            raise AirflowFailException(f"refusing to restore over {own!r}, the target's own database")
        if database_exists(admin, self.database) and not overwrite:
            raise AirflowFailException(f"database {self.database!r} exists; choose a new name or set overwrite")
        backup_id = resolve_backup_id(config, self.target, self.backup_id)
        manifest = read_manifest(store, backup_id)
        if manifest is None:
            raise AirflowFailException(f"backup {backup_id} has no manifest in {store.describe()}")
        from dbops.restore import drop_database

        create_database(admin, self.database, replace=overwrite)
        try:
            outcome = restore_and_check(config, policy, store, manifest, admin, self.database, run_amcheck=False)
        except BaseException:
            drop_database(admin, self.database)  # so that a retry starts clean
            raise
        if not outcome["ok"]:
            drop_database(admin, self.database)  # a half-restored database must not be mistaken for a restore
            raise AirflowFailException(f"restore of {backup_id} into {self.database} FAILED (database dropped): "
                                       f"{outcome['error']}")
        self.log.info("restored backup %s into database %s in %.1f s: %d tables, %d rows match the manifest",
                      backup_id, self.database, outcome["restore_seconds"], len(manifest.tables),
                      manifest.total_rows)
        return {"backup_id": backup_id, "database": self.database, "restore_seconds": outcome["restore_seconds"]}
