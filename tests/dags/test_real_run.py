"""A real run: scheduler, dag-processor and api-server (LocalExecutor) run pg_backup__appdb.

`dags test` does not mask secrets, so this is the run that proves the database password appears in no
task log and in no process's argv while pg_dump runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from scripts.stack.airflow import AIRFLOW_USER, airflow_env, stop_processes
from scripts.stack.credentials import airflow_admin_password, pg_password
from scripts.stack.paths import ROOT
from tests.conftest import free_port, wait_for_port

DAG_ID = "pg_backup__appdb"


@pytest.fixture
def airflow_services(pg_server, tmp_path):
    """api-server, scheduler and dag-processor on the test databases; task logs in tmp_path."""
    port = free_port()
    config = ROOT / "include" / "config" / "dbops.yaml"
    text = config.read_text().replace("url: var/backups", f"url: {tmp_path / 'backups'}").replace(
        "staging_dir: var/staging", f"staging_dir: {tmp_path / 'staging'}")
    (tmp_path / "dbops.yaml").write_text(text)
    env = {**os.environ, **airflow_env(test=True),
           "DBOPS_CONFIG": str(tmp_path / "dbops.yaml"),
           "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp_path / "logs"),
           "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
           "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5"}
    airflow = str(Path(sys.executable).parent / "airflow")
    commands = [[airflow, "api-server", "--host", "127.0.0.1", "--port", str(port)], [airflow, "scheduler"],
                [airflow, "dag-processor"]]
    procs = [subprocess.Popen(cmd, env=env, stdout=open(tmp_path / f"{cmd[1]}.out", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True) for cmd in commands]
    try:
        wait_for_port(port, timeout=120)
        yield f"http://localhost:{port}", tmp_path
    finally:
        stop_processes(procs)


def api(base: str, method: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
    request = urllib.request.Request(f"{base}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def wait_for_dag(base: str, token: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            api(base, "GET", f"/api/v2/dags/{DAG_ID}", token)
            return
        except urllib.error.HTTPError:
            time.sleep(2)
    raise TimeoutError(f"{DAG_ID} was not parsed in time")


def watch_argv(secret: str, seen: list, stop: threading.Event) -> None:
    """Sample every process's command line until stopped; remember pg_dump sightings and any leak."""
    while not stop.is_set():
        for proc in psutil.process_iter(["cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or [])
            if "pg_dump" in cmdline and "--snapshot" in cmdline:
                seen.append(("pg_dump", cmdline))
            if secret in cmdline:
                seen.append(("LEAK", cmdline))
        time.sleep(0.02)


def test_scheduled_backup_keeps_the_password_out_of_logs_and_argv(airflow_services):
    base, tmp = airflow_services
    password = pg_password()
    token = api(base, "POST", "/auth/token",
                body={"username": AIRFLOW_USER, "password": airflow_admin_password()}
                )["access_token"]
    wait_for_dag(base, token)
    api(base, "PATCH", f"/api/v2/dags/{DAG_ID}", token, {"is_paused": False})
    seen: list = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_argv, args=(password, seen, stop), daemon=True)
    watcher.start()
    run_id = api(base, "POST", f"/api/v2/dags/{DAG_ID}/dagRuns", token, {"logical_date": None})["dag_run_id"]
    deadline = time.monotonic() + 300
    state = "queued"
    while time.monotonic() < deadline and state not in ("success", "failed"):
        time.sleep(3)
        state = api(base, "GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}", token)["state"]
    stop.set()
    watcher.join()
    api(base, "PATCH", f"/api/v2/dags/{DAG_ID}", token, {"is_paused": True})
    assert state == "success"
    assert any(kind == "pg_dump" for kind, _ in seen), "pg_dump was never sampled while it ran"
    assert not [cmd for kind, cmd in seen if kind == "LEAK"]
    logs = [p for p in (tmp / "logs").rglob("*") if p.is_file()]
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "verified yes" in text and "dump_and_store" in str(logs), "the task logs were not found"
    assert password not in text
