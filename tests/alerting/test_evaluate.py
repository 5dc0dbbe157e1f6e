"""Rule evaluation on the real PostgreSQL: read-only, time-boxed, errors isolated, rows as labelled alerts."""

from __future__ import annotations

import psycopg
import pytest

from dbops.alerting.evaluate import evaluate
from dbops.alerting.rules import Rule
from scripts.stack.postgres import libpq_conninfo


VALUES = {"numeric": "2.5::numeric", "bigint": "7::bigint", "real": "0.5::real", "boolean": "true",
          "interval": "interval '1 minute 30 seconds'"}


def rule(queries, name: str, op: str = ">", threshold: float = 0) -> Rule:
    return Rule(name=name, severity="warning", query=name, op=op, threshold=threshold, summary="s", runbook="r",
                queries_dir=str(queries))


@pytest.fixture
def database(scratch_db):
    name = scratch_db()
    with psycopg.connect(libpq_conninfo(name)) as conn:
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
    (tmp_path / "text.sql").write_text("SELECT 'high'::text AS value")
    (tmp_path / "numeric_text.sql").write_text("SELECT '42'::text AS value")
    (tmp_path / "timestamp.sql").write_text("SELECT now() AS value")
    (tmp_path / "two_values.sql").write_text("SELECT count(*) AS value, max(id) AS value FROM users")
    (tmp_path / "two_labels.sql").write_text("SELECT name, name, id AS value FROM users")
    for name, value in VALUES.items():
        (tmp_path / f"{name}.sql").write_text(f"SELECT {value} AS value")
    return tmp_path


def test_errors_and_timeouts_are_isolated_and_writes_are_refused(database, queries):
    rules = [rule(queries, name) for name in ("writes", "broken", "sleeps", "no_value")] + [rule(queries, "good", ">", 5)]
    with psycopg.connect(libpq_conninfo(database)) as conn:
        result = evaluate(conn, rules, statement_timeout_ms=300)
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 10
    by_rule = {e.rule: e for e in result.errors}
    assert by_rule["writes"].kind == "error" and "read-only transaction" in by_rule["writes"].message
    assert by_rule["broken"].kind == "error" and "no_such_table" in by_rule["broken"].message
    assert by_rule["sleeps"].kind == "timeout"
    assert "no 'value' column" in by_rule["no_value"].message
    assert [(s.rule, s.value, s.breaching) for s in result.samples] == [("good", 10.0, True)]


def test_each_row_is_an_alert_with_its_labels(database, queries):
    with psycopg.connect(libpq_conninfo(database)) as conn:
        result = evaluate(conn, [rule(queries, "per_row", ">=", 10)])
    assert result.errors == []
    assert [(s.labels, s.value, s.breaching) for s in result.samples] == [
        ({"user_name": "u9"}, 9.0, False), ({"user_name": "u10"}, 10.0, True)]


def test_a_value_that_is_no_number_fails_its_rule_only(database, queries):
    """Text, a timestamp or two columns of one name are errors of that rule, naming the type; the others run."""
    bad = ["text", "numeric_text", "timestamp", "two_values", "two_labels"]
    with psycopg.connect(libpq_conninfo(database)) as conn:
        result = evaluate(conn, [rule(queries, name) for name in bad] + [rule(queries, "good", ">", 5)])
    messages = {e.rule: e.message for e in result.errors}
    assert messages == {
        "text": "query text: column 'value' is of type text: return a number, a boolean or an interval "
                "(e.g. cast it: value::numeric)",
        "numeric_text": "query numeric_text: column 'value' is of type text: return a number, a boolean or an "
                        "interval (e.g. cast it: value::numeric)",
        "timestamp": "query timestamp: column 'value' is of type timestamptz: return a number, a boolean or an "
                     "interval (e.g. cast it: value::numeric)",
        "two_values": "query two_values: returns more than one column named 'value' (columns: value, value); "
                      "give each column its own name",
        "two_labels": "query two_labels: returns more than one column named 'name' (columns: name, name, value); "
                      "give each column its own name",
    }
    assert [(s.rule, s.value, s.breaching) for s in result.samples] == [("good", 10.0, True)]
    assert [m.name for m in result.metrics] == ["good"], "nothing of a failed query is kept as a sample"


def test_numbers_booleans_and_intervals_are_values(database, queries):
    """Any numeric type, a boolean as 0/1 and an interval in seconds."""
    with psycopg.connect(libpq_conninfo(database)) as conn:
        result = evaluate(conn, [rule(queries, name) for name in VALUES])
    assert result.errors == []
    assert {s.rule: s.value for s in result.samples} == {"numeric": 2.5, "bigint": 7.0, "real": 0.5, "boolean": 1.0,
                                                         "interval": 90.0}
