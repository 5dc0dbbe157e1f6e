"""Where the local stack lives (everything under var/) and the ports it listens on."""

from __future__ import annotations

import os
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VAR = ROOT / "var"
PGDATA = VAR / "pgdata"
MONGO_DATA = VAR / "mongodata"
AIRFLOW_HOME = VAR / "airflow"
SECRETS = VAR / "secrets"
POOLS_FILE = ROOT / "include" / "config" / "pools.json"
PG_HOST = "127.0.0.1"
PG_PORT = int(os.environ.get("DBOPS_PG_PORT", "55432"))
MONGO_PORT = int(os.environ.get("DBOPS_MONGO_PORT", "27018"))
AIRFLOW_PORT = int(os.environ.get("DBOPS_AIRFLOW_PORT", "8080"))
UI_URL = f"http://localhost:{AIRFLOW_PORT}"


def port_taken(port: int) -> bool:
    """True when another process listens on ``port`` of PG_HOST."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((PG_HOST, port))
        except OSError:
            return True
    return False


def require_free_port(port: int, what: str, knob: str) -> None:
    """Stop at once, clearly, when another process listens on ``port``."""
    if port_taken(port):
        raise SystemExit(f"[devstack] {PG_HOST}:{port} ({what}) is taken by another process; "
                         f"stop it or choose another port, e.g. {knob}={port + 1}")
