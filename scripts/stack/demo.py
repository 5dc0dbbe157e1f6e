"""`make demo`: every DAG once end to end with `airflow dags test`, the alert DAGs first and again last."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from scripts.stack.airflow import airflow, airflow_env
from scripts.stack.paths import AIRFLOW_HOME, ROOT
from scripts.stack.postgres import libpq_conninfo


def demo_conf(family: str) -> dict | None:
    """Params for the demo run of an on-demand DAG family (the part of the DAG id before ``__``)."""
    if family == "db_alert_silence":
        return {"rule": "replication_lag_.*", "duration": "1h", "comment": "demo: replica rebuild tonight"}
    if family == "pg_restore":
        return {"database": "demo_restored", "overwrite": True}
    if family == "mongo_restore":
        return {"database": "chatdb_restored", "overwrite": True}
    if family == "pg_restore_pitr":  # to the marker the pg_pitr_test__ run (sorted before) just wrote
        import psycopg

        with psycopg.connect(libpq_conninfo("appdb")) as conn:
            marker = conn.execute("SELECT max(written_at) FROM dbops_pitr_heartbeat WHERE position = 'before'")
            target_time = marker.fetchone()[0]
        # outside the project (a restore refuses anywhere inside it); the previous demo's copy is replaced
        restored = Path(tempfile.gettempdir()) / "dbops_demo_pitr_restored"
        shutil.rmtree(restored, ignore_errors=True)
        return {"target_time": target_time.isoformat(), "data_directory": str(restored)}
    if family == "pg_tenant_export":
        import psycopg

        with psycopg.connect(libpq_conninfo("appdb")) as conn:
            return {"tenant_id": str(conn.execute("SELECT id FROM tenants ORDER BY slug LIMIT 1").fetchone()[0])}
    if family == "pg_anonymize":
        import psycopg

        with psycopg.connect(libpq_conninfo("appdb")) as conn:  # a user with orders, payments and sessions
            user = conn.execute("SELECT u.id FROM users u WHERE EXISTS (SELECT FROM orders o JOIN payments p "
                                "ON p.order_id = o.id WHERE o.user_id = u.id) AND EXISTS (SELECT FROM user_sessions s "
                                "WHERE s.user_id = u.id) ORDER BY u.id LIMIT 1").fetchone()[0]
        return {"user_id": str(user), "reason": "demo: erasure request DEMO-1"}
    return None


def local_dag_ids() -> list[str]:
    """DAG ids in dags/, parsed here; an import error stops the demo with the error."""
    os.environ.update(airflow_env())
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit("DAG import errors:\n" + "\n".join(bag.import_errors.values()))
    return sorted(bag.dag_ids)


def run_demo() -> int:
    """Run every DAG once end to end, then the alert DAGs again; one line per run; non-zero if any failed.

    The alert DAGs run first and last, so what the other DAGs fixed (e.g. "no verified backup")
    shows up as a resolved alert; the alert transitions of the demo are printed at the end.
    """
    dag_ids = local_dag_ids()
    alert_dags = [d for d in dag_ids if d.startswith("db_alerts__")]
    started = _ops_now()
    results = [_demo_run(dag_id) for dag_id in alert_dags + [d for d in dag_ids if d not in alert_dags]]
    results += [_demo_run(dag_id, again=True) for dag_id in alert_dags]
    print("\n".join(line for line, _ in results))
    print(_alert_transitions_since(started))
    print(_lifecycle_since(started))
    return 1 if any(not ok for _, ok in results) else 0


def _demo_run(dag_id: str, again: bool = False) -> tuple[str, bool]:
    t0 = time.monotonic()
    out = AIRFLOW_HOME / "logs" / f"demo-{dag_id}{'-again' if again else ''}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    params = demo_conf(dag_id.split("__")[0])
    conf = ["-c", json.dumps(params)] if params else []
    with open(out, "wb") as fh:
        rc = airflow("dags", "test", dag_id, *conf, stdout=fh, stderr=subprocess.STDOUT).returncode
    label = f"{dag_id} (again)" if again else dag_id
    line = f"{label:45s} {'success' if rc == 0 else 'failed':8s} {time.monotonic() - t0:7.1f} s"
    return line + (f"   (log: {out})" if rc else ""), rc == 0


def _ops_now():
    import psycopg

    with psycopg.connect(libpq_conninfo("dbops")) as conn:
        return conn.execute("SELECT now()").fetchone()[0]


def _alert_transitions_since(started) -> str:
    import psycopg

    with psycopg.connect(libpq_conninfo("dbops")) as conn:
        rows = conn.execute("SELECT kind, target, rule, summary FROM dbops.alert_events WHERE at >= %s ORDER BY id",
                            (started,)).fetchall()
    if not rows:
        return "alerts: no alert changed state in this demo (causes fixed by an earlier demo; `make clean` starts over)"
    return "alerts notified in this demo:\n" + "\n".join(
        f"  {kind.upper():8s} {target}: {rule}: {'was: ' if kind == 'resolved' else ''}{summary}"
        for kind, target, rule, summary in rows)


def _lifecycle_since(started) -> str:
    import psycopg

    with psycopg.connect(libpq_conninfo("dbops")) as conn:
        rows = conn.execute(
            "SELECT target, job, table_name, status, rows_moved, rows_purged, rows_held_back, cutoff "
            "FROM dbops.lifecycle_runs WHERE started_at >= %s ORDER BY id", (started,)).fetchall()
    if not rows:
        return "lifecycle: no archive or retention run in this demo"
    return "lifecycle in this demo:\n" + "\n".join(
        f"  {target}: {job} {table}: {status}, {moved} moved, {purged} purged, {held} held back, "
        f"cutoff {cutoff:%Y-%m-%d}" for target, job, table, status, moved, purged, held, cutoff in rows)
