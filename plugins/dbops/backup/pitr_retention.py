"""Retention of physical backups and WAL: ``pitr.full_retention`` full base backups are kept with their
incrementals; older backups and the WAL before the oldest kept full are deleted. The chain of the newest
verified recovery is never deleted, nor the WAL from its start on, whatever the count says.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbops.backup.pitr_catalog import FULL, BaseBackup, chain_of


@dataclass(frozen=True)
class PitrRetentionPlan:
    keep: list[BaseBackup]
    delete: list[BaseBackup]
    oldest_kept: BaseBackup | None  # the backup whose start bounds the WAL that is kept

    def __str__(self) -> str:
        return f"keep {len(self.keep)}, delete {len(self.delete)}"


def plan_retention(backups: list[BaseBackup], full_retention: int) -> PitrRetentionPlan:
    """Which base backups to keep and delete (``backups`` newest first, as the catalog lists them)."""
    fulls = [b for b in backups if b.kind == FULL][:full_retention]
    protected: list[BaseBackup] = []
    verified = next((b for b in backups if b.verified), None)
    if verified is not None:
        try:
            protected = chain_of(backups, verified.backup_id)
        except LookupError:
            protected = [verified]
    anchors = [*fulls, *protected]
    if not anchors:
        return PitrRetentionPlan(list(backups), [], None)
    oldest = min(anchors, key=lambda b: b.taken_at)
    keep = [b for b in backups if b.taken_at >= oldest.taken_at or b in protected]
    return PitrRetentionPlan(keep, [b for b in backups if b not in keep], oldest)
