"""Restores: the nightly verification restore, its scratch database, and restores on demand."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.operators.backup import _BackupTargetOperator, encryption_key
from dbops.core.processes import tool_timeout

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.backup.policy import BackupPolicy
    from dbops.core.config import DbopsConfig
    from dbops.hooks.postgres import DbopsPostgresHook
    from dbops.hooks.store import BackupStore
    from dbops.core.manifest import Manifest

LATEST = "latest"
LATEST_VERIFIED = "latest-verified"
BACKUP_ID_HELP = ("latest-verified, latest, a backup folder name such as 20261130T020000Z, "
                  "or a full id such as <target>/full/20261130T020000Z")
_FOLDER = re.compile(r"\d{8}T\d{6}Z")
RESTORED_BY = "dbops restore of "  # the start of the comment a restore puts on the database it creates


def resolve_backup_id(config: DbopsConfig, target: str, backup_id: str) -> str:
    """The full id (``<target>/full/<folder>``) of ``latest`` (newest complete), ``latest-verified``, a
    folder name or a full id; anything else is refused at once."""
    from dbops.hooks.ops import OpsDatabaseHook

    backup_id = (backup_id or "").strip()
    if backup_id in (LATEST, LATEST_VERIFIED):
        backups = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).backups(target)
        chosen = next((b for b in backups if backup_id == LATEST or b.verified), None)
        if chosen is None:
            raise AirflowFailException(f"target {target} has no {'verified ' if backup_id == LATEST_VERIFIED else ''}"
                                       "backup in the catalog")
        return chosen.backup_id
    folder = backup_id.removeprefix(f"{target}/full/")
    if not _FOLDER.fullmatch(folder):
        raise AirflowFailException(f"backup_id {backup_id!r} is not a backup id of target {target}: use "
                                   f"{BACKUP_ID_HELP.replace('<target>', target)}")
    return f"{target}/full/{folder}"


def load_manifest(config: DbopsConfig, target: str, store: BackupStore, backup_id: str) -> Manifest:
    """The manifest of ``backup_id``; a backup without one fails, listing the target's newest backups."""
    from dbops.core.errors import classify
    from dbops.hooks.ops import OpsDatabaseHook
    from dbops.backup.restore import read_manifest

    try:
        manifest = read_manifest(store, backup_id)
    except Exception as err:
        raise classify(err, f"reading the manifest of {backup_id} in {store.describe()} failed") from err
    if manifest is not None:
        return manifest
    recent = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).backups(target)[:10]
    listed = ", ".join(f"{b.backup_id.rsplit('/', 1)[-1]} ({_VERIFIED[b.verified]})" for b in recent)
    raise AirflowFailException(f"backup {backup_id} has no manifest in {store.describe()}: it does not exist or "
                               f"is incomplete. The newest backups of {target}: {listed or 'none'}")


_VERIFIED = {True: "verified", False: "verification failed", None: "not verified"}


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
        from dbops.backup.restore import create_database, drop_database

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
    ``pg_restore`` (without owners and grants; the check output says so), compares every table's row
    count with the dump snapshot's, checks that every primary-key, unique, foreign-key and check
    constraint was rebuilt, valid unless it was NOT VALID in the snapshot, and runs ``pg_amcheck``.
    The outcome goes into the ops database (``dbops.recovery_tests``) and into the manifest. A failed
    verification fails the task at once, without retries: the backup will not get better. A transient
    fault (a lost connection, a tool past its timeout) raises, is retried and records nothing.

    :param backup_id: the backup to verify: a folder name (``20261130T020000Z``), a full id
        (``<target>/full/20261130T020000Z``), ``latest`` or ``latest-verified``.
    :param database: the scratch database (created beforehand, dropped by a teardown); default one per
        run (:func:`scratch_database_name`).
    """

    template_fields: Sequence[str] = ("target", "backup_id", "database")

    def __init__(self, *, backup_id: str, database: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.database = database

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.errors import classify
        from dbops.hooks.ops import OpsDatabaseHook

        config, policy, store = self._setup()
        self.database = self.database or scratch_database_name(self.target, context["run_id"])
        self.backup_id = resolve_backup_id(config, self.target, self.backup_id)
        manifest = load_manifest(config, self.target, store, self.backup_id)
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
        OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).rewrite_manifest(store, manifest)
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
        return restore_and_check(config, policy, store, manifest, admin, self.database, run_amcheck=True,
                                 owners=False, timeout=tool_timeout(self.execution_timeout))


def restore_and_check(config: DbopsConfig, policy: BackupPolicy, store: BackupStore, manifest: Manifest,
                      admin: DbopsPostgresHook, database: str, *, run_amcheck: bool, owners: bool,
                      timeout: float) -> dict[str, Any]:
    """Fetch, restore into the existing ``database`` and check it; a definite failure is an outcome with
    ``ok`` false, a transient fault an exception.

    With ``owners`` the objects keep their owners and grants, and every role the backup names must exist
    (checked before restoring); without, both are skipped. Each tool runs at most ``timeout`` seconds.
    """
    from dbops.hooks.postgres import DbopsPostgresHook
    from dbops.hooks.tools import find_tool
    from dbops.core.processes import ToolError
    from dbops.backup.restore import amcheck, archive_roles, check_restored, fetch, missing_roles, pg_restore
    from dbops.core.streams import ChecksumMismatch

    staging = config.staging_path / f"restore__{database}"
    checks: dict[str, Any] = {}
    restore_seconds = None
    try:
        archive = fetch(store, manifest, manifest.backup_id, staging, encryption_key(policy.encryption_conn_id))
        checks["checksums"] = {"ok": True, "files": [f.name for f in manifest.files]}
        tool = find_tool("pg_restore", admin.server_version_num(), config.tools.bin_dir)
        if owners:
            missing = missing_roles(admin, archive_roles(tool, archive, timeout))
            checks["roles"] = {"ok": not missing, "missing": missing}
            if missing:
                checks["roles"]["error"] = (
                    f"roles {', '.join(missing)} own objects of the backup or hold grants in it but do not exist "
                    "on the server; create them (pg_dumpall --roles-only on the source lists them), then run again")
                return _outcome(checks, restore_seconds, run_amcheck)
        restore_seconds = round(pg_restore(tool, admin, database, archive, policy.jobs, owners, timeout), 3)
        checks["restore"] = {"ok": True, "seconds": restore_seconds, "jobs": policy.jobs,
                             "owners_and_grants": "restored" if owners else "skipped (--no-owner --no-privileges)"}
        restored = DbopsPostgresHook(postgres_conn_id=admin.postgres_conn_id, database=database)
        checks.update(check_restored(restored, manifest))
        if run_amcheck:
            checks["amcheck"] = amcheck(admin, database, policy.jobs, timeout)
    except ChecksumMismatch as err:
        checks["checksums"] = {"ok": False, "error": str(err)}
    except ToolError as err:
        if err.transient:
            raise
        checks["restore"] = {"ok": False, "error": str(err)}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _outcome(checks, restore_seconds, run_amcheck)


def _outcome(checks: dict[str, Any], restore_seconds: float | None, run_amcheck: bool) -> dict[str, Any]:
    failed = [f"{name}: {check.get('error') or _describe_failure(check)}"
              for name, check in checks.items() if not check.get("ok")]
    complete = "row_counts" in checks and (not run_amcheck or "amcheck" in checks)
    return {"ok": not failed and complete, "checks": checks, "restore_seconds": restore_seconds,
            "error": "; ".join(failed) or None}


def _describe_failure(check: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in check.items() if k != "ok" and v)


def protected_databases(config: DbopsConfig, target: str) -> dict[str, str]:
    """Databases a restore never replaces, with the reason: PostgreSQL's own, Airflow's metadata database,
    the ops database, and the database of every configured target and verification connection."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf
    from airflow.sdk import BaseHook

    def database_of(conn_id: str) -> str:
        conn = BaseHook.get_connection(conn_id)
        return conn.schema or conn.login  # libpq's default database is the user's name

    protected = {}  # filled so that, for a name with several reasons, the most basic one is given
    for name, settings in config.targets.items():
        if settings.backup and settings.backup.verify_conn_id:
            protected[database_of(settings.backup.verify_conn_id)] = f"target {name}'s verification database"
    for name, settings in config.targets.items():
        protected[database_of(settings.conn_id)] = (
            "the target's own database" if name == target else f"the database of target {name}")
    protected[database_of(config.ops_conn_id)] = "the dbops ops database"
    metadata = urlsplit(conf.get("database", "sql_alchemy_conn", fallback="")).path.lstrip("/")
    for name in {"airflow", metadata} - {""}:
        protected[name] = "Airflow's metadata database"
    protected.update({"postgres": "PostgreSQL's maintenance database", "template0": "a template database",
                      "template1": "a template database"})
    return protected


class RestoreBackupOperator(_BackupTargetOperator):
    """Restore a backup on demand into a database on the verification server (default: the target's).

    What the restore replaces is left alone until the replacement is proven: the archive's checksums
    are checked, the backup is restored under a temporary name (``<database>__dbops_restoring``) with
    its owners and grants, its row counts and constraints are compared with the manifest, and only
    then does it take ``database``'s name. The database it replaces is renamed aside (its sessions are
    terminated at that moment) and dropped after the swap. A failed restore drops only the temporary
    database.

    Never replaced: ``postgres``, the templates, Airflow's metadata database, the ops database and the
    database of any configured target. An existing ``database`` is replaced only with ``overwrite``,
    and only if an earlier restore created it (its comment starts ``dbops restore of``) or
    ``confirm_database`` names it again. Every role that owns an object of the backup or holds a grant
    in it must exist on the server: otherwise the restore fails before restoring anything, naming them.

    :param backup_id: a backup folder name (``20261130T020000Z``), a full id
        (``<target>/full/20261130T020000Z``), ``latest`` or ``latest-verified``.
    :param database: the database to restore into.
    :param overwrite: replace ``database`` if it exists.
    :param confirm_database: ``database`` again, to replace a database that no restore created.
    """

    template_fields: Sequence[str] = ("target", "backup_id", "database", "overwrite", "confirm_database")

    def __init__(self, *, backup_id: str, database: str, overwrite: bool | str = False,
                 confirm_database: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.database = database
        self.overwrite = overwrite
        self.confirm_database = confirm_database

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config, policy, store = self._setup()
        with job_lock(config.ops_conn_id, self.target, "restore"):  # holds even if someone widens the pool
            return self._restore(context, config, policy, store)

    def _restore(self, context: Context, config: DbopsConfig, policy: BackupPolicy,
                 store: BackupStore) -> dict[str, Any]:
        from dbops.core.errors import classify
        from dbops.backup.restore import create_database, derived_name, drop_database, swap_databases

        admin = _admin_hook(config, self.target)
        self._check_replaceable(config, admin)
        backup_id = resolve_backup_id(config, self.target, self.backup_id)
        manifest = load_manifest(config, self.target, store, backup_id)
        temporary = derived_name(self.database, "__dbops_restoring")
        self._drop_leftover(admin, temporary)
        create_database(admin, temporary, comment=f"{RESTORED_BY}{backup_id} by {context['run_id']}")
        try:
            outcome = restore_and_check(config, policy, store, manifest, admin, temporary, run_amcheck=False,
                                        owners=True, timeout=tool_timeout(self.execution_timeout))
            if outcome["ok"]:
                retired = derived_name(self.database,
                                       f"__dbops_replaced_{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
                replaced = swap_databases(admin, temporary, self.database, retired)
        except BaseException as err:
            drop_database(admin, temporary)  # only the temporary database; a retry starts clean
            if isinstance(err, AirflowException) or not isinstance(err, Exception):
                raise
            raise classify(err, f"restoring {backup_id} into {self.database} could not finish, "
                                f"{self.database} is unchanged") from err
        if not outcome["ok"]:
            drop_database(admin, temporary)
            raise AirflowFailException(f"restore of {backup_id} into {self.database} FAILED; {self.database} is "
                                       f"unchanged (the temporary {temporary} was dropped): {outcome['error']}")
        if replaced:
            drop_database(admin, retired)
        self.log.info("restored backup %s into database %s in %.1f s with owners and grants%s: %d tables, "
                      "%d rows match the manifest", backup_id, self.database, outcome["restore_seconds"],
                      " (the database it replaced was dropped)" if replaced else "", len(manifest.tables),
                      manifest.total_rows)
        return {"backup_id": backup_id, "database": self.database, "restore_seconds": outcome["restore_seconds"],
                "replaced": replaced}

    def _check_replaceable(self, config: DbopsConfig, admin: DbopsPostgresHook) -> None:
        """Refuse a bad or protected name, and an existing database unless this restore may replace it."""
        from dbops.backup.restore import database_comment, database_exists

        database = self.database
        if not database or len(database.encode()) > 63:
            raise AirflowFailException(f"database name {database!r} must be 1 to 63 bytes")
        if self.confirm_database and self.confirm_database != database:
            raise AirflowFailException(f"confirm_database {self.confirm_database!r} does not match database "
                                       f"{database!r}: leave it empty, or repeat the database name exactly")
        reason = protected_databases(config, self.target).get(database)
        if reason:
            raise AirflowFailException(f"refusing to restore over {database!r}: it is {reason}. "
                                       "Restore into another database name.")
        if not database_exists(admin, database):
            return
        if str(self.overwrite).lower() not in ("true", "1", "yes"):
            raise AirflowFailException(f"database {database!r} exists; choose a new name or set overwrite")
        comment = database_comment(admin, database) or ""
        if not comment.startswith(RESTORED_BY) and self.confirm_database != database:
            raise AirflowFailException(
                f"database {database!r} exists and no dbops restore created it (its comment: {comment!r}); "
                f"to replace it anyway, set confirm_database to {database!r} as well as overwrite")

    def _drop_leftover(self, admin: DbopsPostgresHook, temporary: str) -> None:
        """Drop the temporary database an interrupted restore left behind; refuse one no restore made."""
        from dbops.backup.restore import database_comment, database_exists, drop_database

        if not database_exists(admin, temporary):
            return
        if not (database_comment(admin, temporary) or "").startswith(RESTORED_BY):
            raise AirflowFailException(f"database {temporary!r}, this restore's temporary name, exists and no dbops "
                                       "restore created it; rename or drop it, then run again")
        self.log.info("dropping %s, left behind by an interrupted restore", temporary)
        drop_database(admin, temporary)
