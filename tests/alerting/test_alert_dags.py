"""db_alerts end to end on real parts: a target database, the ops database, aiosmtpd and a webhook receiver.

Each test gets its own target and its own rule pack, whose queries read a ``knobs`` table the test
sets, so a breach is a real value from a real query. The operators run as the task runner runs them,
``execute(context)``; the context is a FAKE minimal stand-in holding only ``run_id`` and ``dag_run``
(the task runner's own DagRun model). Slack cannot run here: the local HTTP receiver of conftest
stands in for its incoming webhook.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from itertools import count
from types import SimpleNamespace

import psycopg
import pytest
from airflow.sdk.api.datamodels._generated import DagRun
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from psycopg import sql

from dbops.core.locks import job_lock
from dbops.operators.alerting import AlertDeliveryOperator, AlertEvaluationOperator
from scripts.stack.paths import PG_PORT, ROOT
from scripts.stack.postgres import TEST_DATABASES, conn_uri, libpq_conninfo
from tests.conftest import WebhookReceiver, _WebhookHandler, free_port, smtp_connection

QUERIES = {
    "knob": "SELECT name AS knob, value FROM knobs",
    "counter": "SELECT value FROM counters",
    "writes": "DELETE FROM knobs RETURNING value",
    "broken": "SELECT value FROM no_such_table",
    "sleeps": "SELECT 1 AS value FROM pg_sleep(5)",
    "text_value": "SELECT 'high'::text AS value",
    "interval_value": "SELECT make_interval(secs => value) AS value FROM knobs",
    "two_values": "SELECT value, value * 2 AS value FROM knobs",
}
KNOB_RULE = """
  - name: knob_high
    severity: critical
    query: knob
    op: ">"
    threshold: 10
    for: {for_}
    repeat: {repeat}
    summary: "knob {{knob}} at {{value}}"
    runbook: "turn the knob down"
"""
OPS_TABLES = ("alert_state", "alert_events", "metric_samples", "alert_notifications", "alert_silences")


@pytest.fixture
def alerting(scratch_db, tmp_path, monkeypatch, pg_server, smtp_server, webhook_server, mailbox):
    """``configure(rules_yaml, **alerts)`` makes a target with that pack; returns the target's handle."""
    database = scratch_db()
    name = f"al_{database[-12:]}"
    with psycopg.connect(libpq_conninfo(database)) as conn:
        conn.execute("CREATE TABLE knobs (name text PRIMARY KEY, value float); INSERT INTO knobs VALUES ('load', 0);"
                     "CREATE TABLE counters (value bigint); INSERT INTO counters VALUES (0)")
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{name.upper()}", conn_uri(database))
    smtp_connection(monkeypatch, "smtp_alerts", smtp_server.port)
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": f"{webhook_server.base_url}/services/T0/B0/alerts"}))
    webhook_server.posts.clear()
    (tmp_path / "queries").mkdir()
    for query, text in QUERIES.items():
        (tmp_path / "queries" / f"{query}.sql").write_text(text)
    runs = count(1)

    def configure(rules: str, **alerts) -> SimpleNamespace:
        (tmp_path / "pack.yaml").write_text(f"queries: queries\nrules:{rules}")
        policy = {"rules": [str(tmp_path / "pack.yaml")], "notify": ["log", "email", "slack", "pg_notify"],
                  "statement_timeout": "500ms", **alerts}
        (tmp_path / "dbops.yaml").write_text(json.dumps({
            "ops_conn_id": "dbops_state",
            "storage": {"local": {"url": str(tmp_path / "store")}},
            "notifications": {"email": {"to": ["oncall@example.com"], "from_email": "dbops@example.com",
                                        "smtp_conn_id": "smtp_alerts"},
                              "slack": {"slack_webhook_conn_id": "slack_alerts"}, "pg_notify_channel": name},
            "targets": {name: {"conn_id": f"pg_{name}", "alerts": policy}},
        }))
        monkeypatch.setenv("DBOPS_CONFIG", str(tmp_path / "dbops.yaml"))
        return handle

    def cycle() -> dict:
        ctx = context(f"test_run_{next(runs)}")
        result = AlertEvaluationOperator(task_id="evaluate", target=name).execute(ctx)
        result["delivery"] = AlertDeliveryOperator(task_id="deliver", target=name).execute(ctx)
        return result

    def target_sql(statement: str) -> list:
        with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
            cur = conn.execute(statement)
            return cur.fetchall() if cur.description else []

    handle = SimpleNamespace(name=name, database=database, configure=configure, cycle=cycle, target_sql=target_sql,
                             mails=mailbox.messages, posts=webhook_server.posts)
    yield handle
    with ops() as conn:
        for table in OPS_TABLES:
            conn.execute(sql.SQL("DELETE FROM dbops.{} WHERE target = %s").format(sql.Identifier(table)), (name,))


def context(run_id: str, run_type: str = "scheduled", age: timedelta = timedelta(0)) -> dict:
    """A FAKE minimal task context: the run id and a ``dag_run`` of ``run_type`` for a time ``age`` ago."""
    at = datetime.now(timezone.utc) - age
    run = DagRun(dag_id="db_alerts__test", run_id=run_id, logical_date=at, data_interval_start=at,
                 data_interval_end=at, run_after=at, start_date=datetime.now(timezone.utc), end_date=None,
                 run_type=run_type, state="running", consumed_asset_events=[], partition_key=None)
    return {"run_id": run_id, "dag_run": run}


def ops() -> psycopg.Connection:
    return psycopg.connect(libpq_conninfo(TEST_DATABASES["dbops"]), autocommit=True)


def set_knob(handle, value: float) -> None:
    handle.target_sql(f"UPDATE knobs SET value = {float(value)}")


def state(handle) -> dict[tuple[str, str], str]:
    """{(rule, labels as JSON): status} of the target's stored alerts."""
    with ops() as conn:
        rows = conn.execute("SELECT rule, labels::text, status FROM dbops.alert_state WHERE target = %s",
                            (handle.name,)).fetchall()
    return {(rule, labels): status for rule, labels, status in rows}


def sample_count(handle) -> int:
    with ops() as conn:
        return conn.execute("SELECT count(*) FROM dbops.metric_samples WHERE target = %s", (handle.name,)).fetchone()[0]


def events(handle) -> list[tuple[str, str]]:
    with ops() as conn:
        return conn.execute("SELECT kind, rule FROM dbops.alert_events WHERE target = %s ORDER BY id",
                            (handle.name,)).fetchall()


def subjects(handle) -> list[str]:
    return [message["Subject"] for message in handle.mails]


def test_write_refused_and_failing_rules_isolated(alerting):
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h") + "".join(
        f"\n  - {{name: {q}, severity: warning, query: {q}, op: '>', threshold: 0, summary: s, runbook: r}}"
        for q in ("writes", "broken", "sleeps")))
    set_knob(handle, 20)
    result = handle.cycle()
    assert result["errors"] == 3 and result["target_up"] is True
    assert handle.target_sql("SELECT count(*) FROM knobs") == [(1,)], "the DELETE was refused"
    alerts = state(handle)
    assert alerts[("knob_high", '{"knob": "load"}')] == "firing", "the good rule was evaluated and fired"
    assert {labels for rule, labels in alerts if rule == "RuleEvaluationFailed"} == {
        f'{{"failed_rule": "{q}"}}' for q in ("writes", "broken", "sleeps")}
    assert set(alerts.values()) == {"firing", "pending"}, "evaluation errors wait 10 minutes before they notify"
    with ops() as conn:
        summaries = dict(conn.execute(
            "SELECT labels->>'failed_rule', summary FROM dbops.alert_state WHERE target = %s AND "
            "rule = 'RuleEvaluationFailed'", (handle.name,)).fetchall())
    assert "read-only transaction" in summaries["writes"]
    assert "no_such_table" in summaries["broken"]
    assert summaries["sleeps"].startswith("rule sleeps could not be evaluated: timeout")
    assert subjects(handle) == [f"[dbops] {handle.name}: 1 firing"]


def test_a_value_of_the_wrong_type_fails_its_rule_and_the_others_are_recorded(alerting):
    """Text and two ``value`` columns are errors of their rules, naming the type; an interval counts in seconds."""
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h") + "".join(
        f"\n  - {{name: {q}, severity: warning, query: {q}, op: '>', threshold: 10, summary: s, runbook: r}}"
        for q in ("text_value", "interval_value", "two_values")))
    set_knob(handle, 20)
    result = handle.cycle()
    assert result["errors"] == 2 and result["notified"] == ["firing", "firing"]
    assert state(handle) == {("knob_high", '{"knob": "load"}'): "firing", ("interval_value", "{}"): "firing",
                             ("RuleEvaluationFailed", '{"failed_rule": "text_value"}'): "pending",
                             ("RuleEvaluationFailed", '{"failed_rule": "two_values"}'): "pending"}
    with ops() as conn:
        summaries = dict(conn.execute(
            "SELECT labels->>'failed_rule', summary FROM dbops.alert_state WHERE target = %s AND "
            "rule = 'RuleEvaluationFailed'", (handle.name,)).fetchall())
        samples = conn.execute("SELECT metric, value FROM dbops.metric_samples WHERE target = %s AND metric <> "
                               "'target_up' ORDER BY metric", (handle.name,)).fetchall()
    assert summaries == {
        "text_value": "rule text_value could not be evaluated: error: query text_value: column 'value' is of type "
                      "text: return a number, a boolean or an interval (e.g. cast it: value::numeric)",
        "two_values": "rule two_values could not be evaluated: error: query two_values: returns more than one "
                      "column named 'value' (columns: value, value); give each column its own name"}
    assert samples == [("interval_value", 20.0), ("knob", 20.0)]


def test_flapping_firing_repeat_and_resolved_notify_once_each(alerting):
    handle = alerting.configure(KNOB_RULE.format(for_="1s", repeat="3s"))
    with ops() as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(handle.name)))
        set_knob(handle, 20)
        assert handle.cycle()["pending"] == 1
        set_knob(handle, 0)
        handle.cycle()  # breached for less than `for`: back to inactive, nobody told
        assert handle.mails == [] and state(handle) == {}
        set_knob(handle, 20)
        handle.cycle()
        time.sleep(1.2)
        assert handle.cycle()["notified"] == ["firing"]
        assert handle.cycle()["notified"] == [], "still firing inside the repeat interval"
        time.sleep(3.2)
        assert handle.cycle()["notified"] == ["repeat"]
        set_knob(handle, 0)
        assert handle.cycle()["notified"] == ["resolved"]
        assert handle.cycle()["notified"] == []
        notices = [json.loads(n.payload) for n in listener.notifies(timeout=2, stop_after=3)]
    assert [kind for kind, _ in events(handle)] == ["firing", "repeat", "resolved"]
    assert subjects(handle) == [f"[dbops] {handle.name}: {what}" for what in ("1 firing", "1 firing", "1 resolved")]
    assert "knob load at 20" in handle.mails[0].get_body(preferencelist=("html",)).get_content()
    assert "turn the knob down" in handle.mails[0].get_body(preferencelist=("html",)).get_content()
    assert len(handle.posts) == 3 and "knob_high" in handle.posts[0][1]["text"]
    assert [[a["kind"] for a in n["alerts"]] for n in notices] == [["firing"], ["repeat"], ["resolved"]]
    with ops() as conn:
        samples = conn.execute("SELECT count(*), min(value), max(value) FROM dbops.metric_samples "
                               "WHERE target = %s AND metric = 'knob'", (handle.name,)).fetchone()
    assert samples == (8, 0.0, 20.0), "every evaluated value is kept as a sample"


def test_smtp_down_then_delivered_on_a_later_run_exactly_once(alerting, monkeypatch, smtp_server):
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"), undelivered_alarm="1s")
    smtp_connection(monkeypatch, "smtp_alerts", free_port())  # nothing listens: the mail server is down
    set_knob(handle, 20)
    result = handle.cycle()
    assert result["notified"] == ["firing"] and result["delivery"] == {"delivered": 1, "failed": 1, "in_flight": 0}
    assert handle.mails == [] and len(handle.posts) == 1, "Slack still got it"
    time.sleep(1.2)
    with pytest.raises(AirflowException, match="undelivered via email since"):
        handle.cycle()  # waited past undelivered_alarm: the task fails so someone is told
    smtp_connection(monkeypatch, "smtp_alerts", smtp_server.port)
    assert handle.cycle()["delivery"] == {"delivered": 1, "failed": 0, "in_flight": 0}
    assert handle.cycle()["delivery"] == {"delivered": 0, "failed": 0, "in_flight": 0}
    assert subjects(handle) == [f"[dbops] {handle.name}: 1 firing"] and len(handle.posts) == 1
    with ops() as conn:
        attempts = conn.execute("SELECT channel, attempts, delivered_at IS NOT NULL FROM dbops.alert_notifications "
                                "WHERE target = %s ORDER BY channel", (handle.name,)).fetchall()
    assert attempts == [("email", 3, True), ("slack", 1, True)]


def test_target_down_fires_holds_other_alerts_and_resolves(alerting, monkeypatch):
    """The target's server is "stopped" by pointing its connection at a port nothing listens on."""
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    set_knob(handle, 20)
    assert handle.cycle()["notified"] == ["firing"]
    running = conn_uri(handle.database)
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{handle.name.upper()}", running.replace(f":{PG_PORT}/",
                                                                                  f":{free_port()}/"))
    down = handle.cycle()
    assert down["target_up"] is False and down["notified"] == ["firing"]
    assert state(handle) == {("TargetDown", "{}"): "firing", ("knob_high", '{"knob": "load"}'): "firing"}, \
        "the knob alert is unknown while the target is down, not resolved"
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{handle.name.upper()}", running)
    back = handle.cycle()
    assert back["target_up"] is True and back["notified"] == ["resolved"]
    assert events(handle) == [("firing", "knob_high"), ("firing", "TargetDown"), ("resolved", "TargetDown")]
    assert "does not answer" in handle.mails[1].get_body(preferencelist=("html",)).get_content()


def test_silenced_alert_fires_without_notifying_until_the_silence_ends(alerting):
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    with ops() as conn:
        silence = conn.execute(
            "INSERT INTO dbops.alert_silences (target, matchers, starts_at, expires_at, created_by, comment) "
            "VALUES (%s, %s, now() - interval '1 minute', now() + interval '1 hour', 'test', 'planned work') "
            "RETURNING id", (handle.name, json.dumps({"alertname": "knob_.*", "knob": "load"}))).fetchone()[0]
    set_knob(handle, 20)
    assert handle.cycle()["notified"] == [] and handle.mails == []
    assert state(handle) == {("knob_high", '{"knob": "load"}'): "firing"}
    with ops() as conn:
        conn.execute("UPDATE dbops.alert_silences SET expires_at = now() WHERE id = %s", (silence,))
    assert handle.cycle()["notified"] == ["firing"] and len(handle.mails) == 1


def test_counter_rule_compares_the_increase(alerting):
    handle = alerting.configure("""
  - {name: counter_grew, severity: warning, query: counter, op: ">", threshold: 0, counter: true,
     summary: "{value} new", runbook: r}""")
    assert handle.cycle()["firing"] == 0, "first sample: no baseline, no increase"
    handle.target_sql("UPDATE counters SET value = value + 2")
    assert handle.cycle()["notified"] == ["firing"]
    assert handle.cycle()["notified"] == ["resolved"], "no increase since the last run"


def test_a_failing_alert_dag_notifies_once_per_incident(alerting, tmp_path, mailbox):
    """A broken rule pack fails evaluate every five minutes: one mail for that error; another when the error
    changes or once alerts.failure_repeat has passed."""
    from airflow.dag_processing.dagbag import DagBag

    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    broken = f"{handle.name}_b"
    pack = tmp_path / "broken.yaml"

    def broken_dag(op: str):
        pack.write_text("queries: queries\nrules:\n  - {name: knob_odd, severity: warning, query: knob, "
                        f"op: '{op}', threshold: 1, summary: s, runbook: r}}\n")
        config = json.loads((tmp_path / "dbops.yaml").read_text())
        config["targets"][broken] = {"conn_id": f"pg_{handle.name}", "alerts": {"rules": [str(pack)],
                                                                              "notify": ["log", "email"]}}
        (tmp_path / "dbops.yaml").write_text(json.dumps(config))
        return DagBag(dag_folder=str(ROOT / "dags")).dags[f"db_alerts__{broken}"]

    def failure_mails() -> list[str]:
        return [html.unescape(m.get_body(preferencelist=("html",)).get_content()) for m in mailbox.messages
                if m["Subject"] == f"db_alerts__{broken} failed: evaluate"]

    dag = broken_dag("=>")
    assert [dag.test().state for _ in range(3)] == ["failed"] * 3
    (first,) = failure_mails()
    assert "unknown operator '=>'" in first
    with ops() as conn:
        assert conn.execute("SELECT task_id, target, suppressed FROM dbops.failure_notifications WHERE dag_id = %s",
                            (dag.dag_id,)).fetchall() == [("evaluate", broken, 2)]
        conn.execute("UPDATE dbops.failure_notifications SET notified_at = notified_at - interval '4 hours' "
                     "WHERE dag_id = %s", (dag.dag_id,))  # FAKE: the repeat interval (4 h) has passed
    assert dag.test().state == "failed"
    assert len(failure_mails()) == 2, "the same error, notified again after alerts.failure_repeat"
    assert broken_dag("=<").test().state == "failed"
    assert len(failure_mails()) == 3 and "unknown operator '=<'" in failure_mails()[-1], "another error: notified"


def test_dag_runs_both_tasks(alerting):
    from airflow.dag_processing.dagbag import DagBag

    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    set_knob(handle, 20)
    run = DagBag(dag_folder=str(ROOT / "dags")).dags[f"db_alerts__{handle.name}"].test()
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "evaluate": "success", "deliver": "success", "any_task_failed": "skipped"}
    assert subjects(handle) == [f"[dbops] {handle.name}: 1 firing"]


def test_retried_evaluation_does_not_notify_twice(alerting):
    """A retried evaluate task (same run id) advances from the committed state: nothing is notified twice."""
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    set_knob(handle, 20)
    ctx = context(f"retried_{uuid.uuid4().hex[:6]}")
    first = AlertEvaluationOperator(task_id="evaluate", target=handle.name).execute(ctx)
    again = AlertEvaluationOperator(task_id="evaluate", target=handle.name).execute(ctx)
    assert first["notified"] == ["firing"] and again["notified"] == []
    assert AlertDeliveryOperator(task_id="deliver", target=handle.name).execute(ctx) == {"delivered": 2, "failed": 0,
                                                                                       "in_flight": 0}


def test_ops_database_down_fails_the_task_as_transient(alerting, monkeypatch):
    """Alert state cannot be recorded: the task fails (and is retried), naming the ops database."""
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    running = conn_uri(TEST_DATABASES["dbops"])
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_STATE", running.replace(f":{PG_PORT}/", f":{free_port()}/"))
    with pytest.raises(AirflowException, match=r"ops database \(alert state\).*\(transient\)"):
        AlertEvaluationOperator(task_id="evaluate", target=handle.name).execute(context("ops_down"))
    monkeypatch.setenv("AIRFLOW_CONN_DBOPS_STATE", running)
    assert state(handle) == {}, "nothing was half-recorded"


@pytest.mark.parametrize(("run_type", "age", "why"), [
    ("backfill", timedelta(0), "a backfill run"),
    ("scheduled", timedelta(days=2), r"the run is for .*, 2 days, 0:00:\d\d ago"),
    ("manual", timedelta(minutes=16), r"the run is for .*, 0:16:\d\d ago"),
])
def test_backfilled_and_past_runs_skip_and_leave_alert_state_alone(alerting, run_type, age, why):
    """A run for another time than now (a backfill, a cleared old run) would stamp the present with its date."""
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    set_knob(handle, 20)
    assert handle.cycle()["notified"] == ["firing"]
    set_knob(handle, 0)  # a current run resolves the alert
    before = sample_count(handle)
    with pytest.raises(AirflowSkipException, match=f"alerts of {handle.name} not evaluated: {why}; alerts describe "
                                                   "the present, only a current run evaluates them"):
        AlertEvaluationOperator(task_id="evaluate", target=handle.name).execute(context("past", run_type, age))
    assert state(handle) == {("knob_high", '{"knob": "load"}'): "firing"} and sample_count(handle) == before
    assert events(handle) == [("firing", "knob_high")]
    assert handle.cycle()["notified"] == ["resolved"], "a current run evaluates"


def test_a_second_evaluation_waits_then_skips_while_one_runs(alerting):
    """Overlapping runs (a backfill's beside a scheduled one): the second skips and records nothing."""
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    set_knob(handle, 20)
    with job_lock("dbops_state", handle.name, "alerts", wait_seconds=0):  # the first run, still evaluating
        with pytest.raises(AirflowSkipException, match=rf"alerts of {handle.name} is already running in another "
                                                       r"run \(ops-database backend pid \d+.*waited 1 s, skipping"):
            AlertEvaluationOperator(task_id="evaluate", target=handle.name, lock_wait=1).execute(context("second"))
    assert state(handle) == {} and sample_count(handle) == 0 and events(handle) == []
    assert handle.cycle()["notified"] == ["firing"], "evaluated once the lock is free"


def test_a_silence_with_an_invalid_pattern_is_ignored_and_reported(alerting, capsys):
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    with ops() as conn:
        bad, good = [conn.execute(
            "INSERT INTO dbops.alert_silences (target, matchers, expires_at, created_by, comment) "
            "VALUES (%s, %s, now() + interval '1 hour', 'test', 'planned work') RETURNING id",
            (handle.name, json.dumps(matchers))).fetchone()[0]
            for matchers in ({"alertname": "knob_(high"}, {"alertname": "knob_.*"})]
    set_knob(handle, 20)
    result = handle.cycle()
    line = (f"silence {bad} of dbops.alert_silences is ignored: matcher 'alertname': 'knob_(high' is not a valid "
            "regular expression (missing ), unterminated subpattern at position 5); fix its matchers")
    assert result["ignored_silences"] == [line]
    assert line in capsys.readouterr().out, "a warning in the task log"
    assert state(handle) == {("knob_high", '{"knob": "load"}'): "firing"}
    assert result["notified"] == [] and handle.mails == [], f"silence {good} still silences"


class _OpsKillingHandler(_WebhookHandler):
    """Accepts the post, but first terminates every other session of the ops database (the outbox's included)."""

    def do_POST(self) -> None:
        if self.server.kill:
            self.server.kill = False
            with ops() as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                             "current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'")
        super().do_POST()


def test_ops_database_lost_after_a_send_does_not_send_it_again_before_the_claim_expires(alerting, monkeypatch):
    """The one window of the outbox: sent, then the outcome could not be recorded. Re-sent once, after expiry."""
    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    receiver = WebhookReceiver()
    receiver.RequestHandlerClass, receiver.kill = _OpsKillingHandler, True
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": f"{receiver.base_url}/services/T0/B0/alerts"}))
    set_knob(handle, 20)
    try:
        AlertEvaluationOperator(task_id="evaluate", target=handle.name).execute(context("lost"))

        def deliver() -> dict:
            return AlertDeliveryOperator(task_id="deliver", target=handle.name, claim_expiry=3).execute(
                context("lost"))

        with pytest.raises(AirflowException, match=r"ops database \(notification outbox\).*\(transient"):
            deliver()
        assert len(receiver.posts) == 1 and len(handle.mails) == 1
        assert deliver() == {"delivered": 0, "failed": 0, "in_flight": 1}, "the retry does not send it again"
        assert len(receiver.posts) == 1
        time.sleep(3.2)
        assert deliver() == {"delivered": 1, "failed": 0, "in_flight": 0}, "the claim expired: sent again, once"
        assert deliver() == {"delivered": 0, "failed": 0, "in_flight": 0}
    finally:
        receiver.shutdown()
        receiver.server_close()
    assert len(receiver.posts) == 2 and len(handle.mails) == 1
    with ops() as conn:
        rows = conn.execute("SELECT channel, attempts, delivered_at IS NOT NULL, claimed_at FROM "
                            "dbops.alert_notifications WHERE target = %s ORDER BY channel", (handle.name,)).fetchall()
    assert rows == [("email", 1, True, None), ("slack", 2, True, None)]


def test_a_broken_rule_pack_fails_its_targets_evaluation_loudly_and_keeps_every_dag(alerting, tmp_path, mailbox,
                                                                                   caplog):
    from airflow.dag_processing.dagbag import DagBag

    handle = alerting.configure(KNOB_RULE.format(for_="0s", repeat="1h"))
    broken_pack = tmp_path / "broken.yaml"
    broken_pack.write_text("queries: queries\nrules:\n  - {name: knob_odd, severity: warning, query: knob, op: '=>', "
                           "threshold: 1, summary: s, runbook: r}\n")
    config = json.loads((tmp_path / "dbops.yaml").read_text())
    broken = f"{handle.name}_b"
    config["targets"][broken] = {"conn_id": f"pg_{handle.name}", "alerts": {"rules": [str(broken_pack)],
                                                                          "notify": ["log", "email"]}}
    (tmp_path / "dbops.yaml").write_text(json.dumps(config))
    error = f"{broken_pack}: rule 'knob_odd': unknown operator '=>'"

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert {f"db_alerts__{handle.name}", f"db_alerts__{broken}"} <= set(bag.dag_ids)
    assert not [path for path in bag.import_errors if path.endswith("db_alerts.py")]
    assert any(r.levelname == "ERROR" and error in r.getMessage() for r in caplog.records), "logged at parse time"
    dag = bag.dags[f"db_alerts__{broken}"]
    assert error in dag.description and error in dag.doc_md

    with pytest.raises(AirflowFailException, match=f"alert rules of {broken} are invalid, no rule is evaluated: "
                                                   f"{re.escape(error)} .*Fix the rule pack"):
        AlertEvaluationOperator(task_id="evaluate", target=broken).execute(context("broken"))
    run = dag.test()
    assert {ti.task_id: ti.state for ti in run.get_task_instances()} == {
        "evaluate": "failed", "deliver": "success", "any_task_failed": "failed"}
    assert run.state == "failed", "deliver ran after the failure; the run must still show failed"
    (mail,) = [m for m in mailbox.messages if m["Subject"] == f"db_alerts__{broken} failed: evaluate"]
    assert error in html.unescape(mail.get_body(preferencelist=("html",)).get_content()), "the failure notifier spoke"
    set_knob(handle, 20)
    assert handle.cycle()["notified"] == ["firing"], "the other target is still evaluated"
