"""Rule evaluation on the real PostgreSQL: read-only, time-boxed, errors isolated, rows as labelled alerts."""

from __future__ import annotations

import psycopg
import pytest

from dbops.alerting.evaluate import evaluate
from dbops.alerting.rules import Rule
from scripts import devstack


def rule(queries, name: str, op: str = ">", threshold: float = 0) -> Rule:
    return Rule(name=name, severity="warning", query=name, op=op, threshold=threshold, summary="s", runbook="r",
                queries_dir=str(queries))


@pytest.fixture
def database(scratch_db):
    name = scratch_db()
    with psycopg.connect(devstack.libpq_conninfo(name)) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, name text); "
                     "INSERT INTO users SELECT g, 'u' || g FROM generate_series(1, 10) g")
    return name


@pytest.fixture
def queries(tmp_path):
    (tmp_path / "good.sql").write_text("SELECT count(*) AS value FROM users")
    (tmp_path / "writes.sql").write_text("DELETE FROM users RETURNING id AS value")
    (tmp_path / "broken.sql").write_text("SELECT value FROM no_such_table")
    (tmp_path / "sleeps.sql").write_text("SELECT 1 AS value FROM pg_sleep(5)")
    (tmp_path / "per_row.sql").write_text(
        "SELECT name AS user_name, id AS value FROM users WHERE id > 8 ORDER BY id")
    (tmp_path / "no_value.sql").write_text("SELECT 1 AS something")
    return tmp_path


def test_errors_and_timeouts_are_isolated_and_writes_are_refused(database, queries):
    rules = [rule(queries, name) for name in ("writes", "broken", "sleeps", "no_value")] + [rule(queries, "good", ">", 5)]
    with psycopg.connect(devstack.libpq_conninfo(database)) as conn:
        result = evaluate(conn, rules, statement_timeout_ms=300)
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 10
    by_rule = {e.rule: e for e in result.errors}
    assert by_rule["writes"].kind == "error" and "read-only transaction" in by_rule["writes"].message
    assert by_rule["broken"].kind == "error" and "no_such_table" in by_rule["broken"].message
    assert by_rule["sleeps"].kind == "timeout"
    assert "no 'value' column" in by_rule["no_value"].message
    assert [(s.rule, s.value, s.breaching) for s in result.samples] == [("good", 10.0, True)]


def test_each_row_is_an_alert_with_its_labels(database, queries):
    with psycopg.connect(devstack.libpq_conninfo(database)) as conn:
        result = evaluate(conn, [rule(queries, "per_row", ">=", 10)])
    assert result.errors == []
    assert [(s.labels, s.value, s.breaching) for s in result.samples] == [
        ({"user_name": "u9"}, 9.0, False), ({"user_name": "u10"}, 10.0, True)]
