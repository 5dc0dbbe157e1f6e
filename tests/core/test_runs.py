"""Run facts from a FAKE minimal Airflow context (only the keys the helpers read)."""

from __future__ import annotations

from datetime import datetime, timezone
from types import SimpleNamespace

from dbops.core.runs import interval_end

LOGICAL = datetime(2026, 3, 1, tzinfo=timezone.utc)
END = datetime(2026, 4, 1, tzinfo=timezone.utc)
TRIGGERED = datetime(2026, 11, 30, 9, 15, tzinfo=timezone.utc)


def test_interval_end_is_the_data_interval_end():
    context = {"data_interval_end": END, "logical_date": LOGICAL, "dag_run": SimpleNamespace(run_after=TRIGGERED)}
    assert interval_end(context) == END


def test_without_a_data_interval_it_is_the_logical_date_not_the_trigger_time():
    context = {"data_interval_end": None, "logical_date": LOGICAL, "dag_run": SimpleNamespace(run_after=TRIGGERED)}
    assert interval_end(context) == LOGICAL


def test_a_run_without_logical_date_counts_from_its_run_after():
    context = {"data_interval_end": None, "logical_date": None, "dag_run": SimpleNamespace(run_after=TRIGGERED)}
    assert interval_end(context) == TRIGGERED
