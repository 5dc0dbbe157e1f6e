"""Every DAG file imports cleanly and every DAG carries the operational defaults dbops promises."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from airflow.sdk import Asset
from airflow.dag_processing.dagbag import DagBag

DAGS_FOLDER = Path(__file__).resolve().parents[2] / "dags"
PLUGINS_FOLDER = DAGS_FOLDER.parent / "plugins"


def load_dagbag() -> DagBag:
    return DagBag(dag_folder=str(DAGS_FOLDER))


@pytest.fixture(scope="module")
def dagbag() -> DagBag:
    return load_dagbag()


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def expected_schedules() -> dict[str, str | None]:
    """Every DAG id the config implies, with the schedule the config gives it."""
    from dbops.core.config import load_config

    config = load_config()
    expected = {"dbops_preflight": config.preflight.schedule}
    for name, target in config.targets.items():
        if target.backup and target.engine == "postgres":
            expected |= {f"pg_backup__{name}": target.backup.schedule, f"pg_restore__{name}": None,
                         f"pg_verify_backup__{name}": None}
            if target.backup.tenant_tables:
                expected[f"pg_tenant_export__{name}"] = None
        if target.backup and target.engine == "mongodb":
            expected |= {f"mongo_backup__{name}": target.backup.schedule, f"mongo_restore__{name}": None,
                         f"mongo_verify_backup__{name}": None}
        if target.engine == "mongodb" and target.mongo and target.mongo.retention:
            expected[f"mongo_retention__{name}"] = target.mongo.retention.schedule
        if target.engine == "mongodb" and target.mongo and target.mongo.maintenance:
            expected[f"mongo_maintenance_weekly__{name}"] = target.mongo.maintenance.weekly
        if target.maintenance:
            expected |= {f"pg_maintenance_weekly__{name}": target.maintenance.weekly,
                         f"pg_maintenance_daily__{name}": target.maintenance.daily}
        if target.partitions:
            expected[f"pg_partitions__{name}"] = target.partitions.schedule
        if target.lifecycle and target.lifecycle.policies:
            expected |= lifecycle_schedules(name, target.lifecycle)
        if target.alerts:
            alone = target.alerts.group is None
            expected |= {f"db_alerts__{name}" if alone else f"db_alerts_group__{target.alerts.group}":
                         target.alerts.schedule, "db_alert_silence": None}
        if target.anonymize:
            expected[f"pg_anonymize__{name}"] = None
            if target.anonymize.anonymize_after is not None and target.anonymize.schedule:
                expected[f"pg_anonymize_inactive__{name}"] = target.anonymize.schedule
        if target.pitr:
            expected |= {f"pg_basebackup__{name}": target.pitr.schedule,
                         f"pg_wal_ship__{name}": target.pitr.wal_ship_schedule,
                         f"pg_pitr_test__{name}": [Asset(name=f"basebackup__{name}", uri=f"dbops://{name}/basebackup")],
                         f"pg_restore_pitr__{name}": None}
    return expected


def lifecycle_schedules(name, section) -> dict[str, str | None]:
    policies = section.policies
    expected = {}
    if any(p.archive_after and p.cadence == "monthly" for p in policies):
        expected[f"pg_archive__{name}"] = section.archive_schedule
    if any(p.retention or (p.archive_after and p.cadence == "daily") for p in policies):
        expected[f"pg_retention__{name}"] = section.retention_schedule
    return expected


def test_no_plugin_module_shadows_the_standard_library():
    """Airflow's plugin loader imports every file under plugins/ by its bare name: an ``inspect.py``
    there replaces the standard ``inspect`` module in every task process."""
    clashes = sorted(str(p.relative_to(PLUGINS_FOLDER)) for p in PLUGINS_FOLDER.rglob("*.py")
                     if p.stem in sys.stdlib_module_names)
    assert clashes == []


def test_every_dag_the_config_implies_exists_with_its_schedule(dagbag):
    expected = expected_schedules()
    assert set(dagbag.dag_ids) == set(expected)
    assert {dag_id: dagbag.dags[dag_id].schedule for dag_id in expected} == expected


def all_dags():
    return sorted(load_dagbag().dags.items())


@pytest.mark.parametrize(("dag_id", "dag"), all_dags())
def test_dag_has_operational_defaults(dag_id, dag):
    check_operational_defaults(dag_id, dag)


def check_operational_defaults(dag_id, dag):
    assert dag.owner == "dbops"
    assert "dbops" in dag.tags and len(dag.tags) >= 2
    assert dag.description and len(dag.description) < 120, "a one-line description for the DAG list"
    assert dag.doc_md and "When" in dag.doc_md and "fail" in dag.doc_md, "a runbook: what to do when a task fails"
    assert dag.max_active_runs == 1, "runs of one DAG never overlap"
    assert not dag.catchup
    assert dag.start_date <= datetime(2000, 1, 1, tzinfo=timezone.utc), (
        "a run or backfill for an earlier logical date would get no task instances and end green")
    for task in dag.tasks:
        if task.task_id == "any_task_failed":  # the watcher only reports what failed: nothing to retry
            assert task.retries == 0
            continue
        assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"
        assert task.retry_exponential_backoff >= 2.0, f"{dag_id}.{task.task_id} backs off linearly"
        assert task.execution_timeout is not None, f"{dag_id}.{task.task_id} has no execution_timeout"


@pytest.mark.parametrize(("dag_id", "dag"), all_dags())
def test_dag_survives_the_dag_processors_encoding(dag_id, dag):
    """The dag-processor sends each serialized DAG to its manager with this msgpack encoder."""
    from airflow.sdk.execution_time.comms import _new_encoder
    from airflow.serialization.serialized_objects import DagSerialization

    assert _new_encoder().encode(DagSerialization.to_dict(dag))


def test_preflight_has_one_task_per_target(dagbag):
    from dbops.core.config import load_config

    tasks = {t.task_id for t in dagbag.dags["dbops_preflight"].tasks}
    assert tasks == {f"check__{name}" for name in load_config().targets}


def test_bad_config_is_one_import_error_and_no_dags(tmp_path, monkeypatch):
    bad = tmp_path / "dbops.yaml"
    bad.write_text("ops_conn_id: dbops_state\nstorage: {}\ntargets:\n  appdb: {conn_id: pg_appdb, colour: blue}\n")
    monkeypatch.setenv("DBOPS_CONFIG", str(bad))
    bag = load_dagbag()
    assert bag.dags == {}
    errors = "\n".join(bag.import_errors.values())
    assert f"{bad}: target 'appdb': key 'colour': unknown key" in errors


HEAVY_TASKS = {"dump_and_store", "verify_restore", "restore", "export"}


def test_heavy_tasks_share_their_targets_pool(dagbag):
    from dbops.core.config import pool_name

    heavy = [(dag, task) for dag in dagbag.dags.values() for task in dag.tasks if task.task_id in HEAVY_TASKS]
    assert heavy
    for dag, task in heavy:
        target = dag.dag_id.split("__", 1)[1]
        assert task.pool == pool_name(target), f"{dag.dag_id}.{task.task_id} is in pool {task.pool}"


def test_committed_pools_file_matches_the_config():
    import json

    from dbops.core.config import load_config
    from scripts.stack.paths import POOLS_FILE

    assert json.loads(POOLS_FILE.read_text()) == load_config().pools(), (
        "include/config/pools.json is stale: run `python scripts/devstack.py pools` and commit it")


def test_alert_runs_never_overlap_and_time_out_before_the_next(dagbag):
    check_alert_dags(dagbag)


def check_alert_dags(dagbag):
    from dbops.core.config import load_config

    for name, target in load_config().targets.items():
        if target.alerts:
            group = target.alerts.group
            dag = dagbag.dags[f"db_alerts_group__{group}" if group else f"db_alerts__{name}"]
            assert dag.max_active_runs == 1 and dag.dagrun_timeout.total_seconds() < 300
            assert dag.schedule == target.alerts.schedule


def test_grouped_alert_targets_get_one_dag_per_group_with_every_check(tmp_path, monkeypatch):
    """alerts.group: the group's DAG replaces its targets' db_alerts__<target>, with the defaults every DAG has."""
    from dbops.core.config import DEFAULT_CONFIG_PATH, alert_groups, load_config

    grouped = tmp_path / "dbops.yaml"
    grouped.write_text(DEFAULT_CONFIG_PATH.read_text().replace("    alerts:\n", "    alerts:\n      group: fleet\n"))
    monkeypatch.setenv("DBOPS_CONFIG", str(grouped))
    members = alert_groups(load_config())["fleet"]
    assert len(members) >= 2
    bag = load_dagbag()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == set(expected_schedules())
    assert not [dag_id for dag_id in bag.dag_ids if dag_id.startswith("db_alerts__")]
    dag = bag.dags["db_alerts_group__fleet"]
    check_operational_defaults(dag.dag_id, dag)
    check_alert_dags(bag)
    assert {t.task_id for t in dag.tasks} == {"evaluate", "deliver", "any_task_failed"}
    assert dag.task_dict["evaluate"].targets == members and set(members) <= set(dag.tags)
    assert dag.doc_md != bag.dags["db_alert_silence"].doc_md and all(m in dag.doc_md for m in members)


def test_every_dag_has_its_own_runbook(dagbag):
    """The on-demand DAGs do not show the nightly backup's text: each family has its own runbook."""
    families = {dag_id.split("__")[0]: dag.doc_md for dag_id, dag in dagbag.dags.items()}
    assert len(set(families.values())) == len(families), "two DAG families share one doc_md"
    assert "confirm_database" in families["pg_restore"] and "backup_id" in families["pg_verify_backup"]
