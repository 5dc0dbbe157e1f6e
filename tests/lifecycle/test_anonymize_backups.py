"""The retention forecast of the backups still holding an anonymized person's data (pure logic)."""

from __future__ import annotations

from datetime import datetime, timezone

from dbops.backup.policy import BackupPolicy, Retention
from dbops.backup.retention import BackupRecord
from dbops.lifecycle.anonymize_backups import forecast_full, next_run_after

UTC = timezone.utc
NIGHT = datetime(2026, 11, 30, 2, 0, tzinfo=UTC)
ANONYMIZED = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
CATALOG = [BackupRecord("b-1129", datetime(2026, 11, 29, 2, 0, tzinfo=UTC), True, "scheduled"),
           BackupRecord("b-1130", NIGHT, True, "scheduled")]


def policy(daily: int, weekly: int, monthly: int, schedule: str | None = "0 2 * * *") -> BackupPolicy:
    return BackupPolicy(storage="local", schedule=schedule, retention=Retention(daily, weekly, monthly))


def test_a_daily_backup_leaves_when_newer_nights_take_its_slot():
    dates = forecast_full(CATALOG, policy(2, 0, 1), {"b-1130", "b-1129"}, ANONYMIZED)
    assert dates == {"b-1129": datetime(2026, 12, 1, 2, 0, tzinfo=UTC),
                     "b-1130": datetime(2026, 12, 2, 2, 0, tzinfo=UTC)}


def test_the_months_last_backup_is_promoted_to_monthly_and_stays_until_two_newer_months_have_one():
    dates = forecast_full(CATALOG, policy(2, 0, 2), {"b-1130"}, ANONYMIZED)
    assert dates == {"b-1130": datetime(2027, 1, 1, 2, 0, tzinfo=UTC)}


def test_without_a_schedule_retention_never_deletes_them_so_there_is_no_date():
    assert forecast_full(CATALOG, policy(2, 0, 2, schedule=None), {"b-1130"}, ANONYMIZED) == {}


def test_a_tenant_export_leaves_at_the_first_backup_run_after_its_retention():
    assert next_run_after("0 2 * * *", datetime(2026, 12, 30, 2, 0, tzinfo=UTC)) == datetime(2026, 12, 30, 2, 0,
                                                                                             tzinfo=UTC)
    assert next_run_after("0 2 * * *", datetime(2026, 12, 30, 2, 1, tzinfo=UTC)) == datetime(2026, 12, 31, 2, 0,
                                                                                             tzinfo=UTC)
