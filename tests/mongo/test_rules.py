"""Alerts of MongoDB targets: the mongodb_default pack's server-command rules through db_alerts' operator,
against the local MongoDB-compatible server (a replica set, and a standalone server of the module's own)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from dbops.alerting.rules import load_pack, rules_for
from dbops.core.config import load_config
from dbops.core.schema import ConfigError
from dbops.mongo.rules import evaluate_commands, metrics_of
from dbops.operators.alerting import AlertEvaluationOperator
from scripts.stack.mongo import mongo_client
from tests.alerting.test_alert_dags import context
from tests.conftest import free_port
from tests.mongo.conftest import make_target, ops

ALERTS = """    alerts: {rules: [mongodb_default], notify: [log], thresholds: {connections_over_100: 2}}
"""
REPLICA_SET_RULES = {"no_primary", "member_state_unhealthy", "replication_lag_over_30s", "oplog_window_under_24h"}


def evaluate(name: str, run_id: str) -> dict:
    return AlertEvaluationOperator(task_id="evaluate", target=name).execute(context(run_id))


def firing(name: str, status: str = "firing") -> dict[str, str]:
    rows = ops().get_records("SELECT rule, summary FROM dbops.alert_state WHERE target = %s AND status = %s",
                             parameters=(name, status))
    return dict(rows)


def test_a_server_that_does_not_answer_fires_target_down(monkeypatch, tmp_path, stack_mongo, pg_server):
    """Guarantee: an unreachable MongoDB target is an alert (TargetDown), not a failed or green task."""
    facts = make_target(monkeypatch, tmp_path, free_port(), sections=ALERTS)
    result = evaluate(facts.name, "down")
    assert result["target_up"] is False
    assert "TargetDown" in firing(facts.name)


def test_a_wrong_password_is_target_down_and_never_in_the_summary(monkeypatch, tmp_path, stack_mongo, pg_server):
    """Guarantee: a refused login is reported as the target down, with the server's message, never the password."""
    from scripts.stack.paths import MONGO_PORT

    facts = make_target(monkeypatch, tmp_path, MONGO_PORT, password="N0t-the-pa55word", sections=ALERTS)
    assert evaluate(facts.name, "badpw")["target_up"] is False
    summary = firing(facts.name)["TargetDown"]
    assert "uthentication failed" in summary and "N0t-the-pa55word" not in summary


def test_replica_set_rules_run_and_record_samples_and_connections_fire(monkeypatch, tmp_path, stack_mongo, pg_server):
    """Guarantee: every server-command rule is evaluated on a replica set (no errors, none skipped), its
    values recorded as metric samples; a breached threshold alerts (connections over a threshold of 2:
    pending, as the rule wants it for 5 minutes before firing)."""
    from scripts.stack.paths import MONGO_PORT

    facts = make_target(monkeypatch, tmp_path, MONGO_PORT, sections=ALERTS)
    facts.client[facts.database].c.insert_one({"x": 1})
    extra = [mongo_client() for _ in range(3)]
    try:
        for client in extra:
            client.admin.command("ping")
        result = evaluate(facts.name, "rs")
    finally:
        for client in extra:
            client.close()
        facts.client.drop_database(facts.database)
    assert result["target_up"] is True and result["errors"] == 0 and result["skipped"] == 0
    assert "connections_over_100" in firing(facts.name, "pending")  # threshold overridden to 2 for this target
    metrics = {row[0] for row in ops().get_records("SELECT metric FROM dbops.metric_samples WHERE target = %s",
                                                   parameters=(facts.name,))}
    assert {"serverStatus.connections.current", "hello.primary", "replSetGetStatus.stateStr", "oplogWindow.seconds",
            "dbStats.storageSize", "collStats.count", "collStats.size", "collStats.nindexes"} <= metrics


def test_replica_set_rules_skip_a_standalone_server(monkeypatch, tmp_path, standalone_mongo, pg_server):
    """Guarantee: on a standalone server the replica-set rules are skipped (said once), the others run."""
    facts = make_target(monkeypatch, tmp_path, standalone_mongo.port, sections=ALERTS)
    with mongo_client(port=standalone_mongo.port) as client:
        on_target = [r for r in rules_for(load_config(), facts.name) if r.database == "target"]
        evaluation = evaluate_commands(client, facts.database, on_target)
    assert set(evaluation.skipped) == REPLICA_SET_RULES
    assert evaluation.errors == []
    assert {s.rule for s in evaluation.samples} >= {"connections_over_100", "database_storage_over_100gb"}


def test_standalone_backup_says_it_is_not_point_in_time_consistent(monkeypatch, tmp_path, standalone_mongo, pg_server):
    """Guarantee: a standalone server's backup (no oplog, no snapshot transactions) is marked and logged as
    not point-in-time consistent, has no oplog.bson, and still verifies."""
    from dbops.backup.lookup import load_manifest
    from dbops.operators.mongo import MongoBackupOperator, MongoVerifyBackupOperator
    from tests.backup.conftest import context as task_context
    from tests.mongo.conftest import fill, store

    facts = make_target(monkeypatch, tmp_path, standalone_mongo.port)
    fill(facts.client[facts.database], documents=50)
    made = MongoBackupOperator(task_id="dump", target=facts.name).execute(task_context())
    manifest = load_manifest(ops(), store(), facts.name, made["backup_id"])
    assert made["consistency"] == manifest.extra["consistency"] == "none" and manifest.extra["oplog"] is None
    assert not any(f.name.startswith("oplog") for f in manifest.files)
    assert MongoVerifyBackupOperator(task_id="verify", target=facts.name, backup_id="latest").execute(
        task_context(run_id="v"))["verified"] is True


def test_metrics_of_takes_values_by_path_per_element_with_labels():
    """Pure: how a rule's source reads a reply (no server)."""
    rules = {r.name: r for r in load_pack("mongodb_default")}
    now = datetime(2026, 12, 1, tzinfo=timezone.utc).timestamp()
    status = {"members": [{"name": "a", "stateStr": "PRIMARY", "optimeDate": datetime.fromtimestamp(now, timezone.utc)},
                          {"name": "b", "stateStr": "RECOVERING",
                           "optimeDate": datetime.fromtimestamp(now - 45, timezone.utc)},
                          {"name": "c", "stateStr": "ARBITER"}]}
    lag = {m.labels["member"]: m.value for m in metrics_of(rules["replication_lag_over_30s"], status)}
    assert lag == {"a": 0.0, "b": 45.0}  # the arbiter has no optime: no sample
    states = {m.labels["member"]: m.value for m in metrics_of(rules["member_state_unhealthy"], status)}
    assert states == {"a": 0.0, "b": 1.0, "c": 0.0}
    (pct,) = metrics_of(rules["connections_over_80pct_available"], {"connections": {"current": 90, "available": 10}})
    assert pct.value == 90.0
    (no_primary,) = metrics_of(rules["no_primary"], {"setName": "rs0"})
    assert no_primary.value == 0.0 and rules["no_primary"].breached(no_primary.value)


def test_a_postgres_target_cannot_use_the_mongodb_pack(tmp_path):
    config = tmp_path / "dbops.yaml"
    config.write_text("""
ops_conn_id: dbops_state
storage: {local: {url: var/backups}}
targets:
  pg:
    conn_id: pg_x
    alerts: {rules: [mongodb_default]}
""")
    with pytest.raises(ConfigError, match="rule 'connections_over_100' is for MongoDB targets; this target's engine is "
                                          "postgres"):
        rules_for(load_config(config), "pg")


BAD_EACH_PACK = """rules:
  - name: uptime_each_not_a_list
    severity: warning
    source: {command: serverStatus, each: uptime, value: current}
    op: ">"
    threshold: 0
    summary: "{value}"
    runbook: "none"
"""


def test_a_rule_whose_each_is_not_a_list_fails_alone_and_the_others_still_alert(monkeypatch, tmp_path, stack_mongo,
                                                                                  pg_server):
    """Guarantee: a rule whose ``each`` path is not a list in the reply (serverStatus's shape is not known to the
    config check) is a RuleEvaluationFailed naming that rule; TargetDown and the other rules are still evaluated
    (the breached connections rule alerts), as for a failing PostgreSQL rule."""
    from scripts.stack.paths import MONGO_PORT

    pack = tmp_path / "bad_each.yaml"
    pack.write_text(BAD_EACH_PACK)
    facts = make_target(monkeypatch, tmp_path, MONGO_PORT, sections=f"""\
    alerts: {{rules: [mongodb_default, {pack}], notify: [log], thresholds: {{connections_over_100: 0}}}}
""")
    result = evaluate(facts.name, "bad_each")
    assert result["target_up"] is True and result["errors"] == 1
    pending = firing(facts.name, "pending")
    assert "connections_over_100" in pending
    assert "uptime_each_not_a_list" in pending["RuleEvaluationFailed"]
    assert "not a list" in pending["RuleEvaluationFailed"]


def test_an_unknown_source_command_fails_its_rule_only(stack_mongo):
    """Guarantee: a source command the evaluation does not know (a rule built past the config check) is an
    evaluation error of its rules, never read as another command's reply; the other rules are evaluated."""
    from dataclasses import replace

    rules = {r.name: r for r in load_pack("mongodb_default")}
    good = rules["connections_over_100"]
    bogus = replace(good, name="bogus_command", source=replace(good.source, command="bogusStatus"))
    with mongo_client() as client:
        evaluation = evaluate_commands(client, "admin", [good, bogus])
    assert [(e.rule, "unknown source command 'bogusStatus'" in e.message) for e in evaluation.errors] == [
        ("bogus_command", True)]
    assert {s.rule for s in evaluation.samples} == {"connections_over_100"}


@pytest.mark.parametrize("source, says", [
    ("{command: dbStats, each: collections, value: size}", "its lists: none"),
    ("{command: replSetGetStatus, each: members.0, value: stateStr}", "its lists: members"),
])
def test_the_config_check_rejects_an_each_that_cannot_be_a_list(tmp_path, source, says):
    pack = tmp_path / "pack.yaml"
    pack.write_text(f"""rules:
  - name: r
    severity: warning
    source: {source}
    op: ">"
    threshold: 0
    summary: "{{value}}"
    runbook: "none"
""")
    with pytest.raises(ConfigError, match=f"rule 'r': source.each .* is not a list in the reply .*{says}"):
        load_pack(str(pack))
