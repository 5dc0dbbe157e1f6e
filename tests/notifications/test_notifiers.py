"""Notifier channels against real servers: an aiosmtpd SMTP server and a local HTTP webhook receiver.

Slack itself cannot run here: a local HTTP server that records the POSTed JSON and answers ``ok``
stands in for Slack's incoming webhook; the provider's SlackWebhookHook talks to it unchanged.
"""

from __future__ import annotations

import dataclasses
import email
import email.policy
import html
import json
import logging
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from dbops.core.config import DEFAULT_CONFIG_PATH, NotificationsConfig, load_config
from dbops.notifications.channels import DbopsFailureNotifier, Notification, send
from tests.conftest import SMTP_LOGIN, SMTP_PASSWORD, WebhookReceiver, _WebhookHandler, free_port, smtp_connection

WEBHOOK_TOKEN = "T0DBOPS/B0DBOPS/hook-5ecret-77aa"

@pytest.fixture
def connections(monkeypatch, smtp_server, webhook_server) -> None:
    smtp_connection(monkeypatch, "smtp_test", smtp_server.port)
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_TEST", json.dumps({
        "conn_type": "slackwebhook", "password": f"{webhook_server.base_url}/services/{WEBHOOK_TOKEN}",
    }))


@pytest.fixture
def config_path(tmp_path) -> Path:
    """include/config/dbops.yaml with the notifications section pointed at the test connections."""
    data = yaml.safe_load(DEFAULT_CONFIG_PATH.read_text())
    data["notifications"] = {
        "email": {"to": ["oncall@example.com", "dba@example.com"], "from_email": "dbops@example.com",
                  "smtp_conn_id": "smtp_test"},
        "slack": {"slack_webhook_conn_id": "slack_test"},
    }
    path = tmp_path / "dbops.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def notifications(config_path, connections) -> NotificationsConfig:
    return load_config(config_path).notifications


NOTE = Notification(
    title="pg_backup__appdb failed: verify_restore",
    body="Target appdb: task verify_restore failed.\nError: row count mismatch on orders: 1000 <> 998\n"
         "What to do: clear the task. <!channel>",
    severity="critical",
    target="appdb",
)


def html_text(message: email.message.EmailMessage) -> str:
    return html.unescape(message.get_body(preferencelist=("html",)).get_content())


def test_email_arrives_with_subject_and_body(notifications, mailbox):
    assert send(NOTE, ["email"], notifications) == {"email": "sent"}

    [message] = mailbox.messages
    assert message["Subject"] == NOTE.title
    assert message["From"] == "dbops@example.com"
    assert message["To"] == "oncall@example.com, dba@example.com"
    assert NOTE.body in html_text(message)
    assert mailbox.logins == [SMTP_LOGIN]


@pytest.mark.parametrize("form", ["url_in_password", "host_and_token"])
def test_slack_webhook_receives_text(notifications, webhook, monkeypatch, form):
    conn = ({"password": f"{webhook.base_url}/services/{WEBHOOK_TOKEN}"} if form == "url_in_password"
            else {"host": f"{webhook.base_url}/services", "password": WEBHOOK_TOKEN})
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_TEST", json.dumps({"conn_type": "slackwebhook", **conn}))

    assert send(NOTE, ["slack"], notifications) == {"slack": "sent"}

    [(path, body)] = webhook.posts
    assert path == f"/services/{WEBHOOK_TOKEN}"
    assert body["text"].startswith(f"*{NOTE.title}*\n")
    assert "1000 &lt;&gt; 998" in body["text"]
    assert "&lt;!channel&gt;" in body["text"]  # error text cannot @-mention a channel


def test_log_channel_writes_title_then_body(notifications, caplog):
    caplog.set_level(logging.INFO, logger="dbops.notify")

    assert send(NOTE, ["log"], notifications) == {"log": "sent"}

    [record] = [r for r in caplog.records if r.name == "dbops.notify"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == f"{NOTE.title}\n{NOTE.body}"


def test_one_channel_down_others_still_sent(notifications, mailbox, webhook, monkeypatch, caplog):
    smtp_connection(monkeypatch, "smtp_test", free_port())  # nothing listens there
    caplog.set_level(logging.INFO)

    results = send(NOTE, ["email", "log", "slack"], notifications)

    assert results["email"].startswith("failed: ConnectionRefusedError")
    assert results["log"] == "sent"
    assert results["slack"] == "sent"
    assert mailbox.messages == []
    assert len(webhook.posts) == 1
    errors = [r.getMessage() for r in caplog.records if r.name == "dbops.notify" and r.levelno == logging.ERROR]
    assert any("via email" in line and "ConnectionRefusedError" in line for line in errors)


def test_smtp_password_never_logged(notifications, smtp_server, mailbox, monkeypatch, caplog, capfd):
    """Neither stdlib records (DEBUG) nor Airflow's structlog output show the password, also when rejected."""
    smtp_connection(monkeypatch, "smtp_wrong_password", smtp_server.port, password="Wr0ng-" + SMTP_PASSWORD)
    rejected = dataclasses.replace(
        notifications, email=dataclasses.replace(notifications.email, smtp_conn_id="smtp_wrong_password"))
    caplog.set_level(logging.DEBUG)

    assert send(NOTE, ["email"], notifications) == {"email": "sent"}
    result = send(NOTE, ["email"], rejected)

    assert result["email"].startswith("failed: SMTPAuthenticationError")
    assert len(mailbox.messages) == 1
    printed = "".join(capfd.readouterr())
    for secret in (SMTP_PASSWORD, "Wr0ng-" + SMTP_PASSWORD):
        assert secret not in caplog.text
        assert secret not in printed
        assert secret not in result["email"]


@pytest.mark.parametrize("receiver", ["up", "down"])
def test_webhook_token_never_logged(notifications, webhook, monkeypatch, caplog, capfd, receiver):
    """Also when the receiver is down and slack_sdk retries (it logs the full URL when it retries)."""
    base_url = webhook.base_url if receiver == "up" else f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_TEST", json.dumps({
        "conn_type": "slackwebhook", "password": f"{base_url}/services/{WEBHOOK_TOKEN}"}))
    caplog.set_level(logging.DEBUG)

    result = send(NOTE, ["slack"], notifications)

    expected = "sent" if receiver == "up" else "failed: URLError: <urlopen error [Errno 111] Connection refused>"
    assert result["slack"] == expected
    secret = WEBHOOK_TOKEN.split("/")[-1]
    assert secret not in caplog.text
    assert secret not in "".join(capfd.readouterr())
    assert secret not in result["slack"]


class _FailingFirstHandler(_WebhookHandler):
    def do_POST(self) -> None:
        if not self.server.errors:
            return super().do_POST()
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.failed.append(self.server.errors.pop(0))
        self.send_response(self.server.failed[-1])
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"internal_error")


@pytest.fixture
def failing_first(request):
    """A webhook receiver that answers its first POST with the HTTP status ``request.param``, then 200."""
    server = WebhookReceiver()
    server.RequestHandlerClass = _FailingFirstHandler
    server.errors, server.failed = [request.param], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("failing_first", [500, 503], indirect=True)
def test_slack_server_error_is_retried_and_the_url_never_logged(notifications, failing_first, monkeypatch, caplog,
                                                                capfd):
    from airflow.sdk.log import redact

    url = f"{failing_first.base_url}/services/{WEBHOOK_TOKEN}"
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_TEST", json.dumps({"conn_type": "slackwebhook", "password": url}))
    caplog.set_level(logging.DEBUG)

    result = send(NOTE, ["slack"], notifications)

    assert result == {"slack": "sent"}
    assert failing_first.failed and len(failing_first.posts) == 1
    secret = WEBHOOK_TOKEN.split("/")[-1]
    assert secret not in caplog.text
    assert secret not in "".join(capfd.readouterr())
    assert secret not in redact(f"posting to {url}"), "Airflow's task log masks the token"


def test_malformed_webhook_url_is_reported_without_the_url(notifications, webhook, monkeypatch, caplog, capfd):
    """slack_sdk puts the whole URL in its error (and logs it at ERROR) when the scheme is not http(s)."""
    url = f"htps://127.0.0.1:{free_port()}/services/{WEBHOOK_TOKEN}"
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_TEST", json.dumps({"conn_type": "slackwebhook", "password": url}))
    caplog.set_level(logging.DEBUG)

    result = send(NOTE, ["slack"], notifications)

    secret = WEBHOOK_TOKEN.split("/")[-1]
    assert secret not in caplog.text
    assert secret not in "".join(capfd.readouterr())
    assert result == {"slack": "failed: SlackRequestError: Invalid URL detected: <webhook URL>"}
    assert webhook.posts == []


def test_unknown_channel_and_missing_section_fail_cleanly(notifications, caplog):
    caplog.set_level(logging.INFO, logger="dbops.notify")

    results = send(NOTE, ["pager", "log"], notifications)
    assert results == {"pager": "failed: unknown channel 'pager' (this notifier delivers to: log, email, slack)",
                       "log": "sent"}

    results = send(NOTE, ["email", "slack"], NotificationsConfig())
    assert results == {
        "email": "failed: channel 'email' needs a notifications.email section in the config",
        "slack": "failed: channel 'slack' needs a notifications.slack section in the config",
    }
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and "not delivered" in r.getMessage()]
    assert [e.split(" via ")[1].split(":")[0] for e in errors] == ["pager", "email", "slack"]


def failure_context(*, logical_date: datetime | None, error: BaseException) -> dict:
    """A task failure callback's context, built the way Airflow's DAG processor builds it.

    The task instance and DAG run come from Airflow's own runtime models (normally sent by the API
    server) and ``get_template_context()`` makes the context; ``exception`` is added as the task
    runner does before it calls ``on_failure_callback``.
    """
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.sdk.api.datamodels._generated import DagRun, DagRunState, DagRunType, TIRunContext
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

    with DAG("pg_backup__appdb", schedule=None) as dag:
        task = EmptyOperator(task_id="verify_restore", retries=1)
    run_after = datetime(2025, 6, 1, 2, 0, tzinfo=timezone.utc)
    run_id = "scheduled__2025-06-01T02:00:00+00:00" if logical_date else "manual__2025-06-01T02:00:00+00:00"
    dag_run = DagRun(
        dag_id=dag.dag_id, run_id=run_id, logical_date=logical_date, data_interval_start=logical_date,
        data_interval_end=logical_date, run_after=run_after, start_date=run_after, end_date=None,
        run_type=DagRunType.SCHEDULED if logical_date else DagRunType.MANUAL, state=DagRunState.RUNNING,
        consumed_asset_events=[], partition_key=None,
    )
    ti = RuntimeTaskInstance.model_construct(
        id=uuid.uuid4(), task_id=task.task_id, dag_id=dag.dag_id, run_id=run_id, try_number=2, map_index=-1,
        dag_version_id=uuid.uuid4(), task=task, max_tries=1,
        _ti_context_from_server=TIRunContext(dag_run=dag_run, max_tries=1),
    )
    context = ti.get_template_context()
    context["exception"] = error
    return context


def test_failure_notifier_sends_email_from_task_context(config_path, connections, mailbox, webhook):
    error = RuntimeError("verification restore of appdb: row count mismatch on orders (1000 vs 998)")
    context = failure_context(logical_date=datetime(2025, 6, 1, 2, 0, tzinfo=timezone.utc), error=error)
    notifier = DbopsFailureNotifier(target="appdb", channels=["email", "slack"], config_path=str(config_path))

    notifier(context)

    [message] = mailbox.messages
    assert "pg_backup__appdb" in message["Subject"] and "verify_restore" in message["Subject"]
    body = html_text(message)
    assert "RuntimeError: verification restore of appdb: row count mismatch on orders (1000 vs 998)" in body
    assert "scheduled__2025-06-01T02:00:00+00:00 (logical date 2025-06-01T02:00:00+00:00)" in body
    assert "(try 2)" in body
    assert "/dags/pg_backup__appdb/runs/scheduled__2025-06-01T02%3A00%3A00%2B00%3A00/tasks/verify_restore" in body
    assert "What to do:" in body
    [(_, post)] = webhook.posts
    assert "row count mismatch on orders" in post["text"]


def test_failure_notifier_manual_run_without_logical_date(config_path, connections, mailbox, monkeypatch):
    monkeypatch.setenv("DBOPS_CONFIG", str(config_path))
    context = failure_context(logical_date=None, error=TimeoutError())

    DbopsFailureNotifier(target="appdb", channels=["email"])(context)

    body = html_text(mailbox.messages[0])
    assert "Error: TimeoutError" in body
    assert "(run after 2025-06-01T02:00:00+00:00)" in body
