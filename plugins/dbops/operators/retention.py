"""Backup retention: grandfather-father-son, never at the expense of the last good backup."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbops.operators.backup import _BackupTargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.backup.policy import BackupPolicy
    from dbops.core.config import DbopsConfig
    from dbops.hooks.ops import OpsDatabaseHook
    from dbops.hooks.store import BackupStore
    from dbops.backup.retention import BackupRecord


class BackupRetentionOperator(_BackupTargetOperator):
    """Delete the target's backups outside its retention, and its tenant exports past ``tenant_retention``.

    Full backups follow :func:`dbops.backup.retention.plan_retention` (never the newest verified backup, nothing
    newer than it, nothing while the newest backup failed verification); tenant exports follow
    :func:`dbops.backup.retention.plan_expiry`, measured from the run's date. One retention per target runs
    at a time (``job_lock``). Each deletion marks the catalog row ``deleting`` (waiting for a
    verification rewriting that backup's manifest), removes the manifest first (so the backup stops
    being complete), then its files, and only then records it ``deleted``: an interrupted deletion
    never leaves a half backup that looks complete, and the next run finishes it.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config, policy, store = self._setup()
        with job_lock(config.ops_conn_id, self.target, "retention"):
            return self._apply(context, config, policy, store)

    def _apply(self, context: Context, config: DbopsConfig, policy: BackupPolicy,
               store: BackupStore) -> dict[str, Any]:
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.backup.retention import plan_expiry, plan_retention
        from dbops.core.runs import run_date

        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        full = plan_retention(ops.backups(self.target), policy.retention)
        tenant = plan_expiry(ops.backups(self.target, kind="tenant"), policy.tenant_retention, run_date(context))
        if full.blocked:
            self.log.warning("retention deletes no full backup: %s", full.blocked)
        unfinished = [*ops.backups(self.target, status="deleting"),
                      *ops.backups(self.target, kind="tenant", status="deleting")]
        for backup in unfinished:
            self._delete(ops, store, backup, "unfinished deletion")
        for plan in (full, tenant):
            for backup in plan.delete:
                self._delete(ops, store, backup, plan.reasons[backup.backup_id])
        deleted = [b.backup_id for b in (*full.delete, *tenant.delete)]
        self.log.info("retention %s: kept %d backups and %d tenant exports, deleted %d (and %d unfinished)%s",
                      self.target, len(full.keep), len(tenant.keep), len(deleted), len(unfinished),
                      f" (blocked: {full.blocked})" if full.blocked else "")
        return {"kept": [b.backup_id for b in (*full.keep, *tenant.keep)], "deleted": deleted}

    def _delete(self, ops: OpsDatabaseHook, store: BackupStore, backup: BackupRecord, reason: str) -> None:
        """Delete one backup or export: catalog ``deleting``, manifest, files, catalog ``deleted``."""
        from dbops.core.manifest import MANIFEST_NAME

        if not ops.mark_deleting(backup.backup_id):
            self.log.info("backup %s is already deleted", backup.backup_id)
            return
        self.log.info("deleting %s (%s)", backup.backup_id, reason)
        store.delete(f"{backup.backup_id}/{MANIFEST_NAME}")
        for key in store.list_keys(backup.backup_id):
            store.delete(key)
        ops.set_status(backup.backup_id, "deleted")
