"""Facts about the current DAG run that every operator needs, robust to manual runs."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow.sdk import Context


def run_date(context: Context) -> datetime:
    """The date the run does its work for: the logical date, or ``run_after`` for runs without one."""
    logical_date = context.get("logical_date")
    return logical_date if logical_date is not None else context["dag_run"].run_after


def interval_end(context: Context) -> datetime:
    """Where a run's cutoffs count back from: its data interval end, else :func:`run_date` (never now())."""
    return context.get("data_interval_end") or run_date(context)


def run_id(context: Context) -> str:
    return context["run_id"]
