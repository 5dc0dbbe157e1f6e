"""Which target a DAG file builds in a task's process, from the DAG id of Airflow's parsing context."""

from __future__ import annotations

import pytest
from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID

from dbops.core.parsing import own_targets, parsed_target

TARGETS = {"app": 1, "app__db": 2, "chat": 3}


@pytest.mark.parametrize(("dag_id", "expected"), [
    (None, None),                             # the dag-processor, tests, the CLI: every target
    ("pg_backup__app", "app"),
    ("pg_backup__app__db", "app__db"),        # a target name may hold "__": families never do
    ("pg_maintenance_weekly__chat", "chat"),
    ("dbops_preflight", ""),                  # a DAG of no target: no target's DAGs
])
def test_the_target_is_what_follows_the_family(monkeypatch, dag_id, expected):
    monkeypatch.delenv(_AIRFLOW_PARSING_CONTEXT_DAG_ID, raising=False)
    if dag_id:
        monkeypatch.setenv(_AIRFLOW_PARSING_CONTEXT_DAG_ID, dag_id)
    assert parsed_target() == expected
    kept = dict(own_targets(TARGETS.items()))
    assert kept == (TARGETS if expected is None else {k: v for k, v in TARGETS.items() if k == expected})


@pytest.mark.parametrize(("dag_id", "expected"), [
    (None, {"fleet", "edge"}),                # the dag-processor: every group's DAG
    ("db_alerts_group__fleet", {"fleet"}),
    ("db_alerts__fleet", set()),              # another family's DAG of the same suffix: no group's
    ("db_alerts__app", set()),                # a target's own DAG: no group's
])
def test_a_group_dags_task_builds_its_group_only(monkeypatch, dag_id, expected):
    from dbops.core.parsing import own_groups

    monkeypatch.delenv(_AIRFLOW_PARSING_CONTEXT_DAG_ID, raising=False)
    if dag_id:
        monkeypatch.setenv(_AIRFLOW_PARSING_CONTEXT_DAG_ID, dag_id)
    groups = {"fleet": ["app", "chat"], "edge": ["app__db"]}
    assert set(dict(own_groups("db_alerts_group", groups.items()))) == expected
    if dag_id == "db_alerts_group__fleet":
        assert dict(own_targets(TARGETS.items())) == {}, "and no target's DAG (a group is never named as a target)"
