"""Which backups still hold an anonymized person's data, and when backup retention will have deleted them.

A backup (or tenant export) whose snapshot is older than the anonymization still holds the data. Full
backups leave by grandfather-father-son retention: whether one is promoted to a weekly or monthly slot
depends on the backups taken after it, so the date is forecast by running the real retention plan
(:func:`dbops.backup.retention.plan_retention`) over the catalog plus one verified backup per future
slot of the backup schedule. The forecast holds while every scheduled backup succeeds and is verified:
a period without a verified backup does not count, so a failing backup postpones the deletions.
Tenant exports leave at the first scheduled backup run after ``tenant_retention``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg

from dbops.backup import catalog
from dbops.backup.policy import BackupPolicy
from dbops.backup.retention import BackupRecord, plan_retention

MAX_FUTURE_BACKUPS = 20_000  # the forecast gives up (says "not forecast") after this many scheduled backups


@dataclass(frozen=True)
class HoldingBackup:
    """A backup taken before the anonymization, and when retention deletes it (None: not forecast)."""

    backup_id: str
    kind: str
    taken_at: datetime
    deleted_by: datetime | None


def backups_holding(conn: psycopg.Connection, target: str, policy: BackupPolicy | None,
                    anonymized_at: datetime) -> list[HoldingBackup]:
    """The target's complete backups and tenant exports taken before ``anonymized_at``, oldest first."""
    full = catalog.backups(conn, target)
    exports = catalog.backups(conn, target, kind="tenant")
    holding = [(b, "full") for b in full if b.taken_at < anonymized_at]
    holding += [(b, "tenant") for b in exports if b.taken_at < anonymized_at]
    if not holding or policy is None:
        return [HoldingBackup(b.backup_id, kind, b.taken_at, None) for b, kind in holding]
    full_dates = forecast_full(full, policy, {b.backup_id for b, kind in holding if kind == "full"}, anonymized_at)
    expiry = timedelta(seconds=policy.tenant_retention)
    result = [HoldingBackup(b.backup_id, kind, b.taken_at, full_dates.get(b.backup_id) if kind == "full"
                            else next_run_after(policy.schedule, b.taken_at + expiry)) for b, kind in holding]
    return sorted(result, key=lambda h: (h.taken_at, h.backup_id))


def forecast_full(catalogued: list[BackupRecord], policy: BackupPolicy, holding: set[str],
                  since: datetime) -> dict[str, datetime]:
    """When each backup of ``holding`` is deleted: the retention run after the scheduled backup that evicts it.

    Backups not evicted within :data:`MAX_FUTURE_BACKUPS` scheduled backups (or without a schedule) are
    left out.
    """
    from croniter import croniter

    if not policy.schedule or not holding:
        return {}
    backups, left, deleted = list(catalogued), set(holding), {}
    slots = croniter(policy.schedule, since.astimezone(timezone.utc))
    for n in range(MAX_FUTURE_BACKUPS):
        at = slots.get_next(datetime)
        backups.append(BackupRecord(f"forecast-{n}", at, True, "scheduled"))
        plan = plan_retention(backups, policy.retention)
        for backup in plan.delete:
            if backup.backup_id in left:
                deleted[backup.backup_id] = at
                left.discard(backup.backup_id)
        if not left:
            break
        backups = plan.keep
    return deleted


def next_run_after(schedule: str | None, moment: datetime) -> datetime | None:
    """The first scheduled backup run at or after ``moment`` (its retention task deletes what expired)."""
    from croniter import croniter

    if not schedule:
        return None
    return croniter(schedule, moment.astimezone(timezone.utc) - timedelta(seconds=1)).get_next(datetime)


def describe(holding: list[HoldingBackup]) -> str:
    """One line for the log and the report: how many backups hold the data and when the last one goes."""
    if not holding:
        return "no backup in the catalog was taken before the anonymization"
    names = ", ".join(h.backup_id for h in holding)
    last = last_deletion(holding)
    when = (f"retention will have deleted the last of them by {last:%Y-%m-%d %H:%M} UTC, if every scheduled "
            "backup until then succeeds and is verified (a night without one postpones it)"
            if last else "retention does not delete all of them on its own (no backup schedule, or beyond the "
            "forecast): delete them by hand or wait for the schedule")
    return f"{len(holding)} backups taken before the anonymization still hold the data ({names}); {when}"


def last_deletion(holding: list[HoldingBackup]) -> datetime | None:
    """When the last holding backup is gone; None when one of them has no forecast date."""
    dates = [h.deleted_by for h in holding]
    return None if not dates or None in dates else max(dates)


def as_dicts(holding: list[HoldingBackup]) -> list[dict[str, str | None]]:
    """JSON-ready rows for XCom and the ops database."""
    return [{"backup_id": h.backup_id, "kind": h.kind, "taken_at": h.taken_at.isoformat(),
             "deleted_by": h.deleted_by.isoformat() if h.deleted_by else None} for h in holding]
