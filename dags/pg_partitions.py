"""Partition management: pg_partitions__<target> (daily by default) for every target with a `partitions`
section: create partitions ahead, move rows out of DEFAULT, retire old partitions safely, report.
Runbook: include/runbooks/pg_partitions.md.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_targets
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.base import fail_run_on_any_failure
from dbops.operators.partitions import PartitionsApplyOperator, PartitionsPlanOperator, PartitionsReportOperator

config = load_config()

for target, settings in own_targets(config.targets.items()):
    policy = settings.partitions
    if policy is None:
        continue
    with DAG(
        dag_id=f"pg_partitions__{target}",
        schedule=policy.schedule,
        description=f"Partitions of {target}: create ahead, empty DEFAULT, retire old ones safely",
        doc_md=runbook("pg_partitions", target),
        params={"dry_run": Param(False, type="boolean", description="inspect and plan only; change nothing"),
                "exact_counts": Param(False, type="boolean",
                                      description="count every partition's rows exactly in the report")},
        **dag_kwargs(tags=["partitions", target], on_failure=DbopsFailureNotifier(target=target,
                                                                                  channels=policy.notify)),
    ) as partitions_dag:
        plan = PartitionsPlanOperator(task_id="inspect_and_plan", target=target,
                                      execution_timeout=timedelta(minutes=15))
        apply = PartitionsApplyOperator(task_id="apply", target=target, pool=pool_name(target),
                                        execution_timeout=timedelta(hours=3))
        report = PartitionsReportOperator(task_id="report", target=target, trigger_rule="all_done",
                                          execution_timeout=timedelta(minutes=15))
        plan >> apply >> report
        fail_run_on_any_failure(partitions_dag)  # report runs after failures: the run must still fail
