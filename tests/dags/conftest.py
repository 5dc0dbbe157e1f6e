"""A running Airflow for the DAG tests that need one: api-server, scheduler and dag-processor (LocalExecutor).

One per session, on the test databases, with its own copy of dbops.yaml whose backup store and staging
directory are in a temporary directory; task logs go to ``<tmp>/logs``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from scripts.stack.airflow import AIRFLOW_BIN, AIRFLOW_USER, airflow_env, stop_processes
from scripts.stack.credentials import airflow_admin_password
from scripts.stack.paths import ROOT
from tests.conftest import free_port, wait_for_port


@dataclass
class AirflowServices:
    """The running services: their base URL, temporary directory and environment; REST API and CLI helpers."""

    url: str
    tmp: Path
    env: dict[str, str]
    _token: str | None = field(default=None, repr=False)

    @property
    def logs(self) -> Path:
        return self.tmp / "logs"

    @property
    def store(self) -> Path:
        return self.tmp / "backups"

    def api(self, method: str, path: str, body: dict | None = None) -> dict:
        """Call the REST API (``/api/v2/...``) as the admin user; return the JSON answer."""
        if self._token is None:
            self._token = self._call("POST", "/auth/token",
                                     {"username": AIRFLOW_USER, "password": airflow_admin_password()})["access_token"]
        return self._call(method, path, body, self._token)

    def _call(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, data=json.dumps(body).encode() if body else None,
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """Run the ``airflow`` CLI with the services' environment; output captured as text."""
        return subprocess.run([AIRFLOW_BIN, *args], env=self.env, capture_output=True, text=True, timeout=300)

    def wait_for_dag(self, dag_id: str, timeout: float = 120) -> None:
        """Wait until the dag-processor has parsed ``dag_id``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api("GET", f"/api/v2/dags/{dag_id}")
                return
            except urllib.error.HTTPError:
                time.sleep(2)
        raise TimeoutError(f"{dag_id} was not parsed in {timeout} s")

    def set_paused(self, dag_id: str, paused: bool) -> None:
        self.api("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})


@pytest.fixture(scope="session")
def airflow_services(pg_server, tmp_path_factory) -> Iterator[AirflowServices]:
    """api-server, scheduler and dag-processor on the test databases; store and task logs in a tmp dir, staging
    under var/ (the throwaway verification cluster's system user cannot enter pytest's private tmp dir)."""
    tmp = tmp_path_factory.mktemp("airflow")
    staging = ROOT / "var" / "test-staging" / tmp.name
    port = free_port()
    config = ROOT / "include" / "config" / "dbops.yaml"
    text = config.read_text().replace("url: var/backups", f"url: {tmp / 'backups'}").replace(
        "staging_dir: var/staging", f"staging_dir: {staging}")
    (tmp / "dbops.yaml").write_text(text)
    env = {**os.environ, **airflow_env(test=True),
           "DBOPS_CONFIG": str(tmp / "dbops.yaml"),
           "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(tmp / "logs"),
           "AIRFLOW__API__BASE_URL": f"http://localhost:{port}",
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://localhost:{port}/execution/",
           "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
           "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5"}
    commands = [["api-server", "--host", "127.0.0.1", "--port", str(port)], ["scheduler"], ["dag-processor"]]
    procs = [subprocess.Popen([AIRFLOW_BIN, *cmd], env=env, stdout=open(tmp / f"{cmd[0]}.out", "wb"),
                              stderr=subprocess.STDOUT, start_new_session=True) for cmd in commands]
    try:
        wait_for_port(port, timeout=120)
        yield AirflowServices(url=f"http://localhost:{port}", tmp=tmp, env=env)
    finally:
        stop_processes(procs)
        shutil.rmtree(staging, ignore_errors=True)
