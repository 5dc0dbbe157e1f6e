"""The base of every dbops operator that works on one configured target."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from dbops.core.config import DbopsConfig, load_config

if TYPE_CHECKING:
    from airflow.sdk import DAG, Context


class TargetOperator(BaseOperator):
    """An operator for one target of dbops.yaml.

    :param target: the target's key in dbops.yaml.
    :param config_path: the config file; default ``$DBOPS_CONFIG`` or include/config/dbops.yaml.
    """

    template_fields: Sequence[str] = ("target",)

    def __init__(self, *, target: str, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.target = target
        self.config_path = config_path

    def load_config(self) -> DbopsConfig:
        return load_config(self.config_path)


class RunFailedWatcher(BaseOperator):
    """Fails the DAG run when any of its tasks failed, naming them.

    Airflow sets a run's state from its leaf tasks alone, and teardowns do not count: a report that runs
    after failures (trigger rule ``all_done``) would leave a run green whose backup failed. This leaf is
    downstream of every task and runs only when one of them failed (trigger rule ``one_failed``).
    """

    ui_color = "#f4a6a6"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trigger_rule="one_failed", retries=0, on_failure_callback=None, **kwargs)

    def execute(self, context: Context) -> None:
        from airflow.sdk.exceptions import AirflowFailException

        states = context["ti"].get_task_states(dag_id=self.dag_id, run_ids=[context["run_id"]])
        failed = sorted(task_id for task_id, state in states.get(context["run_id"], {}).items()
                        if state == "failed")
        raise AirflowFailException(f"FAILED: this run's work did not succeed ({', '.join(failed) or 'see the graph'}); "
                                   "the failed task's log says why")


def fail_run_on_any_failure(dag: DAG) -> None:
    """Add the :class:`RunFailedWatcher` leaf ``any_task_failed`` downstream of every task of ``dag``.

    Setup tasks are left out (Airflow wants them followed by ``all_success`` only): their failure
    reaches the watcher as their work task's ``upstream_failed``.
    """
    watcher = RunFailedWatcher(task_id="any_task_failed", dag=dag, execution_timeout=timedelta(minutes=5))
    for task in dag.tasks:
        if task is not watcher and not task.is_setup:
            task >> watcher
