"""Maintenance: pg_maintenance_weekly__<target> (VACUUM FULL / REINDEX where bloat is measured) and
pg_maintenance_daily__<target> (VACUUM / ANALYZE where due), per target with a `maintenance` policy.
Runbooks: include/runbooks/.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_targets
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.base import fail_run_on_any_failure
from dbops.operators.maintenance import (
    MaintenanceActionOperator,
    MaintenancePlanOperator,
    MaintenanceReportOperator,
)

config = load_config()
MAP_INDEX = "{{ task.item['action'] }} {{ task.item['schema_name'] }}.{{ task.item['name'] }}"

for target, settings in own_targets(config.targets.items()):
    policy = settings.maintenance
    if policy is None:
        continue
    notifier = DbopsFailureNotifier(target=target, channels=policy.notify)
    for kind, schedule in (("weekly", policy.weekly), ("daily", policy.daily)):
        with DAG(
            dag_id=f"pg_maintenance_{kind}__{target}",
            schedule=schedule,
            description=(f"Weekly maintenance of {target}: VACUUM FULL / REINDEX where bloat is measured"
                         if kind == "weekly" else f"Daily maintenance of {target}: VACUUM / ANALYZE where due"),
            doc_md=runbook(f"pg_maintenance_{kind}", target),
            params={"dry_run": Param(False, type="boolean", description="plan and report only; change nothing")},
            **dag_kwargs(tags=["maintenance", kind, target], on_failure=notifier),
        ) as maintenance_dag:
            plan = MaintenancePlanOperator(task_id="scan_and_plan", target=target, kind=kind,
                                           execution_timeout=timedelta(minutes=15))
            maintain = MaintenanceActionOperator.partial(
                task_id="maintain", target=target, kind=kind, pool=pool_name(target),
                retries=max(1, policy.lock_retries), retry_delay=timedelta(seconds=policy.lock_retry_delay),
                retry_exponential_backoff=2.0, map_index_template=MAP_INDEX,
                execution_timeout=timedelta(seconds=policy.statement_timeout + 600),
            ).expand(item=plan.output)
            report = MaintenanceReportOperator(task_id="report", target=target, kind=kind,
                                               plan_task_id="scan_and_plan", trigger_rule="all_done",
                                               execution_timeout=timedelta(minutes=5))
            plan >> maintain >> report
            fail_run_on_any_failure(maintenance_dag)  # report runs after failures: the run must still fail
