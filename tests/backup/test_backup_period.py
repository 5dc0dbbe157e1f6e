"""Which backup runs are for a past period: a dump reads the present, so such a run cannot make it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dbops.backup.runs import is_past_period

MONDAY_2AM = datetime(2026, 11, 16, 2, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("schedule", "run_type", "now", "past"), [
    ("0 2 * * *", "scheduled", MONDAY_2AM + timedelta(seconds=5), False),  # on time
    ("0 2 * * *", "scheduled", MONDAY_2AM + timedelta(hours=23, minutes=59), False),  # late, same period
    ("0 2 * * *", "scheduled", MONDAY_2AM + timedelta(days=1), True),  # the next slot has come
    ("0 2 * * *", "manual", MONDAY_2AM + timedelta(days=3), True),  # a manual run with an old logical date
    ("0 2 * * *", "backfill", MONDAY_2AM + timedelta(minutes=1), True),  # a backfill is always for the past
    ("0 2 * * 0", "scheduled", MONDAY_2AM + timedelta(days=5), False),  # weekly: Sunday 02:00 is next
    ("@daily", "scheduled", MONDAY_2AM + timedelta(hours=22), True),  # midnight came
    ("@quarterly", "scheduled", MONDAY_2AM + timedelta(days=14), False),
    ("@quarterly", "scheduled", MONDAY_2AM + timedelta(days=60), True),  # 2027-01-01 came
    (None, "manual", MONDAY_2AM + timedelta(days=30), False),  # no schedule: no period to miss
    ("@once", "manual", MONDAY_2AM + timedelta(days=30), False),
])
def test_past_period(schedule, run_type, now, past):
    assert is_past_period(schedule, MONDAY_2AM, run_type, now) is past
