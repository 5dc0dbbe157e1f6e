"""What every dbops DAG shares: owner, retries with exponential backoff, timeouts, no overlap."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from dbops.core.config import PROJECT_ROOT

RUNBOOKS = PROJECT_ROOT / "include" / "runbooks"

# Far in the past, so that a run or backfill for any date the data reaches does that date's work: Airflow gives a
# run whose logical date is before start_date no task instances and marks it success. With catchup off the
# scheduler itself only creates the latest interval's run.
START_DATE = datetime(2000, 1, 1, tzinfo=timezone.utc)

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "dbops",
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=30),
    "execution_timeout": timedelta(minutes=30),
}


def dag_kwargs(*, tags: list[str], max_active_runs: int = 1, on_failure: Any = None,
               **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``DAG(...)``; ``on_failure`` is every task's failure callback; ``overrides`` win."""
    default_args = {**DEFAULT_ARGS, "on_failure_callback": on_failure} if on_failure else DEFAULT_ARGS
    return {
        "start_date": START_DATE,
        "catchup": False,
        "max_active_runs": max_active_runs,
        "default_args": default_args,
        "tags": ["dbops", *tags],
        **overrides,
    }


def runbook(name: str, target: str = "<target>") -> str:
    """A DAG's ``doc_md``: include/runbooks/<name>.md, with ``{target}`` filled in."""
    return (RUNBOOKS / f"{name}.md").read_text().replace("{target}", target)
