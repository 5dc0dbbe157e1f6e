"""Backup retention: grandfather-father-son, never at the expense of the last good backup."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dbops.operators.backup import _BackupTargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context


class BackupRetentionOperator(_BackupTargetOperator):
    """Delete the target's backups that fall outside its daily/weekly/monthly retention.

    The plan (:func:`dbops.retention.plan_retention`) never deletes the newest verified backup and
    deletes nothing while the newest backup failed verification. Each deletion marks the catalog row
    ``deleting``, removes the manifest first (so the backup stops being complete), then its files, and
    only then records it ``deleted``: an interrupted deletion never leaves a half backup that looks
    complete, and the next run finishes it.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.manifest import MANIFEST_NAME
        from dbops.retention import plan_retention

        config, policy, store = self._setup()
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        unfinished = ops.backups(self.target, status="deleting")
        plan = plan_retention(ops.backups(self.target), policy.retention)
        if plan.blocked:
            self.log.warning("retention deletes nothing: %s", plan.blocked)
        for backup in [*unfinished, *plan.delete]:
            reason = plan.reasons.get(backup.backup_id, "unfinished deletion")
            self.log.info("deleting backup %s (%s)", backup.backup_id, reason)
            ops.set_status(backup.backup_id, "deleting")
            store.delete(f"{backup.backup_id}/{MANIFEST_NAME}")
            for key in store.list_keys(backup.backup_id):
                store.delete(key)
            ops.set_status(backup.backup_id, "deleted")
        self.log.info("retention %s: kept %d, deleted %d%s", self.target, len(plan.keep),
                      len(unfinished) + len(plan.delete), f" (blocked: {plan.blocked})" if plan.blocked else "")
        return {"kept": [b.backup_id for b in plan.keep], "deleted": [b.backup_id for b in plan.delete]}
