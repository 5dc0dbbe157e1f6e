"""Anonymization, per target with an `anonymize` section in include/config/dbops.yaml:
pg_anonymize__<target> (on demand: one user, Params user_id and reason) and
pg_anonymize_inactive__<target> (scheduled: users inactive longer than `anonymize_after`).
Runbooks: include/runbooks/pg_anonymize.md and pg_anonymize_inactive.md.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from dbops.core.config import load_config
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.anonymize import AnonymizeInactiveOperator, AnonymizeUserOperator

config = load_config()

for target, settings in config.targets.items():
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
            AnonymizeInactiveOperator(task_id="anonymize_inactive", target=target,
                                      execution_timeout=timedelta(hours=2))
