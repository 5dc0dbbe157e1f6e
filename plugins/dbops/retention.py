"""Grandfather-father-son backup retention as pure logic: which backups to keep, which to delete.

Only verified backups fill the daily, weekly and monthly slots, and a slot counts a period that has a
verified backup (like pgBackRest's or restic's ``keep-daily N``), so gaps never shorten the history.
The plan depends only on its inputs, never on the current time: a retried or backfilled run decides
the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone

from dbops.config import Retention


@dataclass(frozen=True)
class BackupRecord:
    """One backup in the catalog.

    :param backup_id: unique id of the backup.
    :param logical_date: tz-aware logical date of the run the backup is for.
    :param verified: True verified OK, False verification failed, None not (yet) verified.
    """

    backup_id: str
    logical_date: datetime
    verified: bool | None


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
    return backup.logical_date, backup.backup_id


def _validate_policy(policy: Retention) -> None:
    """Reject negative slot counts."""
    for fld in fields(policy):
        value = getattr(policy, fld.name)
        if value < 0:
            raise ValueError(f"retention.{fld.name} must be 0 or more, got {value}")


def _newest_first(backups: Sequence[BackupRecord]) -> list[BackupRecord]:
    """Sort newest first by (logical_date, backup_id); reject duplicate ids and naive dates."""
    seen: set[str] = set()
    for backup in backups:
        if backup.backup_id in seen:
            raise ValueError(f"duplicate backup_id {backup.backup_id!r}")
        if backup.logical_date.utcoffset() is None:
            raise ValueError(f"backup {backup.backup_id!r}: logical_date must be timezone-aware")
        seen.add(backup.backup_id)
    return sorted(backups, key=_order_key, reverse=True)


def _slots(verified: list[BackupRecord], policy: Retention) -> dict[str, list[str]]:
    """Map backup_id to the slots it fills, e.g. ``["daily 2026-11-20", "monthly 2026-11"]``."""
    slots: dict[str, list[str]] = {}
    for name, label_of in _PERIODS:
        limit = getattr(policy, name)
        filled: set[str] = set()
        for backup in verified:
            label = label_of(backup.logical_date.astimezone(timezone.utc))
            if label in filled:
                continue
            if len(filled) == limit:
                break
            filled.add(label)
            slots.setdefault(backup.backup_id, []).append(f"{name} {label}")
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
    if backup.verified is False:
        return False, "verification failed"
    if newest_verified is None or _order_key(backup) > _order_key(newest_verified):
        return True, "not yet verified"
    return False, "never verified, older than the newest verified backup"


def _blocked_reason(newest: BackupRecord) -> str:
    return (
        f"newest backup {newest.backup_id!r} ({newest.logical_date.isoformat()}) failed verification: "
        "retention deletes nothing until a newer backup is verified"
    )


def plan_retention(backups: Sequence[BackupRecord], policy: Retention) -> RetentionPlan:
    """Plan grandfather-father-son retention of ``backups`` under ``policy``.

    :param backups: the catalog, in any order; backup ids must be unique.
    :param policy: how many daily, weekly and monthly periods with a verified backup to keep.
    :raises ValueError: negative policy numbers, duplicate backup ids or naive logical dates.
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
