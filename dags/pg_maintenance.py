"""
### PostgreSQL maintenance driven by measured bloat, with bounded locks

`pg_maintenance_weekly__<target>` (schedule `maintenance.weekly`), for every target with a `maintenance`
policy in `include/config/dbops.yaml`:

1. **scan_and_plan** — measures every table and index (size, statistics-based bloat estimate, dead
   tuples, last vacuum/analyze, invalid indexes, long transactions and replica lag that would make a
   rewrite useless) and plans one action per object, with the reason: nothing; VACUUM (ANALYZE);
   ANALYZE; **VACUUM FULL** only when bloat is over `bloat_pct` *and* `min_bytes`, the table is under
   `size_cap` and free disk allows the rewrite (over the cap: reported with the recommendation,
   never locked); **REINDEX CONCURRENTLY** for bloated or invalid indexes; dropping invalid
   `_ccnew`/`_ccold` leftovers of an interrupted REINDEX CONCURRENTLY. The plan is logged as a table and
   stored in `dbops.maintenance_runs`; the task returns the actions to map over (XCom `plan`: the whole
   plan). Trigger with `dry_run` to stop here.
2. **maintain** — one mapped task per planned object (the map index names it), serialized through the
   target's pool. Each sets `lock_timeout` and a `statement_timeout` fit to the object's size. A lock
   not granted in time is retried with backoff (`lock_retries`, `lock_retry_delay`), then **skipped with
   the reason** (who held the lock) — the run goes on. Before/after sizes and every attempt go to
   `dbops.maintenance_log`; an object finished for this logical date is not redone by a rerun.
3. **report** — bytes reclaimed per object and in total, seconds, what was skipped and why, what was
   only recommended; the unused-index and duplicate-index reports as data (no index is ever dropped by
   dbops). Fails, after reporting, when any object's maintenance failed.

`pg_maintenance_daily__<target>` (schedule `maintenance.daily`): the same three steps for VACUUM (ANALYZE)
of tables over the dead-tuple thresholds and ANALYZE of tables with stale statistics.

Failures notify the target's `maintenance.notify` channels.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.base import fail_run_on_any_failure
from dbops.operators.maintenance import (
    MaintenanceActionOperator,
    MaintenancePlanOperator,
    MaintenanceReportOperator,
)

config = load_config()
MAP_INDEX = "{{ task.item['action'] }} {{ task.item['schema_name'] }}.{{ task.item['name'] }}"

for target, settings in config.targets.items():
    policy = settings.maintenance
    if policy is None:
        continue
    notifier = DbopsFailureNotifier(target=target, channels=policy.notify)
    for kind, schedule in (("weekly", policy.weekly), ("daily", policy.daily)):
        with DAG(
            dag_id=f"pg_maintenance_{kind}__{target}",
            schedule=schedule,
            doc_md=__doc__,
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
