"""A DAG run whose work failed ends failed, even when its report or teardown runs after the failure.

Each DAG family whose leaf runs after failures (trigger rule ``all_done``) runs once, for real
(``dag.test()``), against a target whose database does not exist: the first task fails, and the run
state must be ``failed`` — before ``any_task_failed`` existed, these runs ended ``success``.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from scripts.stack.paths import ROOT
from scripts.stack.postgres import conn_uri
from tests.conftest import config_yaml

TARGET = "gone"
DAY = datetime(2026, 11, 20, 4, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def dags(pg_server, tmp_path_factory):
    """The DAGs of a config whose only target points at a database that does not exist."""
    from airflow.dag_processing.dagbag import DagBag

    tmp = tmp_path_factory.mktemp("run_state")
    config = tmp / "dbops.yaml"
    config.write_text(config_yaml(tmp, f"""\
  {TARGET}:
    conn_id: pg_gone
    backup: {{storage: local}}
    maintenance: {{weekly: "0 1 * * 0", daily: "0 3 * * *"}}
"""))
    patch = pytest.MonkeyPatch()
    patch.setenv("DBOPS_CONFIG", str(config))
    patch.setenv("AIRFLOW_CONN_PG_GONE", conn_uri("dbops_no_such_database"))
    yield DagBag(dag_folder=str(ROOT / "dags")).dags
    patch.undo()


@pytest.mark.parametrize("dag_id", [f"pg_backup__{TARGET}", f"pg_maintenance_daily__{TARGET}"])
def test_run_with_a_failed_task_is_failed(dags, dag_id):
    run = dags[dag_id].test(logical_date=DAY)
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert "failed" in states.values(), states
    assert states["any_task_failed"] == "failed", states
    assert run.state == "failed", states


def test_watcher_is_downstream_of_every_task(dags):
    for dag_id in (f"pg_backup__{TARGET}", f"pg_maintenance_weekly__{TARGET}", f"pg_maintenance_daily__{TARGET}"):
        dag = dags[dag_id]
        watcher = dag.get_task("any_task_failed")
        assert watcher.trigger_rule == "one_failed" and watcher.retries == 0
        work = {t.task_id for t in dag.tasks if not t.is_setup} - {"any_task_failed"}
        assert watcher.upstream_task_ids == work, dag_id
