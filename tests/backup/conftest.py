"""Fixtures and helpers of the backup tests: a small target database with its own config, and the
backup operators run the way the task runner runs them, `execute(context)`.

The context is a FAKE minimal stand-in for Airflow's (logical_date, run_id, dag_run, ti), which only a
scheduler makes. ``NAME`` is the current test's target (set by the ``target`` fixture).
"""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import psycopg
import pytest

from dbops.core.config import load_config
from dbops.hooks.ops import OpsDatabaseHook
from dbops.hooks.store import get_store
from dbops.operators.backup import (
    BackupRetentionOperator,
    PgBackupOperator,
    ScratchDatabaseOperator,
    VerifyBackupOperator,
)
from scripts.stack.paths import ROOT
from scripts.stack.postgres import conn_uri, libpq_conninfo
from tests.conftest import config_yaml

NAME = "set by the target fixture"
DAY = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id), total numeric(10,2),
                     placed_at timestamptz NOT NULL);
CREATE TABLE events (id bigint, at date NOT NULL, payload jsonb) PARTITION BY RANGE (at);
CREATE TABLE events_2026_10 PARTITION OF events FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
CREATE TABLE events_2026_11 PARTITION OF events FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 2000) g;
INSERT INTO orders SELECT g, 1 + g % 2000, (g % 500) * 1.25, '2026-11-01'::timestamptz + g * interval '1 minute'
  FROM generate_series(1, 30000) g;
INSERT INTO events SELECT g, '2026-10-01'::date + (g % 60), jsonb_build_object('n', g) FROM generate_series(1, 20000) g;
DELETE FROM orders WHERE id % 7 = 0;
"""


def context(logical_date: datetime | None = DAY, run_id: str = "test_run", xcom: dict | None = None,
            run_type: str = "scheduled") -> dict:
    """FAKE minimal Airflow context: what the operators read from it."""
    ti = SimpleNamespace(xcom_pull=lambda task_ids: (xcom or {}).get(task_ids))
    return {"logical_date": logical_date, "run_id": run_id, "ti": ti,
            "dag_run": SimpleNamespace(run_after=DAY + timedelta(hours=1), run_type=run_type)}


def on_time(run_id: str, run_type: str = "scheduled") -> dict:
    """The context of a run that starts on time: its logical date is a minute ago."""
    return context(datetime.now(timezone.utc) - timedelta(minutes=1), run_id=run_id, run_type=run_type)


@pytest.fixture
def target(scratch_db, tmp_path, monkeypatch, pg_server):
    """A small target database with PK, unique, FK, partitions and dead rows; its own config and name.

    Its staging directory is under var/ (deleted afterwards): the throwaway verification cluster lives there,
    and its server's system user cannot enter pytest's private temporary directory."""
    global NAME
    database = scratch_db()
    NAME = f"bk_{database[-12:]}"
    with psycopg.connect(libpq_conninfo(database)) as conn:
        conn.execute(SCHEMA)
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{NAME.upper()}", conn_uri(database))
    config_path = tmp_path / "dbops.yaml"
    staging = ROOT / "var" / "test-staging" / NAME
    config_path.write_text(config_yaml(tmp_path, f"""\
  {NAME}:
    conn_id: pg_{NAME}
    backup: {{storage: local, retention: {{daily: 2, weekly: 0, monthly: 0}}, jobs: 2, lock_wait_timeout: 2s}}
""").replace(f"staging_dir: {tmp_path / 'staging'}", f"staging_dir: {staging}"))
    monkeypatch.setenv("DBOPS_CONFIG", str(config_path))
    yield SimpleNamespace(database=database, config_path=config_path, tmp=tmp_path, staging=staging)
    shutil.rmtree(staging, ignore_errors=True)


def backup(ctx=None) -> dict:
    return PgBackupOperator(task_id="dump_and_store", target=NAME).execute(ctx or context())


def verify(backup_id: str, run_id: str = "test_run") -> dict:
    ScratchDatabaseOperator(task_id="create_scratch", target=NAME).execute(context(run_id=run_id))
    try:
        return VerifyBackupOperator(task_id="verify", target=NAME, backup_id=backup_id).execute(
            context(run_id=run_id))
    finally:
        ScratchDatabaseOperator(task_id="drop_scratch", target=NAME, drop=True).execute(context(run_id=run_id))


def throwaway_connection(run_id: str = "test_run", timeout: float = 60) -> psycopg.Connection:
    """A superuser connection to the run's throwaway verification cluster, as soon as it accepts one."""
    import time

    from dbops.backup.throwaway import PORT, SUPERUSER, cluster_dir

    record = cluster_dir(load_config(), NAME, run_id) / "socket_dir"
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(host=record.read_text(), port=PORT, user=SUPERUSER, dbname="postgres",
                                   autocommit=True)
        except (OSError, psycopg.OperationalError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def store():
    config = load_config()
    return get_store(config.storage["local"])


def ops() -> OpsDatabaseHook:
    return OpsDatabaseHook(postgres_conn_id="dbops_state")


def catalog_row(backup_id: str):
    return ops().get_first("SELECT verified, status, total_rows FROM dbops.backups WHERE backup_id = %s",
                           parameters=(backup_id,))


def full_backups() -> list[tuple]:
    """(backup_id, status, taken_at, covers, run_type, storage) of every full backup of the target, oldest first."""
    return ops().get_records("SELECT backup_id, status, taken_at, covers, run_type, storage FROM dbops.backups "
                             "WHERE target = %s AND kind = 'full' ORDER BY taken_at", parameters=(NAME,))


def age_backup(backup_id: str, days: float) -> None:
    """Make a backup's catalog row say its snapshot is ``days`` older (a test cannot wait for days to pass)."""
    ops().run("UPDATE dbops.backups SET taken_at = taken_at - %s * interval '1 day' WHERE backup_id = %s",
              parameters=(days, backup_id))


def retention(ctx=None) -> dict:
    return BackupRetentionOperator(task_id="retention", target=NAME).execute(ctx or context())


def dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).dags[dag_id]


def raised(call) -> BaseException | None:
    """What ``call()`` raised (handed from a helper thread to the test), or None."""
    try:
        call()
    except BaseException as err:
        return err
    return None
