"""Data lifecycle, per target, from include/config/dbops.yaml:
pg_archive__<target> (monthly archive moves) and pg_retention__<target> (daily: retention purges, and the
archive moves of policies with cadence daily), for a `lifecycle` section;
pg_anonymize__<target> (on demand: one user, Params user_id and reason) and pg_anonymize_inactive__<target>
(scheduled: users inactive longer than `anonymize_after`), for an `anonymize` section.
Runbooks: include/runbooks/.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from airflow.sdk import DAG, Param

from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_targets
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.anonymize import AnonymizeInactiveOperator, AnonymizeUserOperator
from dbops.operators.lifecycle import LifecycleCheckOperator, LifecycleOperator, selected


def lifecycle_dag(target: str, job: str, schedule: str, notifier: DbopsFailureNotifier, description: str) -> DAG:
    """pg_<job>__<target>, documented by include/runbooks/pg_<job>.md."""
    return DAG(dag_id=f"pg_{job}__{target}", schedule=schedule, description=description,
               doc_md=runbook(f"pg_{job}", target),
               **dag_kwargs(tags=["lifecycle", job, target], on_failure=notifier))


config = load_config()

for target, settings in own_targets(config.targets.items()):
    section = settings.lifecycle
    if section is None or not section.policies:
        continue
    notifier = DbopsFailureNotifier(target=target, channels=section.notify)
    # the task's limit: the time budget (it stops cleanly there) plus the last batch, the checks and the counts
    work_timeout = timedelta(seconds=section.time_budget + 2 * section.statement_timeout + 600)
    heavy = {"pool": pool_name(target), "execution_timeout": work_timeout}
    check = partial(LifecycleCheckOperator, task_id="check_policies", target=target,
                    execution_timeout=timedelta(minutes=5))

    if selected(section, "archive", "monthly"):
        with lifecycle_dag(target, "archive", section.archive_schedule, notifier,
                           f"Monthly archival of {target}: old rows moved to the archive schema in short batches"):
            check(job="archive", cadence="monthly") >> LifecycleOperator(
                task_id="archive", target=target, job="archive", cadence="monthly", **heavy)

    if selected(section, "retention") or selected(section, "archive", "daily"):
        with lifecycle_dag(target, "retention", section.retention_schedule, notifier,
                           f"Daily retention of {target}: rows past retention purged in short batches"):
            previous = check(job="retention")
            if selected(section, "archive", "daily"):
                previous = previous >> LifecycleOperator(task_id="archive_daily", target=target, job="archive",
                                                         cadence="daily", **heavy)
            if selected(section, "retention"):
                previous >> LifecycleOperator(task_id="purge", target=target, job="retention", **heavy)


for target, settings in own_targets(config.targets.items()):  # anonymization
    policy = settings.anonymize
    if policy is None:
        continue
    notifier = DbopsFailureNotifier(target=target, channels=policy.notify)
    with DAG(
        dag_id=f"pg_anonymize__{target}",
        schedule=None,
        description=f"Anonymize one user of {target}: every row naming them, base and archive tables",
        doc_md=runbook("pg_anonymize", target),
        params={
            "user_id": Param(type="string", minLength=1, maxLength=200,
                             description=f"the user's {policy.users.key} in {policy.users.table}"),
            "reason": Param(type="string", minLength=1, maxLength=500,
                            description="why, e.g. the ticket of the erasure request (no personal data)"),
        },
        **dag_kwargs(tags=["lifecycle", "anonymize", target], on_failure=notifier),
    ):
        AnonymizeUserOperator(task_id="anonymize", target=target, user_id="{{ params.user_id }}",
                              reason="{{ params.reason }}", execution_timeout=timedelta(minutes=15))

    if policy.anonymize_after is not None and policy.schedule:
        with DAG(
            dag_id=f"pg_anonymize_inactive__{target}",
            schedule=policy.schedule,
            description=f"Anonymize the users of {target} inactive longer than anonymize_after, in batches",
            doc_md=runbook("pg_anonymize_inactive", target),
            **dag_kwargs(tags=["lifecycle", "anonymize", target], on_failure=notifier),
        ):
            AnonymizeInactiveOperator(task_id="anonymize_inactive", target=target, pool=pool_name(target),
                                      execution_timeout=timedelta(hours=2))
