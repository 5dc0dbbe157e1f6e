"""A real run: scheduler, dag-processor and api-server (LocalExecutor) run pg_backup__appdb.

`dags test` does not mask secrets, so this is the run that proves the database password appears in no
task log and in no process's argv while pg_dump runs.
"""

from __future__ import annotations

import threading
import time

import psutil

from scripts.stack.credentials import pg_password

DAG_ID = "pg_backup__appdb"


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
    services = airflow_services
    password = pg_password()
    services.wait_for_dag(DAG_ID)
    services.set_paused(DAG_ID, False)
    seen: list = []
    stop = threading.Event()
    watcher = threading.Thread(target=watch_argv, args=(password, seen, stop), daemon=True)
    watcher.start()
    run_id = services.api("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None})["dag_run_id"]
    deadline = time.monotonic() + 300
    state = "queued"
    while time.monotonic() < deadline and state not in ("success", "failed"):
        time.sleep(3)
        state = services.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
    stop.set()
    watcher.join()
    services.set_paused(DAG_ID, True)
    assert state == "success"
    assert any(kind == "pg_dump" for kind, _ in seen), "pg_dump was never sampled while it ran"
    assert not [cmd for kind, cmd in seen if kind == "LEAK"]
    logs = [p for p in services.logs.rglob("*") if p.is_file()]
    run_logs = [p for p in logs if f"run_id={run_id}" in str(p)]
    assert "verified OK" in "\n".join(p.read_text(errors="replace") for p in run_logs), "the run's logs were not found"
    assert "dump_and_store" in str(run_logs)
    assert not [p for p in logs if password in p.read_text(errors="replace")]
