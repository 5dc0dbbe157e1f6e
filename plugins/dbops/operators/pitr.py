"""The point-in-time recovery operators: base backup, WAL shipping, recovery test, restore, retention.
The work lives in :mod:`dbops.backup` (basebackup, wal_ship, pitr, pitr_retention)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.backup import pitr_catalog
from dbops.core.errors import classify
from dbops.core.processes import tool_timeout
from dbops.core.units import human_bytes
from dbops.hooks.keys import encryption_key
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.backup.pitr_policy import PitrPolicy
    from dbops.core.config import DbopsConfig
    from dbops.core.store import BackupStore
    from dbops.hooks.ops import OpsDatabaseHook
    from dbops.hooks.postgres import DbopsPostgresHook
    from dbops.hooks.tools import PgTool


RECOVERY_LOCK = "pitr_recovery"  # recoveries hold it shared, retention exclusively
RESTORE_RECORD = "restore.json"  # in a restore's work directory: the data directory it makes, and its run


class RecoveryTestFailed(AirflowFailException):
    """A recovery test proved the archive cannot recover to the target: retrying will not help."""


def _run_dir(config: DbopsConfig, target: str, what: str, run_id: str) -> Path:
    return config.staging_path / f"{target}__{what}__{hashlib.sha1(run_id.encode()).hexdigest()[:12]}"


def wal_staging(config: DbopsConfig, target: str) -> Path:
    """pg_receivewal's directory: scratch space of one shipping run (emptied at its start and end)."""
    return config.staging_path / f"{target}__wal"


class _PitrOperator(TargetOperator):
    """A target operator that needs the target's ``pitr`` policy, its store and the ops database."""

    def _setup(self) -> tuple[DbopsConfig, PitrPolicy, BackupStore, OpsDatabaseHook]:
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.hooks.store import get_store

        config = self.load_config()
        policy = config.targets[self.target].pitr
        if policy is None:
            raise AirflowFailException(f"target {self.target!r} has no pitr policy in {config.path}")
        return (config, policy, get_store(config.storage[policy.storage]),
                OpsDatabaseHook(postgres_conn_id=config.ops_conn_id))

    def _replication_hook(self, config: DbopsConfig, policy: PitrPolicy) -> DbopsPostgresHook:
        from dbops.hooks.postgres import DbopsPostgresHook

        return DbopsPostgresHook(postgres_conn_id=policy.replication_conn_id or config.targets[self.target].conn_id)

    def _tool(self, config: DbopsConfig, hook: DbopsPostgresHook, name: str) -> PgTool:
        from dbops.hooks.tools import ToolVersionError, find_tool

        try:
            return find_tool(name, hook.server_version_num(), config.tools.bin_dir, config.tools.exclusive)
        except ToolVersionError as err:
            raise AirflowFailException(str(err)) from err


    def _sweep_scratch(self, config: DbopsConfig) -> None:
        """Remove the scratch directories of this target's PITR runs that are no longer running (killed), each
        held by its run while it works (:mod:`dbops.core.scratch`): a base backup's staging, a recovery test's
        scratch cluster, a restore's work directory and the half-made data directory it marked. Servers left
        running are stopped first, their socket directories removed."""
        from dbops.backup.pitr import remove_scratch
        from dbops.core.scratch import sweep

        bin_dir = _server_bin_dir()
        removed = [*sweep(config.staging_path, f"{self.target}__basebackup__*"),
                   *sweep(config.staging_path, f"{self.target}__pitr__*", lambda root: remove_scratch(root, bin_dir)),
                   *sweep(config.staging_path, f"{self.target}__restore_pitr__*", self._remove_restore_work)]
        for path in removed:
            self.log.warning("removed %s, left by a run that is no longer running (killed)", path)

    def _remove_restore_work(self, root: Path) -> None:
        """Remove a killed restore's work directory and the data directory it was making, if it marked it."""
        from dbops.backup.pitr import read_marker, remove_scratch

        try:
            record = json.loads((root / RESTORE_RECORD).read_text())
        except (OSError, ValueError):
            record = {}
        data = Path(record["data_directory"]) if record.get("data_directory") else None
        remove_scratch(root, _server_bin_dir(), data)
        if data is None or not data.exists():
            return
        marker = read_marker(data)
        if marker is not None and marker.get("run_id") == record.get("run_id"):
            shutil.rmtree(data, ignore_errors=True)
            self.log.warning("removed %s: a data directory pg_restore_pitr__%s run %s was making when it was killed",
                             data, self.target, record.get("run_id"))
        elif data.is_dir() and any(data.iterdir()):
            self.log.warning("%s may be a leftover of pg_restore_pitr__%s run %s, killed before it could mark it (or "
                             "after it had finished): it has no %s, so it is not removed; check it and delete it by "
                             "hand if it is", data, self.target, record.get("run_id"), "dbops_restore.json")

    def _ship(self, config: DbopsConfig, policy: PitrPolicy, store: BackupStore, ops: OpsDatabaseHook):
        """One WAL shipping pass (the caller holds the target's ``wal_ship`` lock)."""
        from dbops.backup.wal_ship import check_lost, check_retained, ship_wal, slot_name

        hook = self._replication_hook(config, policy)
        staging = wal_staging(config, self.target)
        try:
            check_lost(hook, slot_name(self.target), self.target)
            tool = self._tool(config, hook, "pg_receivewal")
            result = ship_wal(hook, tool, ops, store, self.target, staging, policy.compression_level,
                              tool_timeout(self.execution_timeout), encryption_key(policy.encryption_conn_id))
            check_retained(result.retained_bytes, self.target, policy.max_retained_wal)
            return result
        except AirflowException:
            raise
        except Exception as err:
            raise classify(err, f"shipping WAL of {self.target} to {store.describe()} failed; the slot "
                                f"{slot_name(self.target)} keeps what is not stored, the next run streams it "
                                "again") from err


class BaseBackupOperator(_PitrOperator):
    """Take a physical base backup of the target's cluster and store it with its manifest.

    Incremental (``pg_basebackup --incremental``) on top of the newest base backup, unless a full is due:
    ``pitr.full_schedule`` ticked since the newest full, ``full`` is set, or the would-be parent is not verified
    by a recovery test or a file of its chain (full and incrementals) is missing from the store or has another
    size than recorded (an incremental on it is refused, and the reason logged). The archive and PostgreSQL's
    ``backup_manifest`` are stored and read back; our manifest (sha256 per file, start/stop LSN and time,
    parent) is written last and catalogued. A retried task returns the backup its run already made; a run for a
    past period (a backfill) takes nothing when a base backup was taken at or after the period's start, and says
    which. The WAL slot is created first, so that shipping holds every segment the backup needs.

    :param full: take a full backup whatever the schedule says.
    """

    template_fields: Sequence[str] = ("target", "full")

    def __init__(self, *, full: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.full = full

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config, policy, store, ops = self._setup()
        with job_lock(config.ops_conn_id, self.target, "basebackup"):
            result = self._backup(context, config, policy, store, ops)
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {"backup_id": result["backup_id"], "kind": result["kind"]}
        return result

    def _backup(self, context: Context, config: DbopsConfig, policy: PitrPolicy, store: BackupStore,
                ops: OpsDatabaseHook) -> dict[str, Any]:
        from dbops.backup import catalog
        from dbops.backup.basebackup import (
            ARCHIVE, BACKUP_MANIFEST, check_single_tablespace, choose_parent, take_basebackup)
        from dbops.backup.pitr_destination import server_paths
        from dbops.backup.runs import is_past_period, run_type_of
        from dbops.backup.store_io import (
            read_manifest, remove_incomplete, store_backup, uncatalogued_backup_of_run, verify_stored)
        from dbops.backup.wal_ship import ensure_slot, segment_size, slot_name
        from dbops.core.manifest import FileEntry, Manifest, backup_prefix
        from dbops.core.runs import run_date
        from dbops.core.scratch import empty
        from dbops.core.streams import file_sha256
        from dbops.hooks.postgres import DbopsPostgresHook

        with ops.transaction() as conn:
            backups = pitr_catalog.base_backups(conn, self.target)
        own = next((b for b in backups if b.manifest.run_id == context["run_id"]), None)
        if own is not None:
            self.log.info("complete, nothing taken: base backup %s of this run is already stored", own.backup_id)
            return _backup_result(own.manifest)
        period = run_date(context)
        if is_past_period(policy.schedule, period, run_type_of(context), datetime.now(timezone.utc)):
            newer = next((b for b in backups if b.taken_at >= period and read_manifest(store, b.backup_id)), None)
            if newer is not None:
                self.log.info("complete, nothing taken: run for the past period %s; base backup %s (taken %s) "
                              "already holds data at least that new", period.isoformat(), newer.backup_id,
                              newer.taken_at.isoformat(), backup_id=newer.backup_id)
                return {**_backup_result(newer.manifest), "covered_period": period.isoformat()}
        hook = self._replication_hook(config, policy)
        try:
            stored = uncatalogued_backup_of_run(store, ops, f"{self.target}/basebackup/", context["run_id"])
            if stored is not None:
                self.log.info("complete, nothing taken: base backup %s of this run was stored by an earlier attempt "
                              "that could not record it; recorded now", stored.backup_id, backup_id=stored.backup_id)
                return _backup_result(stored)
            for folder, files in remove_incomplete(store, f"{self.target}/basebackup/").items():
                self.log.info("removed %s, left incomplete by an earlier attempt (%d files)", folder, files)
            ensure_slot(hook, slot_name(self.target))
            parent, reason = choose_parent(backups, store, policy.full_schedule, run_date(context),
                                           str(self.full).lower() in ("true", "1"))
            tool = self._tool(config, hook, "pg_basebackup")
            server_version = hook.get_first("SHOW server_version")[0]
            wal_compression = hook.get_first("SHOW wal_compression")[0]
            source_paths = server_paths(DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id))
            wal_segment_size = segment_size(hook)
            check_single_tablespace(hook, self.target)
        except AirflowFailException:
            raise
        except Exception as err:
            raise classify(err, f"preparing the base backup of {self.target} failed") from err
        (self.log.warning if reason.startswith("incremental refused") else self.log.info)(
            "%s: %s", "incremental" if parent else "full", reason)
        staging = _run_dir(config, self.target, "basebackup", context["run_id"])
        self._sweep_scratch(config)
        with _claimed(staging):  # a later run removes it if this one is killed
            empty(staging)  # an earlier try's
            try:
                parent_manifest = None
                if parent is not None:
                    parent_manifest = staging / f"parent_{BACKUP_MANIFEST}"
                    key = f"{parent.backup_id}/{BACKUP_MANIFEST}"
                    store.get_file(key, parent_manifest)
                    entry = next(f for f in parent.manifest.files if f.name == BACKUP_MANIFEST)
                    verify_stored(store, key, entry.bytes, entry.sha256)
                taken_at = datetime.now(timezone.utc).replace(microsecond=0)
                while store.list_keys(backup_prefix(self.target, "basebackup", taken_at)):
                    time.sleep(1)
                    taken_at = datetime.now(timezone.utc).replace(microsecond=0)
                prefix = backup_prefix(self.target, "basebackup", taken_at)
                with hook.cli_environment() as env:
                    result = take_basebackup(tool, env, staging / ARCHIVE, policy.compression_level, parent_manifest,
                                             tool_timeout(self.execution_timeout),
                                             encryption_key(policy.encryption_conn_id))
                (staging / BACKUP_MANIFEST).write_bytes(result.backup_manifest)
                # the server's clock: recovery target times are compared with it, never with this worker's
                stop_time = hook.get_first("SELECT clock_timestamp()")[0]
                logical_date = context.get("logical_date")
                manifest = Manifest(
                    backup_id=prefix, target=self.target,
                    kind=pitr_catalog.INCREMENTAL if parent else pitr_catalog.FULL,
                    logical_date=run_date(context).isoformat(), run_id=context["run_id"],
                    location=f"{store.describe()}/{prefix}", server_version=server_version,
                    tool=f"{tool.name} {tool.version}", snapshot_id=result.start_lsn,
                    files=[FileEntry(ARCHIVE, result.bytes, result.sha256, result.raw_bytes),
                           FileEntry(BACKUP_MANIFEST, len(result.backup_manifest),
                                     file_sha256(staging / BACKUP_MANIFEST), len(result.backup_manifest))],
                    tables={}, constraints=[], timings={"basebackup_seconds": round(result.seconds, 3)},
                    compression={"codec": "zstd", "level": policy.compression_level,
                                 "archive": "pg_basebackup tar, --wal-method=fetch"},
                    taken_at=taken_at.isoformat(), covers=logical_date.isoformat() if logical_date else None,
                    run_type=run_type_of(context), storage=policy.storage,
                    encryption={"algorithm": "AES-256-GCM", "key_conn_id": policy.encryption_conn_id}
                    if policy.encryption_conn_id else None,
                    extra={"start_lsn": result.start_lsn, "stop_lsn": result.stop_lsn, "timeline": result.timeline,
                           "parent": parent.backup_id if parent else None, "reason": reason,
                           "wal_segment_size": wal_segment_size, "source_paths": source_paths,
                           "wal_compression": wal_compression,
                           "stop_time": stop_time.isoformat()})
                store_backup(store, manifest, staging)
            except AirflowException:
                raise
            except Exception as err:
                raise classify(err, f"base backup of {self.target} into {store.describe()} failed") from err
            with ops.transaction() as conn:
                catalog.record_backup(conn, manifest)
            shutil.rmtree(staging, ignore_errors=True)
        self.log.info("stored OK: %s base backup %s (parent %s): %s (%s raw), LSN %s..%s, %.1f s backup, "
                      "%.1f s upload", manifest.kind, manifest.location, manifest.extra["parent"] or "-",
                      human_bytes(result.bytes), human_bytes(result.raw_bytes), result.start_lsn, result.stop_lsn,
                      result.seconds, manifest.timings["upload_seconds"], backup_id=prefix, bytes=result.bytes,
                      raw_bytes=result.raw_bytes, kind=manifest.kind)
        return _backup_result(manifest)


def _backup_result(manifest) -> dict[str, Any]:
    return {"backup_id": manifest.backup_id, "kind": manifest.kind, "bytes": manifest.total_bytes,
            "parent": manifest.extra.get("parent"), "start_lsn": manifest.extra.get("start_lsn"),
            "stop_lsn": manifest.extra.get("stop_lsn"), **manifest.timings}


class WalShipOperator(_PitrOperator):
    """Ship the target's WAL to the store through its replication slot (:mod:`dbops.backup.wal_ship`),
    then check the archive has no gap since the newest full base backup.

    Fails, saying what to do, when the slot retains more than ``pitr.max_retained_wal``, and when the
    archive has a gap (a base backup taken after the gap is needed for recovery past it).
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config, policy, store, ops = self._setup()
        with job_lock(config.ops_conn_id, self.target, "wal_ship", wait_seconds=120):
            result = self._ship(config, policy, store, ops)
        gaps = archive_gaps(ops, self._replication_hook(config, policy), self.target)
        switched = timeline_switch(ops, self.target, result.partial or result.segments[-1])
        self.log.info("shipped OK: %d finished segment(s)%s, %s stored (%s of WAL) up to %s; slot retains %s%s; "
                      "%.1f s", len(result.segments), f" and partial {result.partial}" if result.partial else "",
                      human_bytes(result.bytes), human_bytes(result.raw_bytes), result.end_lsn,
                      human_bytes(result.retained_bytes),
                      " (not advanced: a base backup is running and needs its WAL)" if result.held_for_basebackup
                      else "", result.seconds, segments=len(result.segments),
                      bytes=result.bytes, raw_bytes=result.raw_bytes, retained_bytes=result.retained_bytes)
        if gaps:
            raise AirflowFailException(
                f"the WAL archive of {self.target} has a gap: {len(gaps)} segment(s) missing ({gaps[0]}"
                f"{'..' + gaps[-1] if len(gaps) > 1 else ''}); recovery cannot pass it. Trigger pg_basebackup__"
                f"{self.target} with full=true: recovery from that backup on needs no WAL before it")
        if result.histories:
            self.log.warning("shipped timeline history %s: the server of %s switched timeline (a failover or a "
                             "promotion); recovery follows the switch from the existing base backups",
                             ", ".join(result.histories), self.target)
        if switched:
            raise AirflowFailException(switched)
        return {"segments": result.segments, "partial": result.partial, "bytes": result.bytes,
                "end_lsn": result.end_lsn, "retained_bytes": result.retained_bytes,
                "held_for_basebackup": result.held_for_basebackup}


def archive_gaps(ops: OpsDatabaseHook, hook: DbopsPostgresHook, target: str) -> list[str]:
    """Segments missing from the archive since the newest full base backup's start (or the oldest stored)."""
    from dbops.backup.wal_ship import SEGMENT, find_gaps, segment_of_lsn, segment_size

    size = segment_size(hook)
    with ops.transaction() as conn:
        fulls = [b for b in pitr_catalog.base_backups(conn, target) if b.kind == pitr_catalog.FULL]
        stored = pitr_catalog.segments(conn, target)
    if not stored:
        return []
    first = (segment_of_lsn(fulls[0].start_lsn, fulls[0].manifest.extra["timeline"], size) if fulls
             else min(name for name in stored if SEGMENT.match(name)))
    return find_gaps(list(stored), first, size)


def timeline_switch(ops: OpsDatabaseHook, target: str, shipped: str) -> str | None:
    """What to do when the server's timeline (that of the segment just ``shipped``) is not the newest full
    base backup's (a failover or promotion) and the timeline's history file is not stored: recovery cannot
    follow the switch without it. None when recovery can cross it (or there was no switch)."""
    with ops.transaction() as conn:
        fulls = [b for b in pitr_catalog.base_backups(conn, target) if b.kind == pitr_catalog.FULL]
        stored = pitr_catalog.histories(conn, target)
    timeline = int(shipped[:8], 16)
    if not fulls or fulls[0].manifest.extra["timeline"] == timeline or f"{timeline:08X}.history" in stored:
        return None
    return (f"the server of {target} is on timeline {timeline} (a failover or a promotion), the newest full base "
            f"backup {fulls[0].backup_id} on timeline {fulls[0].manifest.extra['timeline']}, and the history file "
            f"{timeline:08X}.history was not shipped: recovery cannot cross the switch. Trigger pg_basebackup__"
            f"{target} with full=true; recovery to times before the switch still works from the existing backups. "
            "The WAL of the new timeline was shipped")


class ScratchClusterOperator(_PitrOperator):
    """Create (setup) or stop and delete (teardown) the scratch directory of a run's recovery."""

    def __init__(self, *, drop: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drop = drop

    def execute(self, context: Context) -> None:
        from dbops.backup.pitr import remove_scratch
        from dbops.core.scratch import claimed

        config = self.load_config()
        root = _run_dir(config, self.target, "pitr", context["run_id"])
        if self.drop:
            removed = remove_scratch(root, _server_bin_dir())
            self.log.info("%s scratch cluster %s", "stopped and deleted" if removed else "no", root)
        else:
            remove_scratch(root, _server_bin_dir())
            self._sweep_scratch(config)
            with claimed(root):  # its .lock: a sweep removes it once no run of this DAG works in it
                pass
            self.log.info("created scratch directory %s", root)


@contextmanager
def _claimed(root: Path) -> Iterator[Path]:
    """Hold the scratch directory ``root`` while the block runs (:func:`dbops.core.scratch.claimed`); one another
    running process holds fails this try, to be retried."""
    from dbops.core.scratch import ScratchBusy, claimed

    try:
        with claimed(root):
            yield root
    except ScratchBusy as err:
        raise AirflowException(f"{err}: an earlier try of this run is still working (transient; will retry)") from err


def _server_bin_dir() -> Path | None:
    """Where ``pg_ctl`` is to stop a leftover scratch server (any version does)."""
    from dbops.hooks.tools import embedded_bin_dir

    return embedded_bin_dir()


def recovery_bin_dir(config: DbopsConfig, server_version: str) -> Path:
    """A bin directory whose PostgreSQL server has the major version of the backed-up cluster
    (``server_version``): ``tools.bin_dir``, then the embedded wheel. Recovery needs the same major.

    :raises RecoveryFailed: none has it; the message says what was found.
    """
    from dbops.backup.pitr import RecoveryFailed
    from dbops.hooks.tools import ToolVersionError, server_bin_dir

    try:
        return server_bin_dir(int(server_version.split(".")[0]), config.tools.bin_dir, config.tools.exclusive)
    except ToolVersionError as err:
        raise RecoveryFailed(str(err)) from err


class PitrTestOperator(_PitrOperator):
    """Prove point-in-time recovery: recover the newest base backup chain plus the shipped WAL to a target
    time in a scratch cluster, and check it stopped exactly there. Records a recovery test.

    Without ``target_time`` (after each base backup): commits a ``before`` marker into the target's
    heartbeat table, notes the time and every table's rows, commits an ``after`` marker, ships WAL, then
    recovers to the noted time: the ``before`` marker must be there, the ``after`` one not, the row
    counts equal. With ``target_time`` (on demand): recovers to it and checks that recovery stopped
    there. A failed recovery fails the task without retries and names what failed (e.g. a corrupt WAL
    segment); the scratch cluster is stopped and deleted by the teardown.

    :param target_time: ISO 8601 time with a zone, ``latest`` (the end of the archive: recovery must replay
        into the newest stored segment), or empty for the marker test.
    """

    template_fields: Sequence[str] = ("target", "target_time")

    def __init__(self, *, target_time: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_time = target_time

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config = self.load_config()
        with job_lock(config.ops_conn_id, self.target, RECOVERY_LOCK, shared=True, retry_when_busy=True):
            self._sweep_scratch(config)
            with _claimed(_run_dir(config, self.target, "pitr", context["run_id"])):
                return self._test(context)

    def _test(self, context: Context) -> dict[str, Any]:
        from dbops.backup import catalog
        from dbops.backup.heartbeat import check_markers, write_markers
        from dbops.backup.pitr import RecoveryFailed, chain_for, recover, remove_scratch
        from dbops.backup.wal_ship import recorded_segment_size
        from dbops.core.locks import job_lock
        from dbops.core.streams import ChecksumMismatch
        from dbops.hooks.postgres import DbopsPostgresHook

        config, policy, store, ops = self._setup()
        source = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        markers = None
        if self.target_time:
            target_time = parse_target_time(self.target_time)
        else:
            try:
                with source.get_conn() as conn:
                    markers = write_markers(conn, context["run_id"])
            except Exception as err:
                raise classify(err, f"writing the heartbeat markers into {self.target} failed") from err
            target_time = markers.target_time
            with job_lock(config.ops_conn_id, self.target, "wal_ship", wait_seconds=300, retry_when_busy=True):
                self._ship(config, policy, store, ops)
        root = _run_dir(config, self.target, "pitr", context["run_id"])
        remove_scratch(root, _server_bin_dir(), keep=True)  # an earlier try's leftovers
        started_at = datetime.now(timezone.utc)
        checks: dict[str, Any] = {"target_time": shown(target_time)}
        chain, error, server = [], None, None
        try:
            with ops.transaction() as conn:
                backups = pitr_catalog.base_backups(conn, self.target)
            chain = chain_for(backups, target_time, self.target)
            segments, server = _recovery_server(config, policy, ops, source, self.target, chain, root)
            conn_info = source.connection
            figures = recover(store, chain, segments, server, target_time,
                              conn_info.login, source.database or conn_info.schema,
                              tool_timeout(self.execution_timeout), current_segment(ops, self.target),
                              encryption_key(policy.encryption_conn_id))
            checks["recovery"] = {"ok": True, **figures}
            if markers is not None:
                with server.connect(conn_info.login, source.database or conn_info.schema) as conn:
                    checks.update(check_markers(conn, markers))
            elif target_time is None:
                checks["target"] = reached_end(figures, segments, recorded_segment_size(chain[-1], source))
            else:  # PostgreSQL logs where it stopped; without a stop it would have failed to reach the target
                checks["target"] = {"ok": bool(figures.get("stopped")), "stopped": figures.get("stopped")}
        except (RecoveryFailed, ChecksumMismatch) as err:
            error = str(err)
            checks["recovery"] = {"ok": False, "error": error}
        except AirflowException:
            raise
        except Exception as err:
            raise classify(err, f"the recovery test of {self.target} could not run") from err
        finally:
            if server is not None:
                server.stop()
        failed = [f"{name}: {check.get('error') or check}" for name, check in checks.items()
                  if isinstance(check, dict) and not check.get("ok")]
        ok = not failed
        if chain:
            recovery = checks["recovery"]
            with ops.transaction() as conn:
                catalog.record_recovery_test(conn, chain[-1].backup_id, self.target, context["run_id"], started_at,
                                             recovery.get("seconds_to_consistent"), ok, checks,
                                             "; ".join(failed) or None,
                                             # an operator's target time may be past the archive's last commit
                                             failure_unverifies=markers is not None)
        if not ok:
            if server is not None:  # the teardown deletes the scratch directory, its log with it
                self.log.error("the scratch server's log ended with:\n%s", server.log_tail())
            raise RecoveryTestFailed(f"FAILED: point-in-time recovery of {self.target} to {shown(target_time)}: "
                                     f"{'; '.join(failed)}")
        recovery = checks["recovery"]
        self.log.info("recovered OK: %s to %s from %s: %s fetched, consistent in %.1f s, promoted in %.1f s, %s of "
                      "WAL replayed; markers %s", self.target, shown(target_time), " + ".join(recovery["chain"]),
                      human_bytes(recovery["bytes"]), recovery["seconds_to_consistent"],
                      recovery["seconds_to_promoted"], human_bytes(recovery.get("wal_replayed_bytes")),
                      "OK" if markers else "not written (on-demand target time)", backup_id=chain[-1].backup_id,
                      bytes=recovery["bytes"], wal_replayed_bytes=recovery.get("wal_replayed_bytes"))
        return {"backup_id": chain[-1].backup_id, "target_time": shown(target_time), "ok": True,
                **{k: v for k, v in recovery.items() if k != "ok"}}


LATEST = "latest"


def parse_target_time(value: str) -> datetime | None:
    """An ISO 8601 time with a zone, or None for ``latest`` (the end of the archive); anything else fails, saying
    what to type."""
    if value.strip().lower() == LATEST:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise AirflowFailException(f"target_time {value!r} is not an ISO 8601 time with a zone, "
                                   "e.g. 2026-11-30T16:05:00+00:00, nor 'latest' (the end of the archive)")
    if parsed > datetime.now(timezone.utc):
        raise AirflowFailException(f"target_time {value!r} is in the future: recovery can only reach a time the "
                                   "shipped WAL already covers (nothing was changed)")
    return parsed


def shown(target_time: datetime | None) -> str:
    """A target time as logged and recorded."""
    return target_time.isoformat() if target_time else f"{LATEST} (the end of the archive)"


def check_recovery_build(bin_dir: Path, chain: list, source: DbopsPostgresHook) -> None:
    """The recovery server can decompress the WAL: ``wal_compression`` as the chain's newest backup recorded it
    and as the source has it now (when it can be read)."""
    from dbops.backup.pitr import check_wal_compression

    values = {chain[-1].manifest.extra.get("wal_compression") or ""}
    try:
        values.add(source.get_first("SHOW wal_compression")[0])
    except Exception:  # the source may be down: a restore needs only the store and the catalog
        pass
    check_wal_compression(bin_dir, values)


def reached_end(figures: dict[str, Any], segments: dict, size: int) -> dict[str, Any]:
    """The check of a recovery to ``latest``: it replayed into the newest stored segment."""
    from dbops.backup.pitr import lsn_bytes
    from dbops.backup.wal_ship import SEGMENT, segment_number

    newest = max(name for name in segments if SEGMENT.match(name))
    redo = figures.get("redo_done_at")
    return {"ok": bool(redo) and lsn_bytes(redo) >= segment_number(newest, size)[1] * size,
            "redo_done_at": redo, "newest_stored_segment": newest,
            "last_transaction_at": figures.get("last_transaction_at")}


def needed_segments(ops: OpsDatabaseHook, hook: DbopsPostgresHook, target: str, newest) -> dict:
    """Stored segments from the start of ``newest`` (the chain's last backup) on; a gap among them fails."""
    from dbops.backup.pitr import RecoveryFailed
    from dbops.backup.wal_ship import find_gaps, recorded_segment_size, segment_of_lsn

    size = recorded_segment_size(newest, hook)
    first = segment_of_lsn(newest.start_lsn, newest.manifest.extra["timeline"], size)
    with ops.transaction() as conn:
        segments = {**pitr_catalog.segments(conn, target, first), **pitr_catalog.histories(conn, target)}
    gaps = find_gaps(list(segments), first, size)
    if gaps:
        raise RecoveryFailed(f"the WAL archive lacks segment(s) {', '.join(gaps[:5])} after base backup "
                             f"{newest.backup_id}")
    return segments


def _recovery_server(config: DbopsConfig, policy, ops: OpsDatabaseHook, source: DbopsPostgresHook, target: str,
                     chain: list, root: Path, data_dir: Path | None = None):
    """The WAL segments ``chain`` needs and a scratch server in ``root`` with binaries of its major version,
    checked to read the source's WAL (``data_dir``: where its data directory goes, default ``root/data``)."""
    from dbops.backup.pitr import ScratchServer, free_port

    bin_dir = recovery_bin_dir(config, chain[-1].manifest.server_version)
    check_recovery_build(bin_dir, chain, source)
    segments = needed_segments(ops, source, target, chain[-1])
    return segments, ScratchServer(root, bin_dir, free_port(*policy.scratch_ports), data_dir=data_dir)


def current_segment(ops: OpsDatabaseHook, target: str):
    """A lookup of one stored segment's current catalog entry (for a recovery that outlasts shipping runs)."""
    def lookup(name: str) -> tuple[bool, str, str] | None:
        with ops.transaction() as conn:
            return pitr_catalog.segments(conn, target, name, name).get(name)
    return lookup


class RestorePitrOperator(_PitrOperator):
    """Restore the target's cluster as of ``target_time`` into the data directory ``data_directory``.

    The chain of the newest base backup finished before ``target_time`` is combined and verified into
    the directory, recovered with the shipped WAL on a scratch port (Unix socket only) to the target time,
    promoted and stopped cleanly. Our recovery settings are then taken out again: the directory holds a
    consistent cluster, with the source's configuration, ready to start (``pg_ctl -D <dir> start``; set
    its port first if the source's is taken on this host). A directory that exists and is not empty is
    refused, and nothing is changed.

    :param target_time: ISO 8601 time with a zone, or ``latest`` (all the archive holds).
    :param data_directory: an absolute path that does not exist yet (or is empty).
    """

    template_fields: Sequence[str] = ("target", "target_time", "data_directory")

    def __init__(self, *, target_time: str, data_directory: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target_time = target_time
        self.data_directory = data_directory

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.backup.pitr import (
            RESTORE_MARKER, RecoveryFailed, chain_for, recover, remove_scratch)
        from dbops.core.locks import job_lock
        from dbops.core.streams import ChecksumMismatch
        from dbops.hooks.postgres import DbopsPostgresHook

        target_time = parse_target_time(self.target_time)
        data = Path(self.data_directory)
        if not data.is_absolute():
            raise AirflowFailException(f"data_directory {self.data_directory!r} must be an absolute path")
        config, policy, store, ops = self._setup()
        source = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        data = self._destination(data, config, store, source, ops)
        root = _run_dir(config, self.target, "restore_pitr", context["run_id"])
        with job_lock(config.ops_conn_id, self.target, "restore_pitr", retry_when_busy=True), \
                job_lock(config.ops_conn_id, self.target, RECOVERY_LOCK, shared=True, retry_when_busy=True):
            self._sweep_scratch(config)
            self._take_data_directory(data)
            with _claimed(root):
                remove_scratch(root, _server_bin_dir(), data, keep=True)  # an earlier try's (its server stopped)
                record = {"data_directory": str(data), "run_id": context["run_id"]}
                (root / RESTORE_RECORD).write_text(json.dumps(record))
                marker = {"target": self.target, "run_id": context["run_id"], "root": str(root),
                          "started_at": datetime.now(timezone.utc).isoformat()}
                server, making, restored = None, False, False
                try:
                    with ops.transaction() as conn:
                        backups = pitr_catalog.base_backups(conn, self.target)
                    chain = chain_for(backups, target_time, self.target)
                    segments, server = _recovery_server(config, policy, ops, source, self.target, chain, root, data)
                    if data.exists():
                        data.rmdir()
                    making = True
                    figures = recover(store, chain, segments, server, target_time,
                                      source.connection.login, source.database or source.connection.schema,
                                      tool_timeout(self.execution_timeout), current_segment(ops, self.target),
                                      encryption_key(policy.encryption_conn_id), marker)
                    server.stop()
                    server.forget_recovery_settings()
                    (data / RESTORE_MARKER).unlink()
                    restored = True
                except (RecoveryFailed, ChecksumMismatch) as err:
                    if server is not None:
                        self.log.error("the recovering server's log ended with:\n%s", server.log_tail())
                    raise AirflowFailException(f"FAILED: restoring {self.target} to {shown(target_time)}: {err}; "
                                               f"{_undone(data, making)}") from err
                except AirflowException:
                    raise
                except Exception as err:
                    raise classify(err, f"restoring {self.target} to {shown(target_time)} could not run; "
                                        f"{_undone(data, making)}") from err
                finally:  # also when the task times out: no server left running, no half-made directory
                    if not restored:
                        if server is not None:
                            server.stop()
                        if making:
                            shutil.rmtree(data, ignore_errors=True)
                    shutil.rmtree(root, ignore_errors=True)
        self.log.info("restored OK: %s as of %s into %s (stopped, ready to start): from %s, %s, recovered in %.1f s; "
                      "%s", self.target, shown(target_time), data, " + ".join(figures["chain"]),
                      human_bytes(figures["bytes"]), figures["seconds_to_promoted"], figures.get("stopped") or "",
                      bytes=figures["bytes"], data_directory=str(data))
        return {"data_directory": str(data), "target_time": shown(target_time), **figures}

    def _take_data_directory(self, data: Path) -> None:
        """Refuse ``data`` when it exists with content, unless a restore made it and is no longer running (it
        marked it): then say whose leftover it is, stop a server left running in it and remove it."""
        from dbops.backup.pitr import read_marker, remove_scratch
        from dbops.core.scratch import LOCK, is_abandoned

        if not data.exists() or (data.is_dir() and not any(data.iterdir())):
            return
        marker = read_marker(data) if data.is_dir() else None
        if marker is None:
            raise AirflowFailException(f"data_directory {data} exists and is not empty, and no dbops restore made it "
                                       "(it has no dbops_restore.json): name a new directory (nothing was changed)")
        owner = Path(marker.get("root", ""))
        whose = (f"pg_restore_pitr__{marker.get('target')} run {marker.get('run_id')} (started "
                 f"{marker.get('started_at')})")
        if (owner / LOCK).is_file() and not is_abandoned(owner):
            raise AirflowFailException(f"data_directory {data} is being restored by {whose}, which is still running: "
                                       "name another directory or wait for it (nothing was changed)")
        remove_scratch(data, _server_bin_dir(), data)
        self.log.warning("data_directory %s is a leftover of %s, which is no longer running (killed before it "
                         "finished): stopped what ran in it and removed it; restoring into it anew", data, whose)

    def _destination(self, data: Path, config: DbopsConfig, store: BackupStore, source: DbopsPostgresHook,
                     ops: OpsDatabaseHook) -> Path:
        """``data`` with its symlinks resolved, refused (before anything is fetched) inside or above the source's
        data directory or tablespaces (read from the source, else as its newest base backup recorded them), the
        store, staging, the Airflow home, the project, the ops database's server or a system directory."""
        from dbops.backup.pitr_destination import DestinationRefused, check_destination, protected_dirs, server_paths

        source_paths = server_paths(source)
        if not source_paths:
            with ops.transaction() as conn:
                backups = pitr_catalog.base_backups(conn, self.target)
            source_paths = next((b.manifest.extra["source_paths"] for b in backups
                                 if b.manifest.extra.get("source_paths")), [])
            if not source_paths:
                self.log.warning("the data directory of %s is not known (the source cannot be read and no base "
                                 "backup recorded it): data_directory is checked against the other places only",
                                 self.target)
        try:
            return check_destination(data, protected_dirs(source_paths, server_paths(ops), getattr(store, "root", None),
                                                          config.staging_path))
        except DestinationRefused as err:
            raise AirflowFailException(str(err)) from err


def _undone(data: Path, making: bool) -> str:
    """What a failed restore did to its data directory."""
    return f"{data}, made by this run, was removed" if making else f"nothing was written to {data}"


class PitrRetentionOperator(_PitrOperator):
    """Delete base backups and WAL that ``pitr.full_retention`` no longer keeps (:mod:`dbops.backup.pitr_retention`).

    A backup is deleted like a logical one (catalog ``deleting``, manifest first, files, ``deleted``); WAL
    segments before the oldest kept backup's start are deleted from the store, then from the catalog. Scratch
    directories of killed PITR runs are removed too.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.backup.pitr_retention import plan_retention
        from dbops.backup.store_io import delete_backup
        from dbops.backup.wal_ship import SEGMENT, recorded_segment_size, segment_of_lsn, wal_key
        from dbops.core.locks import job_lock

        config, policy, store, ops = self._setup()
        with job_lock(config.ops_conn_id, self.target, RECOVERY_LOCK):  # never under a running recovery
            self._sweep_scratch(config)
            with ops.transaction() as conn:
                plan = plan_retention(pitr_catalog.base_backups(conn, self.target), policy.full_retention)
            deleted = [b.backup_id for b in plan.delete if delete_backup(ops, store, b.backup_id)]
            wal_deleted = 0
            if plan.oldest_kept is not None:
                size = recorded_segment_size(plan.oldest_kept, self._replication_hook(config, policy))
                first = segment_of_lsn(plan.oldest_kept.start_lsn, plan.oldest_kept.manifest.extra["timeline"], size)
                with ops.transaction() as conn:
                    old = {name: key for name, (_, key, _) in pitr_catalog.segments(conn, self.target).items()
                           if name < first and SEGMENT.match(name)}  # history files are kept
                for name, key in old.items():
                    store.delete(key)
                    store.delete(wal_key(self.target, name, partial=True))  # a killed run may have left it
                with ops.transaction() as conn:
                    wal_deleted = pitr_catalog.forget_segments(conn, self.target, first)
        self.log.info("retention OK: %d base backup(s) kept, %d deleted (%s), %d WAL segment(s) deleted before %s",
                      len(plan.keep), len(deleted), ", ".join(deleted) or "none", wal_deleted,
                      plan.oldest_kept.backup_id if plan.oldest_kept else "-", kept=len(plan.keep),
                      deleted=len(deleted), wal_deleted=wal_deleted)
        return {"kept": [b.backup_id for b in plan.keep], "deleted": deleted, "wal_deleted": wal_deleted}
