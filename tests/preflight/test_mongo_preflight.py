"""dbops_preflight on MongoDB targets against the local MongoDB-compatible server: a dead server is
retried, a wrong password fails at once without showing it, a standalone server is a warning."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.operators.preflight import PreflightOperator, _mongo_version
from scripts.stack.mongo import mongo_client, mongo_conn, start_mongo
from scripts.stack.paths import MONGO_PORT
from scripts.stack.postgres import TEST_DATABASES, libpq_conninfo
from tests.preflight.test_preflight import closed_port

CHECKS = ["connectivity", "server_version", "replica_set", "oplog", "backup_store", "ops_migrations"]
WRONG_PASSWORD = "Wr0ng-pr3flight-secret"


@pytest.fixture
def mongo_target(monkeypatch, tmp_path, pg_server):
    """Configure a MongoDB target on ``port`` (with ``password``); return a runner of its preflight."""
    start_mongo()

    def configure(port: int = MONGO_PORT, password: str | None = None) -> PreflightOperator:
        name = f"mg_{uuid.uuid4().hex[:10]}"
        conn = json.loads(mongo_conn("preflight_db", port, password))
        conn["extra"]["serverSelectionTimeoutMS"] = 1000
        monkeypatch.setenv(f"AIRFLOW_CONN_MONGO_{name.upper()}", json.dumps(conn))
        config = tmp_path / "dbops.yaml"
        config.write_text(f"""
ops_conn_id: dbops_state
staging_dir: {tmp_path / 'staging'}
storage:
  local: {{url: {tmp_path / 'store'}}}
targets:
  {name}:
    engine: mongodb
    conn_id: mongo_{name}
    backup: {{storage: local}}
""")
        monkeypatch.setenv("DBOPS_CONFIG", str(config))
        return PreflightOperator(task_id=f"check__{name}", target=name)

    return configure


def recorded(run_id: str) -> dict[str, tuple[bool, str]]:
    with psycopg.connect(libpq_conninfo(TEST_DATABASES["dbops"])) as conn:
        rows = conn.execute("SELECT check_name, ok, detail FROM dbops.preflight_results WHERE run_id = %s",
                            (run_id,)).fetchall()
    return {check: (ok, detail) for check, ok, detail in rows}


def verdict_lines(output: str) -> list[str]:
    lines = [line.split("]", 1)[1].strip() for line in output.splitlines() if "PreflightOperator" in line]
    return lines[-len(CHECKS) - 1:]


def test_server_down_is_retried_and_skips_the_server_checks(mongo_target, capsys):
    operator = mongo_target(port=closed_port())
    with pytest.raises(AirflowException) as info:
        operator.execute({"run_id": "mongo-down"})
    assert not isinstance(info.value, AirflowFailException), "connection refused must be retried"
    tail = verdict_lines(capsys.readouterr().out)
    assert [line.split()[0] for line in tail[:-1]] == ["FAIL", "SKIP", "SKIP", "SKIP", "PASS", "PASS"]
    assert [line.split()[1].rstrip(":") for line in tail[:-1]] == CHECKS
    assert f"preflight {operator.target}: 5 of 6 checks passed or skipped, 1 failed" in tail[-1]
    results = recorded("mongo-down")
    assert results["connectivity"][0] is False
    assert results["backup_store"][0] is True and results["ops_migrations"][0] is True


def test_wrong_password_fails_at_once_and_never_shows_it(mongo_target, capsys, caplog):
    operator = mongo_target(password=WRONG_PASSWORD)
    with pytest.raises(AirflowFailException, match=r"FAIL connectivity: authentication as 'dbops' failed: fix the "
                                                   r"login and password of Airflow connection mongo_mg_"):
        operator.execute({"run_id": "mongo-wrong-password"})
    output = capsys.readouterr()
    results = recorded("mongo-wrong-password")
    assert results["connectivity"][0] is False
    for text in (output.out, output.err, caplog.text, *(detail for _, detail in results.values())):
        assert WRONG_PASSWORD not in text


def test_standalone_server_is_a_warning_not_a_failure(mongo_target, standalone_mongo, capsys):
    operator = mongo_target(port=standalone_mongo.port)
    verdicts = operator.execute({"run_id": "mongo-standalone"})
    assert verdicts == {"connectivity": "PASS", "server_version": "PASS", "replica_set": "WARN", "oplog": "SKIP",
                        "backup_store": "PASS", "ops_migrations": "PASS"}
    tail = verdict_lines(capsys.readouterr().out)
    assert "6 of 6 checks passed or skipped, 0 failed, 1 with a warning" in tail[-1]
    ok, detail = recorded("mongo-standalone")["replica_set"]
    assert ok is True
    assert detail.startswith("WARN replica_set: standalone server") and "NOT point-in-time consistent" in detail


def test_replica_set_passes_every_check(mongo_target):
    operator = mongo_target()
    assert set(operator.execute({"run_id": "mongo-replica-set"}).values()) == {"PASS"}
    results = recorded("mongo-replica-set")
    assert results["replica_set"][1].startswith("PASS replica_set: replica set ")
    assert "local.oplog.rs readable" in results["oplog"][1]


def test_server_version_below_the_minimum_is_refused(mongo_target):
    """The local server's real buildInfo passes; an older version (a buildInfo reply written here) fails."""
    mongo_target()
    with mongo_client() as client:
        assert _mongo_version(client.admin.command("buildInfo")).startswith("MongoDB ")
    with pytest.raises(ValueError, match=r"MongoDB 4\.4\.1 is older than the supported minimum 4\.4\.2"):
        _mongo_version({"version": "4.4.1", "versionArray": [4, 4, 1, 0]})
