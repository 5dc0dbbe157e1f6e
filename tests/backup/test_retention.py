"""Retention planning: GFS for full backups, expiry for tenant exports; what is kept, deleted, and why."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone

import pytest

from dbops.backup.policy import Retention
from dbops.backup.retention import BackupRecord, RetentionPlan, plan_expiry, plan_retention

LAST_DAY = date(2026, 11, 20)  # a Friday in ISO week 2026-W47
DEFAULT = Retention(daily=7, weekly=4, monthly=12)
NOTHING = Retention(daily=0, weekly=0, monthly=0)


def at(day: date, hour: int = 2) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=timezone.utc)


def record(day: date, verified: bool | None = True, hour: int = 2, backup_id: str | None = None,
           run_type: str | None = "scheduled") -> BackupRecord:
    """A backup whose id defaults to its date and hour, e.g. ``2026-11-20T02``."""
    return BackupRecord(backup_id or f"{day.isoformat()}T{hour:02d}", at(day, hour), verified, run_type)


def daily_backups(last: date = LAST_DAY, count: int = 400) -> list[BackupRecord]:
    """``count`` consecutive verified nightly backups ending on ``last``, oldest first."""
    return [record(last - timedelta(days=offset)) for offset in reversed(range(count))]


def ids(records: list[BackupRecord]) -> list[str]:
    return [r.backup_id for r in records]


def days(records: list[BackupRecord]) -> list[str]:
    return [r.taken_at.date().isoformat() for r in records]


def test_gfs_7_4_12_over_400_daily_backups_keeps_exactly_the_slots() -> None:
    backups = daily_backups()
    assert days(backups)[0] == "2025-10-17"

    plan = plan_retention(backups, DEFAULT)

    daily = [f"2026-11-{d}" for d in range(20, 13, -1)]  # 20 .. 14
    weekly_extra = ["2026-11-08", "2026-11-01"]  # Sundays of W45, W44 (W47 = 11-20, W46 = 11-15 already daily)
    monthly_extra = ["2026-10-31", "2026-09-30", "2026-08-31", "2026-07-31", "2026-06-30", "2026-05-31",
                     "2026-04-30", "2026-03-31", "2026-02-28", "2026-01-31", "2025-12-31"]
    assert days(plan.keep) == daily + weekly_extra + monthly_extra
    assert len(plan.keep) == 20
    assert len(plan.delete) == 380
    assert set(ids(plan.keep)) | set(ids(plan.delete)) == set(ids(backups))
    assert plan.blocked is None


def test_gfs_reasons_name_every_slot_a_backup_fills() -> None:
    plan = plan_retention(daily_backups(), DEFAULT)

    assert plan.reasons["2026-11-20T02"] == "newest verified, daily 2026-11-20, weekly 2026-W47, monthly 2026-11"
    assert plan.reasons["2026-11-15T02"] == "daily 2026-11-15, weekly 2026-W46"
    assert plan.reasons["2026-11-14T02"] == "daily 2026-11-14"
    assert plan.reasons["2026-11-01T02"] == "weekly 2026-W44"
    assert plan.reasons["2025-12-31T02"] == "monthly 2025-12"
    assert plan.reasons["2025-11-30T02"] == "outside retention"
    assert plan.reasons["2026-11-13T02"] == "outside retention"
    assert len(plan.reasons) == 400


def test_keep_and_delete_are_newest_first() -> None:
    plan = plan_retention(daily_backups(count=60), DEFAULT)

    assert plan.keep == sorted(plan.keep, key=lambda r: r.taken_at, reverse=True)
    assert plan.delete == sorted(plan.delete, key=lambda r: r.taken_at, reverse=True)
    assert ids(plan.keep)[0] == "2026-11-20T02"
    assert ids(plan.delete)[0] == "2026-11-13T02"


def test_daily_slots_count_days_that_have_a_verified_backup() -> None:
    backups = [record(date(2026, 3, d)) for d in (1, 2, 5, 9, 10)]

    plan = plan_retention(backups, Retention(daily=3, weekly=0, monthly=0))

    assert days(plan.keep) == ["2026-03-10", "2026-03-09", "2026-03-05"]
    assert days(plan.delete) == ["2026-03-02", "2026-03-01"]


def test_weekly_and_monthly_slots_skip_empty_periods() -> None:
    # ISO weeks 2026-W12 (03-20), W09 (02-27), W05 (01-30): weeks between have no backup.
    # Months: 2026-03, 2026-02, 2026-01, then nothing until 2025-10.
    backups = [record(date(2026, 3, 20)), record(date(2026, 2, 27)), record(date(2026, 1, 30)),
               record(date(2025, 10, 15)), record(date(2025, 10, 1))]

    weekly = plan_retention(backups, Retention(daily=0, weekly=3, monthly=0))
    monthly = plan_retention(backups, Retention(daily=0, weekly=0, monthly=4))

    assert days(weekly.keep) == ["2026-03-20", "2026-02-27", "2026-01-30"]
    assert monthly.reasons["2025-10-15T02"] == "monthly 2025-10"
    assert days(monthly.delete) == ["2025-10-01"]


def test_only_the_newest_backup_of_a_day_fills_its_daily_slot() -> None:
    backups = [record(date(2026, 5, 9), hour=2),
               record(date(2026, 5, 10), hour=1), record(date(2026, 5, 10), hour=9), record(date(2026, 5, 10), hour=23)]

    plan = plan_retention(backups, Retention(daily=2, weekly=0, monthly=0))

    assert ids(plan.keep) == ["2026-05-10T23", "2026-05-09T02"]
    assert ids(plan.delete) == ["2026-05-10T09", "2026-05-10T01"]
    assert plan.reasons["2026-05-10T09"] == "outside retention"


def test_days_are_utc_calendar_days() -> None:
    plus_two = timezone(timedelta(hours=2))
    early = BackupRecord("early", datetime(2026, 3, 1, 0, 30, tzinfo=plus_two), True)  # 2026-02-28 22:30 UTC
    late = BackupRecord("late", datetime(2026, 2, 28, 20, 0, tzinfo=timezone.utc), True)

    plan = plan_retention([early, late], Retention(daily=1, weekly=0, monthly=1))

    assert plan.reasons["early"] == "newest verified, daily 2026-02-28, monthly 2026-02"
    assert ids(plan.delete) == ["late"]


def test_newest_verified_is_kept_even_with_an_all_zero_policy() -> None:
    plan = plan_retention(daily_backups(count=30), NOTHING)

    assert ids(plan.keep) == ["2026-11-20T02"]
    assert plan.reasons["2026-11-20T02"] == "newest verified"
    assert len(plan.delete) == 29


def test_failed_newest_backup_blocks_all_deletion() -> None:
    backups = [*daily_backups(count=40), record(LAST_DAY - timedelta(days=50), verified=False),
               record(LAST_DAY + timedelta(days=1), verified=False)]

    plan = plan_retention(backups, NOTHING)

    assert plan.delete == []
    assert len(plan.keep) == 42
    assert plan.blocked is not None
    assert "2026-11-21T02" in plan.blocked
    assert "failed verification" in plan.blocked
    assert "deletes nothing" in plan.blocked
    assert plan.reasons["2026-11-21T02"] == "verification failed; kept while no newer backup is verified"
    assert plan.reasons["2026-11-19T02"] == "outside retention; deletion blocked"
    assert plan.reasons["2026-11-20T02"] == "newest verified"


def test_block_lifts_once_a_newer_backup_is_verified() -> None:
    failed = record(date(2026, 6, 2), verified=False)
    backups = [record(date(2026, 6, 1)), failed, record(date(2026, 6, 3))]

    plan = plan_retention(backups, Retention(daily=7, weekly=0, monthly=0))

    assert plan.blocked is None
    assert plan.delete == [failed]
    assert plan.reasons[failed.backup_id] == "verification failed"
    assert days(plan.keep) == ["2026-06-03", "2026-06-01"]


def test_failed_backups_never_fill_a_slot() -> None:
    # The failed one is the latest of 06-02, yet the verified 01:00 backup holds that day's slot.
    backups = [record(date(2026, 6, 2), hour=1), record(date(2026, 6, 2), verified=False, hour=5),
               record(date(2026, 6, 1), verified=False), record(date(2026, 6, 3))]

    plan = plan_retention(backups, Retention(daily=2, weekly=0, monthly=0))

    assert ids(plan.keep) == ["2026-06-03T02", "2026-06-02T01"]
    assert ids(plan.delete) == ["2026-06-02T05", "2026-06-01T02"]
    assert plan.reasons["2026-06-01T02"] == "verification failed"


def test_unverified_backups_newer_than_the_newest_verified_are_kept() -> None:
    backups = [*daily_backups(count=3), record(LAST_DAY + timedelta(days=1), verified=None),
               record(LAST_DAY + timedelta(days=2), verified=None)]

    plan = plan_retention(backups, NOTHING)

    assert ids(plan.keep) == ["2026-11-22T02", "2026-11-21T02", "2026-11-20T02"]
    assert plan.reasons["2026-11-22T02"] == "not yet verified"
    assert plan.reasons["2026-11-21T02"] == "not yet verified"
    assert ids(plan.delete) == ["2026-11-19T02", "2026-11-18T02"]
    assert plan.blocked is None


def test_unverified_backups_older_than_the_newest_verified_are_deleted() -> None:
    stale = record(date(2026, 6, 2), verified=None)
    backups = [record(date(2026, 6, 1)), stale, record(date(2026, 6, 3))]

    plan = plan_retention(backups, Retention(daily=7, weekly=4, monthly=12))

    assert plan.delete == [stale]
    assert plan.reasons[stale.backup_id] == "never verified, older than the newest verified backup"
    assert days(plan.keep) == ["2026-06-03", "2026-06-01"]


def test_without_any_verified_backup_nothing_is_deleted() -> None:
    failed = record(date(2026, 6, 1), verified=False)
    pending = [record(date(2026, 6, 2), verified=None), record(date(2026, 6, 3), verified=None)]

    plan = plan_retention([failed, *pending], DEFAULT)

    assert ids(plan.keep) == ["2026-06-03T02", "2026-06-02T02", "2026-06-01T02"]
    assert plan.delete == []
    assert plan.reasons[failed.backup_id] == "verification failed; kept while no newer backup is verified"
    assert plan.blocked is None


def test_failed_backup_newer_than_the_newest_verified_is_kept() -> None:
    failed = record(date(2026, 6, 3), verified=False)
    backups = [record(date(2026, 6, 1)), record(date(2026, 6, 2)), failed, record(date(2026, 6, 4), verified=None)]

    plan = plan_retention(backups, NOTHING)

    assert ids(plan.keep) == ["2026-06-04T02", "2026-06-03T02", "2026-06-02T02"]
    assert plan.reasons[failed.backup_id] == "verification failed; kept while no newer backup is verified"
    assert ids(plan.delete) == ["2026-06-01T02"]


def test_manual_backup_never_evicts_the_days_scheduled_backup() -> None:
    scheduled = record(LAST_DAY, hour=2)
    manual = record(LAST_DAY, hour=10, run_type="manual")
    backups = [record(LAST_DAY - timedelta(days=1)), scheduled, manual]

    plan = plan_retention(backups, Retention(daily=2, weekly=0, monthly=0))

    assert ids(plan.keep) == ["2026-11-20T10", "2026-11-20T02", "2026-11-19T02"]
    assert plan.reasons[manual.backup_id] == "newest verified"
    assert plan.reasons[scheduled.backup_id] == "daily 2026-11-20"
    assert plan.delete == []


def test_the_next_scheduled_backup_makes_the_manual_one_go() -> None:
    manual = record(LAST_DAY, hour=10, run_type="manual")
    backups = [record(LAST_DAY, hour=2), manual, record(LAST_DAY + timedelta(days=1))]

    plan = plan_retention(backups, Retention(daily=2, weekly=1, monthly=1))

    assert ids(plan.keep) == ["2026-11-21T02", "2026-11-20T02"]
    assert ids(plan.delete) == [manual.backup_id]
    assert plan.reasons[manual.backup_id] == "outside retention"


def test_backfill_runs_count_as_scheduled_and_extra_backups_fill_empty_periods() -> None:
    backfilled = record(date(2026, 6, 2), hour=9, run_type="backfill")
    backups = [record(date(2026, 6, 2), hour=15, run_type="manual"), backfilled,
               record(date(2026, 6, 1), hour=12, run_type="asset_triggered"), record(date(2026, 5, 31), hour=8,
                                                                                       run_type=None)]

    plan = plan_retention(backups, Retention(daily=3, weekly=0, monthly=0))

    assert plan.reasons[backfilled.backup_id] == "daily 2026-06-02"
    assert plan.reasons["2026-06-01T12"] == "daily 2026-06-01"
    assert plan.reasons["2026-05-31T08"] == "daily 2026-05-31"
    assert plan.reasons["2026-06-02T15"] == "newest verified"


def test_scheduled_backups_fill_weekly_and_monthly_slots_before_manual_ones() -> None:
    scheduled = record(date(2026, 6, 10), hour=2)
    backups = [scheduled, record(date(2026, 6, 12), hour=11, run_type="manual"), record(date(2026, 6, 16))]

    plan = plan_retention(backups, Retention(daily=0, weekly=2, monthly=0))

    assert plan.reasons[scheduled.backup_id] == "weekly 2026-W24"
    assert ids(plan.delete) == ["2026-06-12T11"]


def test_same_snapshot_time_is_ordered_by_backup_id() -> None:
    moment = at(date(2026, 6, 1))
    backups = [BackupRecord("b", moment, True), BackupRecord("a", moment, True), BackupRecord("c", moment, None)]

    plan = plan_retention(backups, Retention(daily=1, weekly=0, monthly=0))

    assert ids(plan.keep) == ["c", "b"]
    assert plan.reasons["c"] == "not yet verified"
    assert plan.reasons["b"] == "newest verified, daily 2026-06-01"
    assert ids(plan.delete) == ["a"]


def test_input_order_does_not_matter() -> None:
    backups = [*daily_backups(), record(LAST_DAY, verified=False, hour=1), record(LAST_DAY, verified=None, hour=5),
               record(date(2026, 1, 15), verified=None, hour=3), record(date(2026, 1, 15), verified=False, hour=4)]
    expected = plan_retention(backups, DEFAULT)
    shuffled = list(backups)
    random.Random(20261120).shuffle(shuffled)
    assert shuffled != backups

    assert plan_retention(shuffled, DEFAULT) == expected
    assert plan_retention(list(reversed(backups)), DEFAULT) == expected
    assert ids(expected.keep)[:2] == ["2026-11-20T05", "2026-11-20T02"]


def test_plan_depends_only_on_the_inputs_not_on_now() -> None:
    past = plan_retention(daily_backups(last=date(1999, 12, 31), count=10), Retention(daily=3, weekly=0, monthly=0))
    future = plan_retention(daily_backups(last=date(2099, 12, 31), count=10), Retention(daily=3, weekly=0, monthly=0))

    assert days(past.keep) == ["1999-12-31", "1999-12-30", "1999-12-29"]
    assert days(future.keep) == ["2099-12-31", "2099-12-30", "2099-12-29"]


def test_empty_catalog_gives_an_empty_plan() -> None:
    assert plan_retention([], DEFAULT) == RetentionPlan(keep=[], delete=[], reasons={}, blocked=None)


def test_duplicate_backup_ids_raise() -> None:
    backups = [record(date(2026, 6, 1), backup_id="x"), record(date(2026, 6, 2), backup_id="x")]

    with pytest.raises(ValueError, match="duplicate backup_id 'x'"):
        plan_retention(backups, DEFAULT)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (Retention(daily=-1, weekly=4, monthly=12), "retention.daily must be 0 or more, got -1"),
        (Retention(daily=7, weekly=-2, monthly=12), "retention.weekly must be 0 or more, got -2"),
        (Retention(daily=7, weekly=4, monthly=-3), "retention.monthly must be 0 or more, got -3"),
    ],
)
def test_negative_policy_raises(policy: Retention, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_retention(daily_backups(count=3), policy)


def test_naive_snapshot_time_raises() -> None:
    naive = BackupRecord("naive", datetime(2026, 6, 1, 2), True)

    with pytest.raises(ValueError, match="'naive'.*timezone-aware"):
        plan_retention([naive], DEFAULT)


# --- tenant exports: personal data, deleted once older than backup.tenant_retention ---

THIRTY_DAYS = 30 * 86400.0


def test_tenant_exports_older_than_the_retention_are_deleted() -> None:
    exports = [record(LAST_DAY - timedelta(days=n), verified=None, run_type="manual") for n in (0, 29, 30, 31, 90)]

    plan = plan_expiry(exports, THIRTY_DAYS, at(LAST_DAY, hour=3))

    assert days(plan.keep) == ["2026-11-20", "2026-10-22"]
    assert days(plan.delete) == ["2026-10-21", "2026-10-20", "2026-08-22"]  # 30 days and 1 hour old is past 30d
    assert plan.reasons["2026-10-21T02"] == "taken before 2026-10-21T03:00:00+00:00: older than tenant_retention"
    assert plan.reasons["2026-11-20T02"] == "within tenant_retention"
    assert plan.blocked is None


def test_tenant_expiry_depends_on_the_run_date_not_on_now() -> None:
    exports = [record(date(1999, 12, 1), verified=None), record(date(1999, 12, 30), verified=None)]

    assert days(plan_expiry(exports, 7 * 86400.0, at(date(1999, 12, 31))).delete) == ["1999-12-01"]
    assert plan_expiry(exports, 7 * 86400.0, at(date(1999, 12, 5))).delete == []


@pytest.mark.parametrize(("max_age", "now", "message"), [
    (0.0, at(LAST_DAY), "tenant_retention must be more than 0 seconds, got 0"),
    (-5.0, at(LAST_DAY), "tenant_retention must be more than 0 seconds, got -5"),
    (THIRTY_DAYS, datetime(2026, 11, 20, 2), "now must be timezone-aware"),
])
def test_tenant_expiry_rejects_bad_input(max_age: float, now: datetime, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        plan_expiry([record(LAST_DAY)], max_age, now)
