"""db_alerts_group__<group> on real parts: 50 targets in one group, evaluated as each one's own DAG would be.

The targets share the real database of the ``alerting`` fixture (test_alert_dags), each with its own Airflow
connection; one has a broken rule pack, one a connection to a port nothing listens on (a dead server). One more
target, alone, runs the per-target operators on the same inputs: each group member must match it.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import psycopg
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from psycopg import sql

from scripts.stack.paths import PG_PORT, ROOT
from scripts.stack.postgres import TEST_DATABASES, conn_uri
from tests.alerting.test_alert_dags import KNOB_RULE, OPS_TABLES, alerting, context, events, ops, set_knob, state  # noqa: F401
from tests.conftest import free_port

SIZE = 50


@pytest.fixture
def fleet(alerting, tmp_path, monkeypatch):
    """The solo target (per-target DAG) and a group of ``SIZE`` targets: ``good`` ones, ``broken`` and ``dead``."""
    solo = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    config = json.loads((tmp_path / "dbops.yaml").read_text())
    policy = config["targets"][solo.name]["alerts"]
    names = [f"{solo.name}_{i:02d}" for i in range(SIZE)]
    good, broken, dead = names[:-2], names[-2], names[-1]
    group = f"{solo.name}_grp"
    (tmp_path / "broken.yaml").write_text("queries: queries\nrules:\n  - {name: knob_odd, severity: warning, "
                                          "query: knob, op: '=>', threshold: 1, summary: s, runbook: r}\n")
    for name in names:
        uri = conn_uri(solo.database)
        monkeypatch.setenv(f"AIRFLOW_CONN_PG_{name.upper()}",
                           uri.replace(f":{PG_PORT}/", f":{free_port()}/") if name == dead else uri)
        rules = [str(tmp_path / "broken.yaml")] if name == broken else policy["rules"]
        config["targets"][name] = {"conn_id": f"pg_{name}", "alerts": {**policy, "rules": rules, "group": group}}
    (tmp_path / "dbops.yaml").write_text(json.dumps(config))
    dag = DagBag(dag_folder=str(ROOT / "dags" / "db_alerts.py")).dags[f"db_alerts_group__{group}"]
    yield SimpleNamespace(solo=solo, good=good, broken=broken, dead=dead, dag=dag, names=names)
    with ops() as conn:
        for table in OPS_TABLES:
            conn.execute(sql.SQL("DELETE FROM dbops.{} WHERE target = ANY(%s)").format(sql.Identifier(table)), (names,))
        conn.execute("DELETE FROM dbops.failure_notifications WHERE dag_id = %s", (dag.dag_id,))


def group_cycle(fleet, run_id: str) -> str:
    """One run of the group's DAG tasks; returns evaluate's failure message."""
    ctx = context(run_id)
    with pytest.raises(AirflowFailException) as failed:
        fleet.dag.task_dict["evaluate"].execute(ctx)
    fleet.dag.task_dict["deliver"].execute(ctx)
    return str(failed.value)


def member(name: str) -> SimpleNamespace:
    """A group member as the helpers of test_alert_dags read it (by name)."""
    return SimpleNamespace(name=name)


def test_a_group_evaluates_each_target_apart_as_its_own_dag_would(fleet, capsys):
    solo = fleet.solo
    set_knob(solo, 20)
    solo.cycle()
    failure = group_cycle(fleet, "group_1")
    assert re.match(rf"alerts failed for 1 of {SIZE} targets of alert group {solo.name}_grp \(the others are done\): "
                    rf"{fleet.broken}: alert rules of {fleet.broken} are invalid, .*unknown operator '=>'", failure)
    log = capsys.readouterr().out
    for name in fleet.good:
        assert state(member(name)) == state(solo) == {("knob_high", '{"knob": "load"}'): "firing"}
        assert f"alerts {name}: 1 firing (knob_high{{knob=load}})" in log, "one line per target with its verdict"
    assert f"alerts of {fleet.broken}: FAILED: alert rules of {fleet.broken} are invalid" in log
    assert state(member(fleet.dead)) == {("TargetDown", "{}"): "firing"}, "the dead server is down, not failed"
    assert state(member(fleet.broken)) == {}

    set_knob(solo, 0)
    solo.cycle()
    assert group_cycle(fleet, "group_2") == failure
    for name in fleet.good:
        assert events(member(name)) == events(solo) == [("firing", "knob_high"), ("resolved", "knob_high")]
    assert events(member(fleet.dead)) == [("firing", "TargetDown")]

    subjects = [m["Subject"] for m in solo.mails]
    for name in [solo.name, *fleet.good]:
        assert [s for s in subjects if s.startswith(f"[dbops] {name}:")] == \
            [f"[dbops] {name}: 1 firing", f"[dbops] {name}: 1 resolved"], "the same notifications as alone"
    assert f"[dbops] {fleet.dead}: 1 firing" in subjects
    failed = [m for m in solo.mails if m["Subject"] == f"{fleet.dag.dag_id} failed: evaluate[{fleet.broken}]"]
    assert len(failed) == 1, "the broken target's people are told once per incident"
    assert f"alert rules of {fleet.broken} are invalid" in failed[0].get_body(preferencelist=("html",)).get_content()
    assert len(solo.posts) == 2 * (len(fleet.good) + 1) + 2, "Slack: every firing and resolved, TargetDown, the failure"


def test_the_group_dags_run_fails_after_delivering_and_tells_the_broken_targets_people(fleet):
    assert len(fleet.dag.description) < 120 and fleet.dag.description.startswith(f"BROKEN (1 of {SIZE}): "), \
        "one line in the DAG list, however large the group"
    set_knob(fleet.solo, 20)
    run = fleet.dag.test()
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "evaluate": "failed", "deliver": "success", "any_task_failed": "failed"}
    assert run.state == "failed", "deliver ran after the failure; the run must still show failed"
    assert state(member(fleet.good[0])) == {("knob_high", '{"knob": "load"}'): "firing"}
    subjects = [m["Subject"] for m in fleet.solo.mails]
    assert f"{fleet.dag.dag_id} failed: evaluate[{fleet.broken}]" in subjects
    assert all(f"[dbops] {name}: 1 firing" in subjects for name in fleet.good), "delivered in the same run"


def test_ops_database_down_fails_the_group_task_as_transient_and_tells_people_on_its_last_try(fleet, monkeypatch):
    """Every target fails (retried, as db_alerts__<target>); each one's people hear of it once the retry failed too."""
    running = conn_uri(TEST_DATABASES["dbops"])
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_STATE", running.replace(f":{PG_PORT}/", f":{free_port()}/"))
    evaluate = fleet.dag.task_dict["evaluate"]
    for try_number, told in ((1, 0), (evaluate.retries + 1, SIZE)):
        ctx = {**context(f"ops_down_{try_number}"), "ti": SimpleNamespace(try_number=try_number)}  # FAKE: try only
        with pytest.raises(AirflowException, match=rf"alerts failed for {SIZE} of {SIZE} targets .*"
                                                   rf"{fleet.good[0]}: .*ops database \(alert state\)") as failed:
            evaluate.execute(ctx)
        assert not isinstance(failed.value, AirflowFailException), "transient: retried"
        failures = [m for m in fleet.solo.mails if m["Subject"].startswith(f"{fleet.dag.dag_id} failed: evaluate[")]
        assert len(failures) == told
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_STATE", running)
    assert all(state(member(name)) == {} for name in fleet.names), "nothing was half-recorded"
