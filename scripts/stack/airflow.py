"""Airflow on the local stack: its environment, the CLI, one-time set-up (metadata DB, pools), the services."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from scripts.stack import log
from scripts.stack.credentials import airflow_admin_password, pg_password, secret
from scripts.stack.paths import AIRFLOW_HOME, AIRFLOW_PORT, PG_HOST, PG_PORT, POOLS_FILE, ROOT, UI_URL
from scripts.stack.mongo import DEMO_DATABASE, mongo_conn
from scripts.stack.postgres import PG_SUPERUSER, REPLICATION_ROLE, TEST_DATABASES, conn_uri

AIRFLOW_USER = "admin"
AIRFLOW_BIN = str(Path(sys.executable).parent / "airflow")
SERVICES = {  # every server listens on 127.0.0.1 only
    "api-server": ["api-server", "--host", PG_HOST, "--port", str(AIRFLOW_PORT)],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
}


def airflow_env(test: bool = False) -> dict[str, str]:
    """Environment for every Airflow process: settings and connections (the test databases if ``test``)."""
    metadata_db, ops_db = (TEST_DATABASES["airflow"], TEST_DATABASES["dbops"]) if test else ("airflow", "dbops")
    passwords_file = AIRFLOW_HOME / "simple_auth_manager_passwords.json"
    if not passwords_file.exists():
        AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
        passwords_file.touch(mode=0o600)
        passwords_file.write_text(json.dumps({AIRFLOW_USER: airflow_admin_password()}))
    return {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{UI_URL}/execution/",
        "AIRFLOW__API__BASE_URL": UI_URL,
        "AIRFLOW__API__SECRET_KEY": secret("api_secret_key"),
        "AIRFLOW__API_AUTH__JWT_SECRET": secret("jwt_secret"),
        "AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME": "21600",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
            f"postgresql+psycopg2://{PG_SUPERUSER}:{pg_password()}@{PG_HOST}:{PG_PORT}/{metadata_db}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
        "AIRFLOW_CONN_DBOPS_STATE": conn_uri(ops_db),
        "AIRFLOW_CONN_PG_APPDB": conn_uri("appdb"),
        "AIRFLOW_CONN_MONGO_CHATDB": mongo_conn(DEMO_DATABASE),
        "AIRFLOW_CONN_DBOPS_ANONYMIZE_SALT": json.dumps({"conn_type": "generic", "password": secret("anonymize_salt")}),
        "AIRFLOW_CONN_PG_APPDB_REPLICATION": conn_uri("appdb", REPLICATION_ROLE),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "plugins"), os.environ.get("PYTHONPATH")])),
    }


def airflow(*args: str, test: bool = False, **kwargs) -> subprocess.CompletedProcess:
    """Run the ``airflow`` CLI with the stack's environment (the test databases if ``test``)."""
    return subprocess.run([AIRFLOW_BIN, *args], env={**os.environ, **airflow_env(test)}, **kwargs)


def _airflow_once(test: bool, version: str, what: str, *args: str) -> None:
    """Run ``airflow *args`` against the (test) metadata database once per ``version``; later calls skip it."""
    database = TEST_DATABASES["airflow"] if test else "airflow"
    stamp = AIRFLOW_HOME / f".{args[0]}-{database}-{version}"
    if stamp.exists():
        return
    log(f"{what} ({database})")
    airflow(*args, test=test, check=True, stdout=subprocess.DEVNULL)
    stamp.touch()


def migrate_airflow_database(test: bool = False) -> None:
    """`airflow db migrate` once per database and Airflow version."""
    from airflow import __version__

    _airflow_once(test, __version__, "migrating the Airflow metadata database (first start only)", "db", "migrate")


def ensure_pools(test: bool = False) -> None:
    """Import include/config/pools.json (one pool per target) whenever it changed since the last import."""
    version = hashlib.sha256(POOLS_FILE.read_bytes()).hexdigest()[:12]
    _airflow_once(test, version, "importing Airflow pools", "pools", "import", str(POOLS_FILE))


def write_pools() -> None:
    """Regenerate include/config/pools.json from the targets in dbops.yaml."""
    from dbops.core.config import load_config

    POOLS_FILE.write_text(json.dumps(load_config().pools(), indent=2, sort_keys=True) + "\n")
    log(f"wrote {POOLS_FILE}")


def serve() -> int:
    """Run the Airflow services until Ctrl-C or until one exits, then stop them all; 1 if one exited by itself."""
    t0 = time.monotonic()
    logs = AIRFLOW_HOME / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = [subprocess.Popen([AIRFLOW_BIN, *args], env={**os.environ, **airflow_env()},
                              stdout=open(logs / f"{service}.log", "ab"), stderr=subprocess.STDOUT,
                              start_new_session=True)
             for service, args in SERVICES.items()]
    _wait_for_ui(procs)
    log(f"Airflow is up in {time.monotonic() - t0:.1f} s: {UI_URL}  login: {AIRFLOW_USER} / "
        f"{airflow_admin_password()}")
    log(f"service logs in {logs}; Ctrl-C stops everything")
    stop = {"now": False}

    def _request_stop(*_):
        stop["now"] = True

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    while not stop["now"] and all(p.poll() is None for p in procs):
        time.sleep(0.5)
    exited = [s for s, p in zip(SERVICES, procs) if p.poll() is not None]
    stop_processes(procs)
    log(f"stopped {', '.join(SERVICES)}")
    if exited and not stop["now"]:
        log(f"{', '.join(exited)} exited unexpectedly; see {logs}")
        return 1
    return 0


def _wait_for_ui(procs: list[subprocess.Popen], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return
        try:
            with urllib.request.urlopen(f"{UI_URL}/api/v2/version", timeout=2):
                return
        except OSError:
            time.sleep(1)


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group, SIGKILL what is still there after 30 s."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
