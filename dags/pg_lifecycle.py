"""Data lifecycle, per target with a `lifecycle` section in include/config/dbops.yaml:
pg_archive__<target> (monthly archive moves) and pg_retention__<target> (daily: retention purges, and the
archive moves of policies with cadence daily). Runbooks: include/runbooks/.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.lifecycle import LifecycleCheckOperator, LifecycleOperator, selected

config = load_config()

for target, settings in config.targets.items():
    section = settings.lifecycle
    if section is None or not section.policies:
        continue
    notifier = DbopsFailureNotifier(target=target, channels=section.notify)
    # the task's limit: the time budget (it stops cleanly there) plus the last batch, the checks and the counts
    work_timeout = timedelta(seconds=section.time_budget + 2 * section.statement_timeout + 600)
    heavy = {"pool": pool_name(target), "execution_timeout": work_timeout}

    if selected(section, "archive", "monthly"):
        with DAG(
            dag_id=f"pg_archive__{target}",
            schedule=section.archive_schedule,
            description=f"Monthly archival of {target}: old rows moved to the archive schema in short batches",
            doc_md=runbook("pg_archive", target),
            **dag_kwargs(tags=["lifecycle", "archive", target], on_failure=notifier),
        ):
            check = LifecycleCheckOperator(task_id="check_policies", target=target, job="archive",
                                           cadence="monthly", execution_timeout=timedelta(minutes=5))
            move = LifecycleOperator(task_id="archive", target=target, job="archive", cadence="monthly", **heavy)
            check >> move

    if selected(section, "retention") or selected(section, "archive", "daily"):
        with DAG(
            dag_id=f"pg_retention__{target}",
            schedule=section.retention_schedule,
            description=f"Daily retention of {target}: rows past retention purged in short batches",
            doc_md=runbook("pg_retention", target),
            **dag_kwargs(tags=["lifecycle", "retention", target], on_failure=notifier),
        ):
            previous = LifecycleCheckOperator(task_id="check_policies", target=target, job="retention",
                                              execution_timeout=timedelta(minutes=5))
            if selected(section, "archive", "daily"):
                previous = previous >> LifecycleOperator(task_id="archive_daily", target=target, job="archive",
                                                         cadence="daily", **heavy)
            if selected(section, "retention"):
                previous >> LifecycleOperator(task_id="purge", target=target, job="retention", **heavy)
