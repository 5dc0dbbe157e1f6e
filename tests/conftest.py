"""Shared fixtures: the local embedded PostgreSQL 18 (started if needed) and scratch databases.

`make test` starts the stack first; running `pytest` directly works too: the session starts the
server itself and stops it at the end if it was not running before.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from psycopg import sql

from scripts.stack.airflow import airflow_env
from scripts.stack.bootstrap import up_test_databases
from scripts.stack.postgres import ensure_databases, libpq_conninfo, start_postgres, stop_postgres

# The suite's own metadata and ops databases (airflow_test, dbops_test), never those `make run` shows.
os.environ.update(airflow_env(test=True))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[None]:
    started = start_postgres()
    ensure_databases()
    up_test_databases()
    yield
    if started:
        stop_postgres()


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_server) -> str:
    """libpq conninfo of a superuser connection to database ``postgres``."""
    return libpq_conninfo("postgres")


@pytest.fixture
def scratch_db(pg_admin_dsn) -> Iterator[Callable[[], str]]:
    """Factory of empty databases, dropped after the test; returns the database name."""
    created: list[str] = []

    def make() -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return name

    yield make
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))



def config_yaml(tmp: Path, targets: str) -> str:
    """A dbops.yaml text for a test: the ops database, staging and a local store under ``tmp``, then ``targets``
    (the YAML under ``targets:``, each target indented two spaces)."""
    return f"""
ops_conn_id: dbops_state
staging_dir: {tmp / 'staging'}
storage:
  local: {{url: {tmp / 'store'}}}
targets:
{targets}"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (once this returns)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def start_moto(port: int) -> subprocess.Popen:
    """A real S3-compatible server (moto server) on 127.0.0.1:port."""
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return proc


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    proc = start_moto(port)
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


SMTP_LOGIN = "dbops-mailer"
SMTP_PASSWORD = "smtp-Pa55-9f3c1e"


class Mailbox:
    """aiosmtpd handler: accepts logins with SMTP_LOGIN / SMTP_PASSWORD and keeps every message."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.logins: list[str] = []

    def authenticate(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        ok = auth_data.login.decode() == SMTP_LOGIN and auth_data.password.decode() == SMTP_PASSWORD
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok, handled=False)  # unhandled failure: the server answers 535

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))
        return "250 Message accepted"


@pytest.fixture(scope="session")
def smtp_server():
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that requires a login."""
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_port(), authenticator=mailbox.authenticate,
                            auth_required=True, auth_require_tls=False)
    controller.start()
    yield controller
    controller.stop()


@pytest.fixture
def mailbox(smtp_server) -> Mailbox:
    smtp_server.handler.messages.clear()
    smtp_server.handler.logins.clear()
    return smtp_server.handler


def smtp_connection(monkeypatch, conn_id: str, port: int, password: str = SMTP_PASSWORD) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port, "login": SMTP_LOGIN, "password": password,
        "extra": {"disable_tls": True, "disable_ssl": True, "timeout": 10, "retry_limit": 0},
    }))


class WebhookReceiver(ThreadingHTTPServer):
    """Stand-in for Slack's incoming webhook: records (path, JSON body) of each POST, answers 200 ``ok``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _WebhookHandler)
        self.posts: list[tuple[str, dict]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _WebhookHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.posts.append((self.path, json.loads(body)))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture(scope="module")
def webhook_server():
    server = WebhookReceiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook(webhook_server) -> WebhookReceiver:
    webhook_server.posts.clear()
    return webhook_server


@pytest.fixture(scope="module")
def standalone_mongo(tmp_path_factory) -> Iterator:
    """A standalone MongoDB-compatible server of the module's own (no replica set, no oplog), stopped by its pid."""
    from scripts.stack.mongo import MongoServer

    server = MongoServer(free_port(), tmp_path_factory.mktemp("standalone"), standalone=True)
    server.start()
    yield server
    server.stop()
