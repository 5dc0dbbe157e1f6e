"""Backup retention as pure logic: which backups to keep, which to delete.

Full backups follow grandfather-father-son: only verified backups fill the daily, weekly and monthly
slots, and a slot counts a period that has a verified backup (like pgBackRest's or restic's
``keep-daily N``), so gaps never shorten the history. Periods are UTC calendar periods of the
snapshot time. Within a period the newest backup of a scheduled (or backfill) run holds the slot: a
manual or extra backup never evicts it. Nothing newer than the newest verified backup is deleted.
Tenant exports hold personal data: they are deleted once older than ``backup.tenant_retention``.
Plans depend only on their inputs: a retried or backfilled run decides the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone

from dbops.backup.policy import Retention

SCHEDULED_RUN_TYPES = ("scheduled", "backfill")


@dataclass(frozen=True)
class BackupRecord:
    """One backup in the catalog.

    :param backup_id: unique id of the backup.
    :param taken_at: tz-aware snapshot time: when the backup's data was read.
    :param verified: True verified OK, False verification failed, None not (yet) verified.
    :param run_type: the Airflow run type that took it (``scheduled``, ``backfill``, ``manual``, ...);
        None when unknown.
    """

    backup_id: str
    taken_at: datetime
    verified: bool | None
    run_type: str | None = None

    @property
    def scheduled(self) -> bool:
        """Taken by the schedule (a scheduled or backfill run), not an extra backup."""
        return self.run_type in SCHEDULED_RUN_TYPES


@dataclass(frozen=True)
class RetentionPlan:
    """What retention keeps and deletes (both newest first), why, and whether deletion is blocked."""

    keep: list[BackupRecord]
    delete: list[BackupRecord]
    reasons: dict[str, str]
    blocked: str | None


def _daily(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _weekly(moment: datetime) -> str:
    iso = moment.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


def _monthly(moment: datetime) -> str:
    return moment.strftime("%Y-%m")


# Policy field -> label of the UTC calendar period a moment falls in.
_PERIODS: tuple[tuple[str, Callable[[datetime], str]], ...] = (
    ("daily", _daily),
    ("weekly", _weekly),
    ("monthly", _monthly),
)


def _order_key(backup: BackupRecord) -> tuple[datetime, str]:
    return backup.taken_at, backup.backup_id


def _validate_policy(policy: Retention) -> None:
    """Reject negative slot counts."""
    for fld in fields(policy):
        value = getattr(policy, fld.name)
        if value < 0:
            raise ValueError(f"retention.{fld.name} must be 0 or more, got {value}")


def _newest_first(backups: Sequence[BackupRecord]) -> list[BackupRecord]:
    """Sort newest first by (taken_at, backup_id); reject duplicate ids and naive times."""
    seen: set[str] = set()
    for backup in backups:
        if backup.backup_id in seen:
            raise ValueError(f"duplicate backup_id {backup.backup_id!r}")
        if backup.taken_at.utcoffset() is None:
            raise ValueError(f"backup {backup.backup_id!r}: taken_at must be timezone-aware")
        seen.add(backup.backup_id)
    return sorted(backups, key=_order_key, reverse=True)


def _slots(verified: list[BackupRecord], policy: Retention) -> dict[str, list[str]]:
    """Map backup_id to the slots it fills, e.g. ``["daily 2026-11-20", "monthly 2026-11"]``.

    ``verified`` is newest first; a period's slot goes to its newest scheduled backup, or to its
    newest backup when the schedule took none in that period.
    """
    slots: dict[str, list[str]] = {}
    for name, label_of in _PERIODS:
        holders: dict[str, BackupRecord] = {}  # newest period first
        for backup in verified:
            label = label_of(backup.taken_at.astimezone(timezone.utc))
            holder = holders.get(label)
            if holder is None or (backup.scheduled and not holder.scheduled):
                holders[label] = backup
        for label, holder in list(holders.items())[:getattr(policy, name)]:
            slots.setdefault(holder.backup_id, []).append(f"{name} {label}")
    return slots


def _decide(
    backup: BackupRecord, newest_verified: BackupRecord | None, slots: dict[str, list[str]]
) -> tuple[bool, str]:
    """Whether to keep one backup, and why."""
    if backup.verified is True:
        labels = slots.get(backup.backup_id, [])
        if newest_verified is not None and backup.backup_id == newest_verified.backup_id:
            labels = ["newest verified", *labels]
        return (True, ", ".join(labels)) if labels else (False, "outside retention")
    if newest_verified is None or _order_key(backup) > _order_key(newest_verified):
        if backup.verified is False:
            return True, "verification failed; kept while no newer backup is verified"
        return True, "not yet verified"
    if backup.verified is False:
        return False, "verification failed"
    return False, "never verified, older than the newest verified backup"


def _blocked_reason(newest: BackupRecord) -> str:
    return (
        f"newest backup {newest.backup_id!r} ({newest.taken_at.isoformat()}) failed verification: "
        "retention deletes nothing until a newer backup is verified"
    )


def plan_retention(backups: Sequence[BackupRecord], policy: Retention) -> RetentionPlan:
    """Plan grandfather-father-son retention of ``backups`` under ``policy``.

    :param backups: the catalog, in any order; backup ids must be unique.
    :param policy: how many daily, weekly and monthly periods with a verified backup to keep.
    :raises ValueError: negative policy numbers, duplicate backup ids or naive snapshot times.
    """
    _validate_policy(policy)
    ordered = _newest_first(backups)
    verified = [backup for backup in ordered if backup.verified is True]
    newest_verified = verified[0] if verified else None
    slots = _slots(verified, policy)
    decisions = {backup.backup_id: _decide(backup, newest_verified, slots) for backup in ordered}
    blocked = _blocked_reason(ordered[0]) if ordered and ordered[0].verified is False else None
    if blocked:
        reasons = {bid: why if keep else f"{why}; deletion blocked" for bid, (keep, why) in decisions.items()}
        return RetentionPlan(keep=ordered, delete=[], reasons=reasons, blocked=blocked)
    return RetentionPlan(
        keep=[backup for backup in ordered if decisions[backup.backup_id][0]],
        delete=[backup for backup in ordered if not decisions[backup.backup_id][0]],
        reasons={bid: why for bid, (_, why) in decisions.items()},
        blocked=None,
    )


def plan_expiry(exports: Sequence[BackupRecord], max_age: float, now: datetime) -> RetentionPlan:
    """Plan the deletion of tenant exports taken more than ``max_age`` seconds before ``now``.

    :param exports: the catalog's tenant exports, in any order; ids must be unique.
    :param max_age: ``backup.tenant_retention`` in seconds, more than 0.
    :param now: tz-aware reference time (the run's date, so a rerun decides the same way).
    :raises ValueError: ``max_age`` not positive, duplicate ids or naive times.
    """
    if max_age <= 0:
        raise ValueError(f"tenant_retention must be more than 0 seconds, got {max_age:g}")
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    ordered = _newest_first(exports)
    cutoff = now - timedelta(seconds=max_age)
    expired = {e.backup_id for e in ordered if e.taken_at < cutoff}
    return RetentionPlan(
        keep=[e for e in ordered if e.backup_id not in expired],
        delete=[e for e in ordered if e.backup_id in expired],
        reasons={e.backup_id: f"taken before {cutoff.isoformat()}: older than tenant_retention"
                 if e.backup_id in expired else "within tenant_retention" for e in ordered},
        blocked=None,
    )
