"""The backup capability's operators: nightly backup and report, verification restore and its scratch
database, restore on demand, retention, tenant export. The work lives in :mod:`dbops.backup`."""

from __future__ import annotations

import glob
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from dbops.backup import catalog
from dbops.backup.runs import backup_result, is_past_period, new_manifest, run_type_of
from dbops.backup.store_io import read_manifest, remove_incomplete, store_backup
from dbops.core.errors import classify
from dbops.core.manifest import FileEntry, Manifest, backup_prefix
from dbops.core.processes import tool_timeout
from dbops.core.units import human_bytes
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.sdk import Context

    from dbops.backup.dump import DumpResult
    from dbops.backup.policy import BackupPolicy
    from dbops.core.config import DbopsConfig
    from dbops.core.store import BackupStore
    from dbops.hooks.ops import OpsDatabaseHook

DUMP_FILE = "dump.pgc.zst"  # custom format
DUMP_FILES = {"custom": DUMP_FILE, "directory": "dump.dir.tar.zst"}
ARCHIVES = {"custom": "pg_dump custom, -Z0", "directory": "pg_dump directory (tar), -Z0"}


class _BackupTargetOperator(TargetOperator):
    """A target operator that needs the target's backup policy, store and the ops database."""

    def _setup(self) -> tuple[DbopsConfig, BackupPolicy, BackupStore]:
        from dbops.hooks.store import get_store

        config = self.load_config()
        policy = config.targets[self.target].backup
        if policy is None:
            raise AirflowFailException(f"target {self.target!r} has no backup policy in {config.path}")
        return config, policy, get_store(config.storage[policy.storage])

    def _reuse_or_clean(self, context: Context, policy: BackupPolicy, ops: OpsDatabaseHook,
                        store: BackupStore) -> dict[str, Any] | None:
        """Before a dump: the result of a backup that makes it needless (:meth:`_existing_backup`, then
        :meth:`_recovered_backup`), or None once the folders incomplete attempts left are removed."""
        try:
            existing = self._existing_backup(context, policy, ops, store)
            if existing is None:
                existing = self._recovered_backup(context, store, ops)
            if existing is not None:
                return existing
            for folder, files in remove_incomplete(store, f"{self.target}/full/").items():
                self.log.info("removed %s, left incomplete by an earlier attempt (%d files)", folder, files)
        except AirflowFailException:
            raise
        except Exception as err:
            raise classify(err, f"reading the catalog or {store.describe()} failed before dumping") from err
        return None

    def _recovered_backup(self, context: Context, store: BackupStore, ops: OpsDatabaseHook) -> dict[str, Any] | None:
        """A backup an earlier attempt of this run stored but could not record, recorded now; none here (a stored
        PostgreSQL dump is found again after the staged dump is reused)."""
        return None

    def _record_verification(self, context: Context, ops: OpsDatabaseHook, store: BackupStore, manifest: Manifest,
                             backup_id: str, started_at: datetime, outcome: dict[str, Any]) -> None:
        """Record a verification's outcome in ``dbops.recovery_tests`` and the manifest, log each check; raise
        :class:`VerificationFailed` when it failed."""
        from dbops.backup.verify import VerificationFailed, check_line

        manifest.verification = {"started_at": started_at.isoformat(), "run_id": context["run_id"], **outcome}
        with ops.transaction() as conn:
            catalog.record_recovery_test(conn, backup_id, self.target, context["run_id"], started_at,
                                         outcome["restore_seconds"], outcome["ok"], outcome["checks"],
                                         outcome["error"])
        with ops.transaction() as conn:
            catalog.rewrite_manifest(conn, store, manifest)
        for name, check in outcome["checks"].items():
            self.log.info(check_line(name, check))
        if not outcome["ok"]:
            raise VerificationFailed(f"FAILED: {outcome['error']} (verification of backup {manifest.location})")

    def _existing_backup(self, context: Context, policy: BackupPolicy, ops: OpsDatabaseHook,
                         store: BackupStore) -> dict[str, Any] | None:
        """This run's own complete backup (a retry), or for a past period one taken since its scheduled time."""
        from dbops.core.runs import run_date

        with ops.transaction() as conn:
            own = catalog.backup_of_run(conn, self.target, context["run_id"])
        if own is not None and read_manifest(store, own.backup_id) is not None:
            self.log.info("complete, nothing dumped: backup %s of this run is already stored", own.location,
                          backup_id=own.backup_id, bytes=own.total_bytes)
            return backup_result(own)
        period = run_date(context)
        if not is_past_period(policy.schedule, period, run_type_of(context), datetime.now(timezone.utc)):
            return None
        with ops.transaction() as conn:
            candidates = catalog.backups_taken_since(conn, self.target, period)
        newer = None
        for candidate in candidates:  # the store is the truth: a catalogued backup may be gone from it
            if read_manifest(store, candidate.backup_id) is not None:
                newer = candidate
                break
            self.log.warning("the catalog lists backup %s as complete but %s has no manifest for it: not using it",
                             candidate.backup_id, store.describe())
        if newer is not None:
            self.log.info("complete, nothing dumped: run for the past period %s; backup %s (snapshot %s) already "
                          "holds data at least that new", period.isoformat(), newer.location, newer.taken_at,
                          backup_id=newer.backup_id, bytes=newer.total_bytes)
            return {**backup_result(newer), "covered_period": period.isoformat()}
        self.log.info("run for the past period %s: no backup was taken since; dumping now, named by its snapshot "
                      "time (a dump cannot read the past)", period.isoformat())
        return None


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
        from dbops.backup.staging import dump_leftovers, held_staging, staging_dir
        from dbops.hooks.ops import OpsDatabaseHook

        config, policy, store = self._setup()
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        existing = self._reuse_or_clean(context, policy, ops, store)
        if existing is not None:
            return existing

        with held_staging(staging_dir(config, self.target, context["run_id"]), dump_leftovers(self.target)) as staging:
            dump, taken_at = self._staged_or_new_dump(config, policy, store, ops, staging)
            prefix = backup_prefix(self.target, "full", taken_at)
            try:
                manifest = read_manifest(store, prefix)  # an earlier attempt stored it but could not record it
                if manifest is None:
                    manifest = new_manifest(
                        context, policy, store, prefix, self.target, kind="full", taken_at=taken_at,
                        snapshot_id=dump.snapshot_id, server_version=dump.server_version, tool=dump.tool,
                        files=[FileEntry(dump.path.name, dump.bytes, dump.sha256, dump.raw_bytes)], tables=dump.tables,
                        constraints=dump.constraints, not_validated=dump.not_validated, dump_seconds=dump.seconds,
                        archive=ARCHIVES[policy.format],
                        dump_jobs=policy.dump_jobs if policy.format == "directory" else 1)
                    store_backup(store, manifest, staging)
            except Exception as err:
                raise classify(err, f"storing {prefix} in {store.describe()} failed; the dump stays staged in "
                                    f"{staging}") from err
            with ops.transaction() as conn:
                catalog.record_backup(conn, manifest)
            shutil.rmtree(staging, ignore_errors=True)
            self.log.info("stored OK: backup %s (snapshot %s, for the run of %s): %s (%s raw), %d tables, %d rows, "
                          "dump %.1f s, upload %.1f s", manifest.location, manifest.taken_at, manifest.covers or "-",
                          human_bytes(dump.bytes), human_bytes(dump.raw_bytes), len(dump.tables), manifest.total_rows,
                          dump.seconds, manifest.timings["upload_seconds"], bytes=dump.bytes, raw_bytes=dump.raw_bytes,
                          tables=len(dump.tables), rows=manifest.total_rows, backup_id=manifest.backup_id)
        return backup_result(manifest)

    def _staged_or_new_dump(self, config: DbopsConfig, policy: BackupPolicy, store: BackupStore,
                            ops: OpsDatabaseHook, staging: Path) -> tuple[DumpResult, datetime]:
        """The dump and its snapshot time: staged by an earlier attempt of this run, or taken now."""
        from dbops.backup.dump import dump_database
        from dbops.backup.staging import check_staging_space, keep_staged, staged_dump
        from dbops.core.scratch import empty
        from dbops.backup.store_io import free_snapshot_time
        from dbops.core.errors import dump_permission_fix
        from dbops.hooks.keys import encryption_key
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.hooks.tools import ToolVersionError, find_tool

        staged = staged_dump(staging)
        if staged is not None:
            self.log.info("reusing the dump staged by an earlier attempt: %s", staged[0].path)
            return staged
        empty(staging)
        hook = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        taken_at = free_snapshot_time(store, ops, self.target)  # the snapshot is exported right after
        try:
            tool = find_tool("pg_dump", hook.server_version_num(), config.tools.bin_dir, config.tools.exclusive)
            check_staging_space(hook, staging, self.target)
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
        keep_staged(staging, dump, taken_at)
        return dump, taken_at


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
        backup = context["ti"].xcom_pull(task_ids=self.backup_task_id)
        verify = context["ti"].xcom_pull(task_ids=self.verify_task_id) or {}
        if not backup:
            raise AirflowSkipException(f"FAILED: backup of {self.target}: no backup was made in this run")
        verified = bool(verify.get("verified"))
        verdict = "verified OK" if verified else f"FAILED: not verified ({self.verify_task_id} failed or did not run)"
        if verify.get("verified_earlier"):
            verdict += " (by an earlier recovery test; not restored again)"
        if "covered_period" in backup:
            made = f"taken earlier; nothing dumped: it covers this run's past period {backup['covered_period']}"
        else:
            made = "made by this run"
        ratio = backup["raw_bytes"] / backup["bytes"] if backup["bytes"] else 0.0
        self.log.info(
            "%s: backup %s (snapshot %s, %s): %s stored (%.1fx compression of %s), dump %.1f s, upload %.1f s, "
            "restore %s s, %d tables, %d rows", verdict, backup["location"], backup.get("taken_at") or "-", made,
            human_bytes(backup["bytes"]), ratio, human_bytes(backup["raw_bytes"]), backup.get("dump_seconds", 0.0),
            backup.get("upload_seconds", 0.0), verify.get("restore_seconds", "-"), backup["tables"], backup["rows"],
            backup_id=backup["backup_id"], bytes=backup["bytes"], raw_bytes=backup["raw_bytes"],
            tables=backup["tables"], rows=backup["rows"], verified=verified)
        if not verified:
            raise AirflowSkipException("the backup is not verified: no Asset event for it")
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {
                "backup_id": backup["backup_id"], "location": backup["location"], "bytes": backup["bytes"]}


class ScratchDatabaseOperator(_BackupTargetOperator):
    """Create (setup) or drop (teardown) the scratch database a verification restores into.

    By default the verification restores into a throwaway cluster on the worker, which the verify task
    makes and removes itself: then the setup only removes the clusters of dead verifications on this worker,
    and the teardown this run's if its verify task was killed (stopping its server first). Neither touches a
    database server. With ``backup.verify_conn_id`` (or ``verify_on_target``) they create and drop the scratch
    database on that server.

    :param database: the scratch database's name; default one per run
        (:func:`dbops.backup.verify.scratch_database_name`).
    :param drop: drop it instead of creating it.
    """

    template_fields: Sequence[str] = ("target", "database")

    def __init__(self, *, database: str | None = None, drop: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.database = database
        self.drop = drop

    def execute(self, context: Context) -> None:
        from dbops.backup.restore import create_database, drop_database
        from dbops.backup.throwaway import remove_dead_clusters
        from dbops.backup.verify import scratch_database_name, verify_restore_server

        config, _, _ = self._setup()
        admin = verify_restore_server(config, self.target)
        if admin is None:
            removed = remove_dead_clusters(config, *((self.target, context["run_id"]) if self.drop else ()))
            self.log.info("the verification restores into a throwaway cluster on the worker (made and removed by the "
                          "verify task); %d left by dead verifications removed", len(removed))
            return
        database = self.database or scratch_database_name(self.target, context["run_id"])
        if self.drop:
            drop_database(admin, database)
            self.log.info("dropped scratch database %s", database)
        else:
            create_database(admin, database, replace=True)
            self.log.info("created scratch database %s on %s", database, admin.postgres_conn_id)


class _VerifyTargetOperator(_BackupTargetOperator):
    """A verification restore of one stored backup into a scratch database; the engine's subclass restores."""

    template_fields: Sequence[str] = ("target", "backup_id", "database")

    def __init__(self, *, backup_id: str, database: str | None = None, reverify: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.database = database
        self.reverify = reverify


class VerifyBackupOperator(_VerifyTargetOperator):
    """Restore a *stored* backup into a scratch database and prove it, then record the recovery test.

    By default the restore goes to a throwaway cluster on the worker (:mod:`dbops.backup.throwaway`,
    binaries of the backup's source major version), made and removed by this task: the target's server
    is never touched. The roles the backup names are created there (without passwords), so owners and
    grants are restored as well. With ``backup.verify_conn_id`` the scratch database is on that server,
    with ``backup.verify_on_target`` on the target's own (the log says what that costs); there owners
    and grants are skipped (the check output says so). Before anything is fetched, ``staging_dir`` must
    have room for it (:func:`dbops.backup.verify.check_room`); before restoring, the server must have
    the extensions, collations and locales the backup needs; otherwise the task fails at once, naming
    them and recording nothing (the backup is not proven bad).

    Downloads the archive from the store (size and sha256 checked), restores it with parallel
    ``pg_restore``, compares every table's row count with the dump snapshot's, checks that every
    primary-key, unique, foreign-key and check constraint was rebuilt, valid unless it was NOT VALID in
    the snapshot, and runs ``pg_amcheck``.
    The outcome goes into the ops database (``dbops.recovery_tests``) and into the manifest. A failed
    verification fails the task at once, without retries: the backup will not get better. A transient
    fault (a lost connection, a tool past its timeout) raises, is retried and records nothing.

    :param backup_id: the backup to verify: a folder name (``20261130T020000Z``), a full id
        (``<target>/full/20261130T020000Z``), ``latest`` or ``latest-verified``.
    :param database: the scratch database (created beforehand, dropped by a teardown); default one per
        run (:func:`dbops.backup.verify.scratch_database_name`).
    :param reverify: restore a backup that an earlier recovery test already verified OK again (the
        nightly DAG sets False: a backfill reusing last night's backup does not restore it once more).
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.backup.lookup import load_manifest, resolve_backup_id
        from dbops.backup.verify import (
            check_room,
            on_target_cost,
            restore_and_check,
            scratch_database_name,
            verify_restore_server,
        )
        from dbops.hooks.ops import OpsDatabaseHook

        config, policy, store = self._setup()
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        self.database = self.database or scratch_database_name(self.target, context["run_id"])
        self.backup_id = resolve_backup_id(ops, self.target, self.backup_id)
        manifest = load_manifest(ops, store, self.target, self.backup_id)
        earlier = manifest.verification or {}
        if not self.reverify and earlier.get("ok"):
            self.log.info("verified OK earlier: backup %s passed its recovery test of %s (run %s); not restoring it "
                          "again (pg_verify_backup__%s re-verifies on demand)", manifest.location,
                          earlier.get("started_at"), earlier.get("run_id"), self.target, backup_id=self.backup_id)
            return {"backup_id": self.backup_id, "verified": True, "restore_seconds": earlier.get("restore_seconds"),
                    "verified_earlier": True}
        started_at = datetime.now(timezone.utc)
        server = verify_restore_server(config, self.target)
        check_room(config, policy, manifest, throwaway=server is None)
        timeout = tool_timeout(self.execution_timeout)
        try:
            if server is None:
                outcome = self._on_throwaway_cluster(context, config, policy, store, manifest, timeout)
            else:
                if policy.verify_on_target:
                    self.log.warning(on_target_cost(self.target, manifest))
                outcome = restore_and_check(config, policy, store, manifest, server, self.database, run_amcheck=True,
                                            owners=False, timeout=timeout,
                                            server=f"the verification server (connection {server.postgres_conn_id})")
        except AirflowException:
            raise
        except Exception as err:
            raise classify(err, f"verifying {self.backup_id} could not run") from err
        self._record_verification(context, ops, store, manifest, self.backup_id, started_at, outcome)
        self.log.info("verified OK: backup %s (%s): restored in %.1f s, %d tables and %d rows match the snapshot",
                      manifest.location, human_bytes(manifest.total_bytes), outcome["restore_seconds"],
                      outcome["checks"]["row_counts"]["tables"], outcome["checks"]["row_counts"]["rows"],
                      backup_id=self.backup_id, bytes=manifest.total_bytes,
                      restore_seconds=outcome["restore_seconds"])
        return {"backup_id": self.backup_id, "verified": True, "restore_seconds": outcome["restore_seconds"]}

    def _on_throwaway_cluster(self, context: Context, config: DbopsConfig, policy: BackupPolicy, store: BackupStore,
                              manifest: Manifest, timeout: float) -> dict[str, Any]:
        """Restore and check in a throwaway cluster on the worker, with owners and grants."""
        from dbops.backup.restore import create_database
        from dbops.backup.throwaway import ClusterFailed, throwaway_cluster
        from dbops.backup.verify import VerificationCannotRun, restore_and_check
        from dbops.hooks.tools import ToolVersionError

        try:
            with throwaway_cluster(config, self.target, context["run_id"], manifest.server_version, policy.jobs,
                                   timeout) as cluster:
                create_database(cluster, self.database)
                return restore_and_check(
                    config, policy, store, manifest, cluster, self.database, run_amcheck=True, owners=True,
                    create_roles=True, timeout=timeout,
                    server=f"the throwaway cluster on this worker (PostgreSQL {manifest.server_version.split('.')[0]})")
        except (ToolVersionError, ClusterFailed) as err:
            raise VerificationCannotRun(f"the throwaway cluster for verifying {manifest.location} could not run: {err}. "
                                        "Or set backup.verify_conn_id to restore on a verification server") from err


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
        from dbops.backup.lookup import load_manifest, resolve_backup_id
        from dbops.backup.restore import (
            RESTORED_BY,
            check_replaceable,
            create_database,
            derived_name,
            drop_database,
            drop_leftover,
            swap_databases,
        )
        from dbops.backup.verify import check_room, restore_and_check, verification_server
        from dbops.hooks.ops import OpsDatabaseHook

        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        admin = verification_server(config, self.target)
        check_replaceable(config, self.target, admin, self.database, self.overwrite, self.confirm_database)
        backup_id = resolve_backup_id(ops, self.target, self.backup_id)
        manifest = load_manifest(ops, store, self.target, backup_id)
        check_room(config, policy, manifest, throwaway=False)
        temporary = derived_name(self.database, "__dbops_restoring")
        if drop_leftover(admin, temporary):
            self.log.info("dropped %s, left behind by an interrupted restore", temporary)
        create_database(admin, temporary, comment=f"{RESTORED_BY}{backup_id} by {context['run_id']}")
        try:
            outcome = restore_and_check(config, policy, store, manifest, admin, temporary, run_amcheck=False,
                                        owners=True, timeout=tool_timeout(self.execution_timeout),
                                        server=f"the server of connection {admin.postgres_conn_id}")
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
            raise AirflowFailException(f"FAILED: restore of {manifest.location} into {self.database}; "
                                       f"{self.database} is unchanged (the temporary {temporary} was dropped): "
                                       f"{outcome['error']}")
        if replaced:
            drop_database(admin, retired)
        self.log.info("restored OK: backup %s (%s) into database %s in %.1f s with owners and grants%s: %d tables, "
                      "%d rows match the manifest", manifest.location, human_bytes(manifest.total_bytes),
                      self.database, outcome["restore_seconds"],
                      " (the database it replaced was dropped)" if replaced else "", len(manifest.tables),
                      manifest.total_rows, backup_id=backup_id, database=self.database, bytes=manifest.total_bytes,
                      rows=manifest.total_rows, restore_seconds=outcome["restore_seconds"])
        return {"backup_id": backup_id, "database": self.database, "restore_seconds": outcome["restore_seconds"],
                "replaced": replaced}


class BackupRetentionOperator(_BackupTargetOperator):
    """Delete the target's backups outside its retention, and its tenant exports past ``tenant_retention``.

    Full backups follow :func:`dbops.backup.retention.plan_retention` (never the newest verified backup,
    nothing newer than it, nothing while the newest backup failed verification); tenant exports follow
    :func:`dbops.backup.retention.plan_expiry`, measured from the run's date. One retention per target runs
    at a time (``job_lock``). Each deletion (:func:`dbops.backup.store_io.delete_backup`) marks the catalog
    row ``deleting``, removes the manifest first, then the files, then records it ``deleted``: an
    interrupted deletion never leaves a half backup that looks complete, and the next run finishes it.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config, policy, store = self._setup()
        with job_lock(config.ops_conn_id, self.target, "retention"):
            return self._apply(context, config, policy, store)

    def _apply(self, context: Context, config: DbopsConfig, policy: BackupPolicy,
               store: BackupStore) -> dict[str, Any]:
        from dbops.backup.retention import plan_expiry, plan_retention
        from dbops.backup.store_io import delete_backup
        from dbops.core.runs import run_date
        from dbops.hooks.ops import OpsDatabaseHook

        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        with ops.transaction() as conn:
            full = plan_retention(catalog.backups(conn, self.target), policy.retention)
            tenant = plan_expiry(catalog.backups(conn, self.target, kind="tenant"), policy.tenant_retention,
                                 run_date(context))
            unfinished = [*catalog.backups(conn, self.target, status="deleting"),
                          *catalog.backups(conn, self.target, kind="tenant", status="deleting")]
        if full.blocked:
            self.log.warning("retention deletes no full backup: %s", full.blocked)
        work = [(b, "unfinished deletion") for b in unfinished]
        work += [(b, plan.reasons[b.backup_id]) for plan in (full, tenant) for b in plan.delete]
        for backup, reason in work:
            if delete_backup(ops, store, backup.backup_id):
                self.log.info("deleted %s (%s)", backup.backup_id, reason)
            else:
                self.log.info("backup %s is already deleted", backup.backup_id)
        deleted = [b.backup_id for b in (*full.delete, *tenant.delete)]
        verdict = "BLOCKED for full backups" if full.blocked else "OK"
        self.log.info("retention %s: %s: kept %d backups and %d tenant exports, deleted %d (and %d unfinished)%s",
                      verdict, store.describe(), len(full.keep), len(tenant.keep), len(deleted), len(unfinished),
                      f" (blocked: {full.blocked})" if full.blocked else "", kept=len(full.keep),
                      kept_tenant=len(tenant.keep), deleted=len(deleted), unfinished=len(unfinished))
        return {"kept": [b.backup_id for b in (*full.keep, *tenant.keep)], "deleted": deleted}


class TenantExportOperator(_BackupTargetOperator):
    """Export the rows of ``backup.tenant_tables`` whose ``tenant_id`` is ``tenant_id``, stored like a backup.

    All tables are read in one exported snapshot, so the export is consistent. Each table is a
    zstd-compressed CSV (with header) ``<table>.csv.zst``, stored and read back (size and sha256) like a
    backup's archive; the manifest, written last, holds the row counts and checksums. Stored under
    ``<target>/tenant/<tenant_id>/<run date>/`` and catalogued (kind ``tenant``); the backup DAG's
    retention task deletes exports older than ``backup.tenant_retention``.

    :param tenant_id: the tenant to export; compared as a value (never spliced into SQL).
    """

    template_fields: Sequence[str] = ("target", "tenant_id")

    def __init__(self, *, tenant_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tenant_id = tenant_id

    def execute(self, context: Context) -> dict[str, Any]:
        import psycopg

        from dbops.backup.staging import held_staging
        from dbops.backup.tenant import TOOL, checked_tenant_id, export_tenant
        from dbops.core.runs import run_date
        from dbops.hooks.keys import encryption_key
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.hooks.postgres import DbopsPostgresHook

        config, policy, store = self._setup()
        if not policy.tenant_tables:
            raise AirflowFailException(f"target {self.target} has no backup.tenant_tables in {config.path}")
        tenant = checked_tenant_id(self.tenant_id)
        prefix = backup_prefix(self.target, "tenant", run_date(context), tenant=tenant)
        existing = read_manifest(store, prefix)
        if existing is not None:
            self.log.info("complete, nothing exported: tenant export %s is already stored", existing.location,
                          backup_id=prefix, bytes=existing.total_bytes)
            return backup_result(existing)
        remove_incomplete(store, prefix)
        staging_path = config.staging_path / prefix.replace("/", "__")
        with held_staging(staging_path, f"{glob.escape(self.target)}__tenant__*") as staging:
            hook = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
            key = encryption_key(policy.encryption_conn_id)
            taken_at = datetime.now(timezone.utc).replace(microsecond=0)  # the export's snapshot is taken right after
            try:
                export = export_tenant(hook, policy.tenant_tables, tenant, staging, policy.compression_level, key)
            except psycopg.errors.InvalidTextRepresentation as err:
                raise AirflowFailException(f"tenant id {tenant!r} is not a valid tenant_id value: {err}") from err
            except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as err:
                raise AirflowFailException(f"backup.tenant_tables of {self.target}: {err}") from err
            except Exception as err:
                raise classify(err, f"exporting tenant {tenant} of {self.target} failed") from err
            manifest = new_manifest(
                context, policy, store, prefix, self.target, kind="tenant", taken_at=taken_at,
                snapshot_id=export.snapshot_id, server_version=export.server_version, tool=TOOL, files=export.files,
                tables=export.tables, dump_seconds=export.seconds, archive="csv per table", tenant_id=tenant)
            try:
                store_backup(store, manifest, staging)
            except Exception as err:
                raise classify(err, f"storing {prefix} in {store.describe()} failed") from err
            with OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).transaction() as conn:
                catalog.record_backup(conn, manifest)
            shutil.rmtree(staging, ignore_errors=True)
            self.log.info("exported OK: tenant %s of %s to %s: %d tables, %d rows, %s, %.1f s", tenant, self.target,
                          manifest.location, len(export.tables), manifest.total_rows, human_bytes(manifest.total_bytes),
                          export.seconds, backup_id=prefix, bytes=manifest.total_bytes, rows=manifest.total_rows,
                          tables=len(export.tables))
        return backup_result(manifest)
