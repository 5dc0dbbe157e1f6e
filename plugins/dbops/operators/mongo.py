"""Operators of MongoDB targets: backup, verification restore and its scratch database, restore on demand.

The backups share the store, manifest, catalog, retention (:class:`BackupRetentionOperator`) and report
(:class:`BackupReportOperator`) of PostgreSQL backups; the work lives in :mod:`dbops.mongo`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import psycopg
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.backup import catalog
from dbops.backup.runs import backup_result, new_manifest
from dbops.backup.store_io import store_backup
from dbops.core.errors import classify
from dbops.core.manifest import backup_prefix
from dbops.core.units import human_bytes
from dbops.operators.backup import _BackupTargetOperator, _VerifyTargetOperator
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from pathlib import Path

    from airflow.sdk import Context

    from dbops.backup.policy import BackupPolicy
    from dbops.core.config import DbopsConfig
    from dbops.core.store import BackupStore
    from dbops.hooks.mongo import DbopsMongoHook
    from dbops.hooks.ops import OpsDatabaseHook
    from dbops.mongo.dump import MongoDump
    from dbops.mongo.policy import MongoRetentionPolicy

CONSISTENCY_NOTES = {"oplog": "point-in-time consistent at the dump's end (collections read, each up to "
                               "mongo.snapshot_max_bytes in one snapshot, + oplog replay)",
                     "none": "NOT point-in-time consistent (standalone server: no oplog, no snapshot reads)"}


def _mongo_hook(operator: TargetOperator) -> DbopsMongoHook:
    """The target's MongoHook, built when the task runs (MongoHook looks its connection up at once)."""
    from dbops.hooks.mongo import DbopsMongoHook

    return DbopsMongoHook(mongo_conn_id=operator.load_config().targets[operator.target].conn_id)


class _MongoTargetOperator(_BackupTargetOperator):
    def _hook(self) -> DbopsMongoHook:
        return _mongo_hook(self)

    def _verify_hook(self) -> DbopsMongoHook:
        """A hook on the server verification restores go to: ``backup.verify_conn_id``, else the target's own
        (production) server."""
        from dbops.hooks.mongo import DbopsMongoHook

        settings = self.load_config().targets[self.target]
        conn_id = (settings.backup.verify_conn_id if settings.backup else None) or settings.conn_id
        return DbopsMongoHook(mongo_conn_id=conn_id)


class MongoBackupOperator(_MongoTargetOperator):
    """Dump the target's database (:func:`dbops.mongo.dump.dump_database`), store it, write the manifest last.

    Named by its start time like PostgreSQL backups (``<target>/full/<UTC time>/``) and catalogued the
    same way, so retention (GFS) and the report treat both alike. A retried task finds the backup its
    run already made; a run for a past period reuses a backup taken since. A failed attempt leaves no
    manifest; its files are removed by the next attempt before it dumps. A dump that finished but could
    not be stored is kept in staging and reused by the retry.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.backup.staging import dump_leftovers, held_staging, staging_dir
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.mongo.dump import TOOL

        config, policy, store = self._setup()
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        existing = self._reuse_or_clean(context, policy, ops, store)
        if existing is not None:
            return existing
        hook = self._hook()
        with held_staging(staging_dir(config, self.target, context["run_id"]), dump_leftovers(self.target)) as staging:
            dump, taken_at = self._staged_or_new_dump(config, policy, store, ops, hook, staging)
            database = hook.database
            prefix = backup_prefix(self.target, "full", taken_at)
            try:
                manifest = new_manifest(
                    context, policy, store, prefix, self.target, kind="full", taken_at=taken_at,
                    snapshot_id=f"oplog {dump.oplog['start']}..{dump.oplog['end']}" if dump.oplog else "none",
                    server_version=dump.server_version, tool=TOOL, files=dump.files, tables=dump.counts,
                    dump_seconds=dump.seconds, archive="mongodump directory layout, raw BSON")
                manifest.extra.update({"engine": "mongodb", "database": database, "consistency": dump.consistency,
                                       "oplog": dump.oplog, "hashes": dump.hashes, "index_specs": dump.indexes,
                                       "skipped": dump.skipped, "snapshot_reads": dump.snapshot_reads,
                                       "views": dump.views})
                store_backup(store, manifest, staging)
            except Exception as err:
                raise classify(err, f"storing {prefix} in {store.describe()} failed; no manifest was written, the dump "
                                    f"stays staged in {staging} for the retry") from err
            shutil.rmtree(staging, ignore_errors=True)
        try:
            with ops.transaction() as conn:
                catalog.record_backup(conn, manifest)
        except psycopg.Error as err:
            raise classify(err, f"recording backup {manifest.backup_id} in the catalog failed; it is stored "
                                "complete and the retry records it") from err
        self.log.info("stored OK: backup %s of database %s: %s (%s raw BSON), %d collections, %d documents, "
                      "%d views (definitions: a view holds no data), dump %.1f s, upload %.1f s; %s%s; skipped: %s",
                      manifest.location, database, human_bytes(manifest.total_bytes),
                      human_bytes(sum(f.raw_bytes for f in dump.files)), len(dump.counts), manifest.total_rows,
                      len(dump.views), dump.seconds, manifest.timings["upload_seconds"],
                      CONSISTENCY_NOTES[dump.consistency], f", {dump.oplog['entries']} oplog entries" if dump.oplog
                      else "", "; ".join(f"{name} ({why})" for name, why in sorted(dump.skipped.items())) or "none",
                      backup_id=manifest.backup_id, bytes=manifest.total_bytes, collections=len(dump.counts),
                      documents=manifest.total_rows, consistency=dump.consistency)
        return {**backup_result(manifest), "consistency": dump.consistency}

    def _staged_or_new_dump(self, config: DbopsConfig, policy: BackupPolicy, store: BackupStore,
                            ops: OpsDatabaseHook, hook: DbopsMongoHook, staging: Path) -> tuple[MongoDump, datetime]:
        """The dump and its start time: staged by an earlier attempt of this run, or taken now (and staged)."""
        from dbops.core.scratch import empty
        from dbops.backup.store_io import free_snapshot_time
        from dbops.hooks.keys import encryption_key
        from dbops.mongo.dump import dump_database
        from dbops.mongo.policy import MongoPolicy
        from dbops.mongo.staging import keep_staged, staged_dump

        staged = staged_dump(staging, hook.database)
        if staged is not None:
            self.log.info("reusing the dump staged by an earlier attempt: %s (%d files)", staging, len(staged[0].files))
            return staged
        empty(staging)
        try:
            replica_set = hook.replica_set() is not None
            mongo = config.targets[self.target].mongo or MongoPolicy()
            for attempt in (1, 2):  # a change the replay cannot apply (a rename) during the dump: once more
                taken_at = free_snapshot_time(store, ops, self.target)
                dump = dump_database(hook.get_conn(), hook.database, staging, policy.compression_level,
                                     encryption_key(policy.encryption_conn_id), replica_set, self.progress,
                                     mongo.snapshot_max_bytes)
                if not dump.unreplayable:
                    break
                if attempt == 2:
                    raise AirflowFailException(
                        f"backing up {self.target}: during the dump, and again during a second one, the database "
                        f"changed in a way the oplog replay cannot apply ({'; '.join(dump.unreplayable)}): such a "
                        "backup could never be verified, so none was stored. Back up when no such change runs "
                        "(e.g. aggregations with $out rename collections), then clear the task")
                self.log.warning("the oplog captured during the dump holds a change its replay cannot apply (%s): "
                                 "dumping again once", "; ".join(dump.unreplayable))
                empty(staging)
        except Exception as err:
            shutil.rmtree(staging, ignore_errors=True)
            if isinstance(err, AirflowException):
                raise
            raise classify(err, f"backing up {self.target} failed; no manifest was written, the next attempt "
                                "removes what was stored") from err
        for name, why in sorted(dump.skipped.items()):
            if why.startswith("dropped during the dump"):
                self.log.warning("collection %s was dropped during the dump: not in this backup", name,
                                 collection=name)
        if dump.oplog and "start_note" in dump.oplog:
            self.log.warning("oplog capture from the last write, not the majority commit point: %s",
                             dump.oplog["start_note"])
        keep_staged(staging, dump, hook.database, taken_at)
        return dump, taken_at

    def _recovered_backup(self, context: Context, store: BackupStore, ops: OpsDatabaseHook) -> dict[str, Any] | None:
        """A complete backup an earlier attempt of this run stored but could not record in the catalog, recorded
        now."""
        from dbops.backup.store_io import uncatalogued_backup_of_run

        stored = uncatalogued_backup_of_run(store, ops, f"{self.target}/full/", context["run_id"])
        if stored is None:
            return None
        self.log.info("complete, nothing dumped: backup %s of this run was stored by an earlier attempt that could "
                      "not record it; recorded now", stored.location, backup_id=stored.backup_id)
        return {**backup_result(stored), "consistency": stored.extra["consistency"]}

    def progress(self, collection: str, documents: int) -> None:
        """Called after each batch the dump reads; logs every 100 000 documents of a collection."""
        if documents and documents % 100_000 < 1000:
            self.log.info("dumping %s: %d documents so far", collection, documents)


class MongoScratchDatabaseOperator(_MongoTargetOperator):
    """Drop the scratch database a verification restores into: as setup (a leftover) and as teardown, on the
    verification server (``backup.verify_conn_id``, else the target's own).

    :param database: the scratch database; default one per run
        (:func:`dbops.backup.verify.scratch_database_name`).
    """

    template_fields: Sequence[str] = ("target", "database")

    def __init__(self, *, database: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.database = database

    def execute(self, context: Context) -> None:
        from dbops.backup.verify import scratch_database_name

        database = self.database or scratch_database_name(self.target, context["run_id"])
        hook = self._verify_hook()
        try:
            hook.get_conn().drop_database(database)
        except Exception as err:
            raise classify(err, f"dropping scratch database {database} (connection {hook.mongo_conn_id}) "
                                "failed") from err
        self.log.info("scratch database %s (connection %s) is empty (dropped)", database, hook.mongo_conn_id)


class MongoVerifyBackupOperator(_VerifyTargetOperator, _MongoTargetOperator):
    """Restore a *stored* dump into a scratch database, prove it, and record the recovery test.

    Checks every file's size and sha256, restores every collection with its options and indexes and every
    view, compares each collection's documents (count and an order-independent hash of the raw BSON) and
    indexes with its snapshot in the manifest and every collection's and view's options with the dump's,
    then replays the captured oplog. The outcome goes into
    ``dbops.recovery_tests`` and the manifest; a failed verification fails at once, without retries.

    The scratch database is on ``backup.verify_conn_id``'s server. Without one it is on the target's own
    server: on a replica set the whole copy is replicated to every member and takes oplog space.

    :param backup_id: a folder name, a full id, ``latest`` or ``latest-verified``.
    :param database: the scratch database; default one per run.
    :param reverify: restore a backup already verified OK again.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.backup.lookup import load_manifest, resolve_backup_id
        from dbops.backup.staging import held_staging
        from dbops.backup.verify import scratch_database_name
        from dbops.hooks.keys import encryption_key
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.mongo.verify import restore_and_check

        config, policy, store = self._setup()
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        database = self.database or scratch_database_name(self.target, context["run_id"])
        backup_id = resolve_backup_id(ops, self.target, self.backup_id)
        manifest = load_manifest(ops, store, self.target, backup_id)
        earlier = manifest.verification or {}
        if not self.reverify and earlier.get("ok"):
            self.log.info("verified OK earlier: backup %s passed its recovery test of %s; not restoring it again",
                          manifest.location, earlier.get("started_at"), backup_id=backup_id)
            return {"backup_id": backup_id, "verified": True, "restore_seconds": earlier.get("restore_seconds"),
                    "verified_earlier": True}
        started_at = datetime.now(timezone.utc)
        hook = self._verify_hook()
        if policy.verify_conn_id:
            self.log.info("restoring into scratch database %s on the verification server (connection %s)",
                          database, hook.mongo_conn_id)
        else:
            self.log.warning("restoring into scratch database %s on the target's own server (connection %s): "
                             "backup.verify_conn_id is not set, so a full copy of the database is written there "
                             "(on a replica set replicated to every member, using oplog window); set "
                             "backup.verify_conn_id to a scratch MongoDB server's connection", database,
                             hook.mongo_conn_id)
        try:
            client = hook.get_conn()
            client.drop_database(database)  # the restore needs it empty; it is ours (scratch)
            with held_staging(config.staging_path / f"verify__{database}", "verify__*") as staging:
                outcome = restore_and_check(client, store, manifest, database, staging,
                                            encryption_key(policy.encryption_conn_id))
        except AirflowException:
            raise
        except Exception as err:
            raise classify(err, f"verifying {backup_id} could not run on the verification server (connection "
                                f"{hook.mongo_conn_id})") from err
        self._record_verification(context, ops, store, manifest, backup_id, started_at, outcome)
        counts = outcome["checks"]["row_counts"]
        self.log.info("verified OK: backup %s (%s): restored in %.1f s, %d collections, %d views; documents, hashes, "
                      "indexes and options match the snapshot; %s", manifest.location, human_bytes(manifest.total_bytes),
                      outcome["restore_seconds"], counts["collections"], outcome["checks"]["options"]["views"],
                      CONSISTENCY_NOTES[manifest.extra["consistency"]], backup_id=backup_id,
                      bytes=manifest.total_bytes, restore_seconds=outcome["restore_seconds"])
        return {"backup_id": backup_id, "verified": True, "restore_seconds": outcome["restore_seconds"]}


class MongoRestoreOperator(_MongoTargetOperator):
    """Restore a backup on demand into ``database`` on the target's server.

    The dump is restored and checked under ``<database>__dbops_restoring``, its oplog replayed, and only
    then do its collections and views move into ``database`` with their options (:func:`dbops.mongo.restore.swap_into`;
    the options are compared with the restored ones again afterwards). An existing ``database`` is
    replaced only with ``overwrite``: its collections move aside into ``<database>__dbops_replaced`` first
    and are dropped once the new ones are in place; a failed move is undone, and the error says what a
    check of ``database`` found afterwards, or, when the undo failed too, which collection is where and
    how to put them back. At no moment are both the old and the new data gone. Never restored into: admin, local, config, the target's own database.

    :param backup_id: a folder name, a full id, ``latest`` or ``latest-verified``.
    :param database: the database to restore into.
    :param overwrite: replace ``database`` if it holds collections.
    """

    template_fields: Sequence[str] = ("target", "backup_id", "database", "overwrite")

    def __init__(self, *, backup_id: str, database: str, overwrite: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.backup_id = backup_id
        self.database = database
        self.overwrite = overwrite

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config, _, _ = self._setup()
        with job_lock(config.ops_conn_id, self.target, "restore"):
            return self._restore(context)

    def _drop_temporary(self, client, temporary: str) -> str:
        """Drop the temporary database after a failure (it only ever holds restored collections); '' or what
        to add to the error when that failed too, never an error hiding the first one."""
        try:
            client.drop_database(temporary)
        except Exception as err:
            return (f"; the temporary database {temporary} could not be dropped ({' '.join(str(err).split())[:200]}): "
                    "the next restore drops it, or drop it by hand")
        return ""

    def _restore(self, context: Context) -> dict[str, Any]:
        from dbops.backup.lookup import load_manifest, resolve_backup_id
        from dbops.backup.staging import held_staging
        from dbops.hooks.keys import encryption_key
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.mongo.restore import (
            RESTORING,
            SwapStuck,
            SwapUndone,
            check_database_name,
            collection_options,
            options_mismatch,
            swap_into,
        )
        from dbops.mongo.verify import restore_and_check

        config, policy, store = self._setup()
        hook = self._hook()
        client = hook.get_conn()
        check_database_name(self.database, hook.database, client.list_database_names())
        overwrite = str(self.overwrite).lower() == "true"
        if client.get_database(self.database).list_collection_names() and not overwrite:
            raise AirflowFailException(f"database {self.database} exists and holds collections; set overwrite to "
                                       "replace it (it is replaced only once the restore is checked)")
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        backup_id = resolve_backup_id(ops, self.target, self.backup_id)
        manifest = load_manifest(ops, store, self.target, backup_id)
        temporary = f"{self.database}{RESTORING}"
        client.drop_database(temporary)  # a leftover of an interrupted restore
        untouched = f"{self.database} was not touched (nothing was moved into or out of it)"
        try:
            with held_staging(config.staging_path / f"restore__{temporary}", "restore__*") as staging:
                outcome = restore_and_check(client, store, manifest, temporary, staging,
                                            encryption_key(policy.encryption_conn_id))
            if not outcome["ok"]:
                raise AirflowFailException(f"FAILED: restore of {manifest.location}: {outcome['error']}; {untouched}")
            expected = collection_options(client, temporary)
            retired = swap_into(client, temporary, self.database)
        except BaseException as err:
            left = self._drop_temporary(client, temporary)
            if isinstance(err, SwapStuck):
                raise SwapStuck(f"FAILED: restoring {backup_id}: {err}{left}") from err
            if isinstance(err, AirflowException) or not isinstance(err, Exception):
                if left:
                    self.log.error("%s", left.lstrip("; "))
                raise
            if isinstance(err, SwapUndone):
                raise classify(err.__cause__, f"restoring {backup_id} into {self.database} could not finish; "
                                              f"{err}{left}") from err.__cause__
            raise classify(err, f"restoring {backup_id} into {self.database} could not finish; "
                                f"{untouched}{left}") from err
        found = collection_options(client, self.database)
        mismatched = options_mismatch(expected, {name: found[name] for name in expected if name in found})
        if mismatched:
            raise AirflowFailException(
                f"FAILED: restored {backup_id} into {self.database}, but after the move the options of "
                f"{', '.join(mismatched)} are not the backup's ({mismatched}); the collections it replaced are kept "
                f"in {retired or '(none: the database was empty)'}, not dropped. Recreate those collections with "
                "the backup's options (.metadata.json), or restore again into a new database")
        try:
            if retired:
                client.drop_database(retired)
            client.drop_database(temporary)
        except Exception as err:
            raise classify(err, f"restored {backup_id} into {self.database} (checked), but dropping the collections "
                                f"it replaced ({retired}) or {temporary} failed: drop them by hand") from err
        self.log.info("restored OK: backup %s (%s) into database %s in %.1f s%s: %d collections, %d views; documents, "
                      "hashes, indexes and options match the snapshot, options checked again after the move; %s",
                      manifest.location, human_bytes(manifest.total_bytes), self.database, outcome["restore_seconds"],
                      " (the collections it replaced were dropped)" if retired else "", len(manifest.tables),
                      len(manifest.extra.get("views", [])), CONSISTENCY_NOTES[manifest.extra["consistency"]],
                      backup_id=backup_id, database=self.database, restore_seconds=outcome["restore_seconds"])
        return {"backup_id": backup_id, "database": self.database, "restore_seconds": outcome["restore_seconds"],
                "replaced": bool(retired)}


class MongoRetentionOperator(TargetOperator):
    """Apply the target's ``mongo.retention`` policies: purge due documents, or ensure a TTL index.

    The cutoff of each policy is the run's data interval end (its logical date when it has none) minus
    the policy's retention, never "now": a backfill over past days deletes each day's due documents on
    that day's run, and a re-run or retry deletes only what is still due. Deletes go in batches of
    ``batch_size`` ``_id`` values with ``w: majority``; each batch's figures are added to the run's row
    in ``dbops.mongo_retention_log`` as it commits. One retention per target runs at a time.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config = self.load_config()
        policy = config.targets[self.target].mongo.retention if config.targets[self.target].mongo else None
        if policy is None:
            raise AirflowFailException(f"target {self.target!r} has no mongo.retention section in {config.path}")
        with job_lock(config.ops_conn_id, self.target, "mongo_retention"):
            try:
                return self._apply(context, config, policy)
            except AirflowException:
                raise
            except Exception as err:
                raise classify(err, f"retention of {self.target} could not finish; what was deleted is recorded, "
                                    "the retry deletes only what is still due") from err

    def _apply(self, context: Context, config: DbopsConfig, policy: MongoRetentionPolicy) -> dict[str, Any]:
        from datetime import timedelta

        from dbops.core.runs import interval_end, run_date
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.mongo.retention import due_filter, ensure_ttl, mistyped_time_field, policy_key, purge, record

        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        hook = _mongo_hook(self)
        db = hook.get_conn().get_database(hook.database)
        until = interval_end(context)
        logical_date = run_date(context)
        results = {}
        for rule in policy.policies:
            collection = db.get_collection(rule.collection)
            name = f"{rule.collection} ({policy_key(rule)})"
            if rule.method == "ttl":
                detail = ensure_ttl(collection, rule)
                with ops.transaction() as conn:
                    record(conn, self.target, context["run_id"], logical_date, rule.collection, rule, None, 0, 0,
                           detail)
                self.log.info("%s: %s", name, detail)
                results[name] = {"method": "ttl", "detail": detail}
                continue
            cutoff = until - timedelta(seconds=rule.retention)

            def on_batch(deleted: int, batches: int, rule=rule, cutoff=cutoff) -> None:
                with ops.transaction() as conn:
                    record(conn, self.target, context["run_id"], logical_date, rule.collection, rule, cutoff,
                           deleted, 1, None)
                if batches % 10 == 0:
                    self.log.info("purging %s: %d batches so far", rule.collection, batches)

            done = purge(collection, due_filter(rule, cutoff), policy.batch_size, on_batch)
            self.log.info("%s: deleted %d documents older than %s in %d batches", name, done.deleted,
                          cutoff.isoformat(), done.batches, collection=rule.collection, deleted=done.deleted)
            results[name] = {"method": "delete", "cutoff": cutoff.isoformat(), "deleted": done.deleted,
                             "batches": done.batches}
            warning = mistyped_time_field(collection, rule) if done.deleted == 0 else None
            if warning:
                with ops.transaction() as conn:
                    record(conn, self.target, context["run_id"], logical_date, rule.collection, rule, cutoff, 0, 0,
                           warning)
                self.log.warning("%s: WARNING: %s", name, warning, collection=rule.collection)
                results[name]["warning"] = warning
        deleted = sum(r.get("deleted", 0) for r in results.values())
        mistyped = [name for name, r in results.items() if r.get("warning")]
        (self.log.warning if mistyped else self.log.info)(
            "retention %s: %s: %d policies, %d documents deleted (cutoffs from %s), %d TTL indexes ensured%s",
            "WARNING" if mistyped else "OK", self.target, len(results), deleted, until.isoformat(),
            sum(r["method"] == "ttl" for r in results.values()),
            (f"; {len(mistyped)} policies deleted nothing and their time field is not a date in some documents: "
             + ", ".join(mistyped)) if mistyped else "",
            deleted=deleted, policies=len(results), mistyped=len(mistyped))
        return {"deleted": deleted, "policies": results}


class MongoMaintenanceOperator(TargetOperator):
    """Weekly maintenance of the target's database (``mongo.maintenance``).

    ``validate`` every collection in the background (all of them, then the task fails naming each invalid
    one with its problems; a collection the server will not validate in the background is validated in
    the foreground only with ``validate_foreground``, else reported NOT VALIDATED in the summary);
    ``compact`` the collections whose free storage is above ``compact_free_pct`` and ``compact_min_bytes`` (a server without ``compact`` is reported, not a failure; a compaction this
    logical date already finished is not redone); indexes never used (``$indexStats``) are reported.
    Each action is recorded in ``dbops.maintenance_log`` and the run's report in ``dbops.maintenance_runs``
    (kind ``weekly``); the summary gives the bytes reclaimed.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        config = self.load_config()
        target = config.targets[self.target]
        policy = target.mongo.maintenance if target.mongo else None
        if policy is None:
            raise AirflowFailException(f"target {self.target!r} has no mongo.maintenance section in {config.path}")
        try:
            report = self._maintain(context, config, policy)
        except AirflowException:
            raise
        except Exception as err:
            raise classify(err, f"maintenance of {self.target} could not finish") from err
        from dbops.mongo.maintenance import Validation, validation_summary

        invalid = {v["collection"]: v["problems"] for v in report["validate"] if v["valid"] is False}
        not_validated = [v["collection"] for v in report["validate"] if v["mode"] is None]
        status = "FAILED" if invalid else "INCOMPLETE" if not_validated else "OK"
        (self.log.warning if not_validated else self.log.info)(
            "maintenance %s: %s, %d compacted, %d not compacted (%s), %d bytes reclaimed, %d unused indexes",
            status, validation_summary([Validation(**v) for v in report["validate"]]),
            len(report["compacted"]), len(report["compact_skipped"]),
            "; ".join(sorted(set(report["compact_skipped"].values()))) or "none due",
            report["bytes_reclaimed"], sum(len(v) for v in report["unused_indexes"].values()),
            invalid=len(invalid), not_validated=len(not_validated), bytes_reclaimed=report["bytes_reclaimed"])
        if invalid:
            raise AirflowFailException("FAILED: validate found invalid collections: " + "; ".join(
                f"{name}: {', '.join(problems) or 'valid: false'}" for name, problems in sorted(invalid.items()))
                + ". Restore them from the newest verified backup or repair (see the runbook)")
        return report

    def _maintain(self, context: Context, config: DbopsConfig, policy) -> dict[str, Any]:
        from dbops.core.runs import run_date
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.maintenance import log
        from dbops.maintenance.plan import Action
        from dbops.mongo.maintenance import compact, compact_due, unused_indexes, validate

        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        hook = _mongo_hook(self)
        database = hook.database
        db = hook.get_conn().get_database(database)
        logical_date = run_date(context)
        names = sorted(n for n in db.list_collection_names() if not n.startswith("system."))
        with ops.transaction() as conn:
            done = log.finished(conn, self.target, "weekly", logical_date)
            log.record_plan(conn, self.target, "weekly", logical_date, context["run_id"], False,
                            {"engine": "mongodb", "database": database, "collections": names})
        report: dict[str, Any] = {"validate": [], "compacted": {}, "compact_skipped": {}, "unused_indexes": {},
                                  "bytes_reclaimed": 0}
        for name in names:
            result = validate(db, name, policy.validate_foreground)
            report["validate"].append(dataclasses.asdict(result))
            if result.valid is False:
                self.log.error("validate %s.%s: INVALID: %s", database, name, ", ".join(result.problems))
            elif result.mode is None:
                self.log.warning("validate %s.%s: NOT VALIDATED: %s", database, name, result.reason)
            elif result.mode == "foreground":
                self.log.warning("validate %s.%s: ran in the foreground (the collection was locked): %s",
                                 database, name, "valid" if result.valid else "INVALID")
            stats = db.command("collStats", name)
            reason = compact_due(stats, policy.compact_free_pct, policy.compact_min_bytes)
            if reason is None:
                report["compact_skipped"][name] = "free storage below the thresholds or not reported by the server"
            elif (database, name, "compact") in done:
                report["compact_skipped"][name] = "already compacted for this logical date"
            else:
                action = Action("table", database, name, name, "compact", reason, int(stats.get("storageSize") or 0))
                with ops.transaction() as conn:
                    entry = log.start(conn, self.target, "weekly", logical_date, context["run_id"],
                                      context["ti"].try_number, action)
                compacted, freed = compact(db, name)
                after = int(db.command("collStats", name).get("storageSize") or 0)
                reclaimed = freed if freed is not None else max(action.bytes - after, 0)
                with ops.transaction() as conn:
                    log.finish(conn, entry, "done" if compacted else "skipped", action.bytes, after,
                               error=None if compacted else "compact is not supported by the server")
                if compacted:
                    report["compacted"][name] = reclaimed
                    report["bytes_reclaimed"] += reclaimed
                else:
                    report["compact_skipped"][name] = "compact is not supported by the server"
                self.log.info("compact %s.%s (%s): %s", database, name, reason,
                              f"{reclaimed} bytes reclaimed" if compacted else "not supported by the server")
            unused = unused_indexes(db.get_collection(name))
            if unused:
                report["unused_indexes"][name] = unused
                self.log.info("unused indexes of %s.%s (no access since the server started counting): %s",
                              database, name, ", ".join(unused))
        with ops.transaction() as conn:
            log.record_report(conn, self.target, "weekly", logical_date, report)
        return report
