"""A task's process builds only its own target's DAGs: the task runner parses the DAG file under Airflow's
parsing context, and every per-target loop keeps the one target the context's DAG id names."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from airflow.dag_processing.dagbag import BundleDagBag
from airflow.sdk.definitions._internal.dag_parsing_context import _airflow_parsing_context_manager
from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID, _AIRFLOW_PARSING_CONTEXT_TASK_ID

from tests.dags.test_dag_integrity import DAGS_FOLDER

CONFIG = DAGS_FOLDER.parent / "include" / "config" / "dbops.yaml"
PER_TARGET_FILES = sorted(p.name for p in DAGS_FOLDER.glob("*.py") if p.name != "dbops_preflight.py")


@pytest.fixture(scope="module")
def fleet_config(tmp_path_factory) -> Path:
    """The shipped config with a copy of each target (``appdb_b``, ``chatdb_b``): two of each engine."""
    data = yaml.safe_load(CONFIG.read_text())
    for name in list(data["targets"]):
        data["targets"][f"{name}_b"] = copy.deepcopy(data["targets"][name])
    path = tmp_path_factory.mktemp("fleet") / "dbops.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def fleet(fleet_config, monkeypatch) -> Path:
    monkeypatch.setenv("DBOPS_CONFIG", str(fleet_config))
    # the task runner's context manager leaves the variables set when they were not: undone after each test
    monkeypatch.setenv(_AIRFLOW_PARSING_CONTEXT_DAG_ID, "")
    monkeypatch.setenv(_AIRFLOW_PARSING_CONTEXT_TASK_ID, "")
    monkeypatch.delenv(_AIRFLOW_PARSING_CONTEXT_DAG_ID)
    monkeypatch.delenv(_AIRFLOW_PARSING_CONTEXT_TASK_ID)
    return fleet_config


def parse(dag_file: str, dag_id: str | None = None, task_id: str | None = None) -> dict:
    """The DAGs the file builds, as the task runner parses it (under the context) or the dag-processor."""
    with _airflow_parsing_context_manager(dag_id=dag_id, task_id=task_id):
        bag = BundleDagBag(dag_folder=str(DAGS_FOLDER / dag_file), safe_mode=False, load_op_links=False,
                           bundle_path=DAGS_FOLDER, bundle_name="dags-folder")
    assert bag.import_errors == {}
    return bag.dags


@pytest.mark.parametrize("dag_file", PER_TARGET_FILES)
def test_a_task_builds_only_its_own_targets_dags(fleet, dag_file):
    everything = parse(dag_file)
    per_target = sorted(dag_id for dag_id in everything if "__" in dag_id)
    assert len({dag_id.split("__", 1)[1] for dag_id in per_target}) >= 2
    dag_id = next(d for d in per_target if not d.endswith("_b"))  # its target's name begins another's
    target = dag_id.split("__", 1)[1]
    task_id = next(iter(everything[dag_id].task_dict))
    built = parse(dag_file, dag_id, task_id)
    assert dag_id in built and task_id in built[dag_id].task_dict
    assert {d for d in built if "__" in d} == {d for d in per_target if d.split("__", 1)[1] == target}
    assert set(built) - set(per_target) <= {"db_alert_silence"}, "a DAG of no target is cheap and stays"


@pytest.mark.parametrize(("dag_file", "dag_id", "task_id"), [("db_alerts.py", "db_alert_silence", "silence"),
                                                            ("dbops_preflight.py", "dbops_preflight", "check__appdb")])
def test_a_task_of_a_dag_of_no_target_builds_no_targets_dags(fleet, dag_file, dag_id, task_id):
    built = parse(dag_file, dag_id, task_id)
    assert list(built) == [dag_id]
    assert task_id in built[dag_id].task_dict


def test_the_dag_processor_builds_every_targets_dags(fleet):
    built = parse("pg_backup.py")
    assert {"pg_backup__appdb", "pg_backup__appdb_b"} <= set(built)


def test_a_group_dags_task_builds_only_its_groups_dag(fleet, fleet_config, tmp_path, monkeypatch):
    """alerts.group: the dag-processor builds one DAG per group; a task of one builds that one and no target's."""
    data = yaml.safe_load(fleet_config.read_text())
    for name, target in data["targets"].items():
        if target.get("alerts") is not None:
            target["alerts"]["group"] = "mongo_fleet" if target.get("engine") == "mongodb" else "pg_fleet"
    grouped = tmp_path / "dbops.yaml"
    grouped.write_text(yaml.safe_dump(data, sort_keys=False))
    monkeypatch.setenv("DBOPS_CONFIG", str(grouped))
    assert set(parse("db_alerts.py")) == {"db_alerts_group__pg_fleet", "db_alerts_group__mongo_fleet",
                                          "db_alert_silence"}
    built = parse("db_alerts.py", "db_alerts_group__pg_fleet", "evaluate")
    assert set(built) == {"db_alerts_group__pg_fleet", "db_alert_silence"}
    assert built["db_alerts_group__pg_fleet"].task_dict["evaluate"].targets == ["appdb", "appdb_b"]
