"""make run / make up refuse a port another process listens on, naming the knob that moves it."""

from __future__ import annotations

import socket
import subprocess
import sys

from scripts.stack.paths import ROOT, port_taken


def test_taken_airflow_port_stops_make_run_at_once_with_the_knob():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = subprocess.run([sys.executable, "scripts/devstack.py", "run"], cwd=ROOT, timeout=60,
                                capture_output=True, text=True, env={"DBOPS_AIRFLOW_PORT": str(port),
                                                                     "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert f"127.0.0.1:{port} (the Airflow UI) is taken by another process" in result.stderr
    assert f"DBOPS_AIRFLOW_PORT={port + 1}" in result.stderr
    assert "starting PostgreSQL" not in result.stdout  # nothing was started


def test_free_port_is_not_reported_taken():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert not port_taken(port)
