"""Backfills as operators run them: `airflow backfill create` with a running scheduler.

Each test backfills three missed nights (the three latest slots of the DAG's schedule: no run exists for
them), then the same nights again with ``--reprocess-behavior completed``, and checks what every run
did against the README's "Backfills" table: the ops database and the task logs.
"""

from __future__ import annotations

import shutil
import time
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
from croniter import croniter
from psycopg import sql

from dbops.core.config import load_config
from scripts.stack.postgres import TEST_DATABASES, libpq_conninfo

TARGET = "appdb"
BACKUP_DAG = f"pg_backup__{TARGET}"
MAINTENANCE_DAG = f"pg_maintenance_daily__{TARGET}"
NIGHTS = 3


def ops() -> psycopg.Connection:
    return psycopg.connect(libpq_conninfo(TEST_DATABASES["dbops"]), autocommit=True)


def missed_nights(schedule: str) -> list[datetime]:
    """The latest NIGHTS slots of ``schedule`` that have passed, oldest first."""
    slots = croniter(schedule, datetime.now(timezone.utc))
    return sorted(slots.get_prev(datetime) for _ in range(NIGHTS))


def forget_runs(services, dag_id: str, nights: list[datetime]) -> None:
    """Pause the DAG, end unfinished backfills of it and delete its runs of ``nights``: they were missed."""
    services.wait_for_dag(dag_id)
    services.set_paused(dag_id, True)
    for backfill in services.api("GET", f"/api/v2/backfills?dag_id={dag_id}")["backfills"]:
        if backfill["completed_at"] is None:
            services.api("PUT", f"/api/v2/backfills/{backfill['id']}/cancel")
    for run in runs_of(services, dag_id, nights):
        services.api("DELETE", f"/api/v2/dags/{dag_id}/dagRuns/{run['dag_run_id']}")


def runs_of(services, dag_id: str, nights: list[datetime]) -> list[dict]:
    """The DAG's runs of ``nights``, oldest first."""
    query = (f"logical_date_gte={nights[0].isoformat().replace('+00:00', 'Z')}"
             f"&logical_date_lte={nights[-1].isoformat().replace('+00:00', 'Z')}&order_by=logical_date")
    return services.api("GET", f"/api/v2/dags/{dag_id}/dagRuns?{query}")["dag_runs"]


def backfill(services, dag_id: str, nights: list[datetime], *options: str) -> list[dict]:
    """`airflow backfill create` over ``nights``, unpause until the scheduler finished it; return the runs."""
    result = services.cli("backfill", "create", "--dag-id", dag_id, "--from-date", nights[0].isoformat(),
                          "--to-date", nights[-1].isoformat(), "--max-active-runs", "1", *options)
    assert result.returncode == 0, result.stdout + result.stderr
    created = max(services.api("GET", f"/api/v2/backfills?dag_id={dag_id}")["backfills"], key=lambda b: b["id"])
    services.set_paused(dag_id, False)  # the scheduler runs no run of a paused DAG, backfill runs included
    deadline = time.monotonic() + 600
    while services.api("GET", f"/api/v2/backfills/{created['id']}")["completed_at"] is None:
        assert time.monotonic() < deadline, f"backfill {created['id']} of {dag_id} did not finish in 600 s"
        time.sleep(3)
    services.set_paused(dag_id, True)
    return runs_of(services, dag_id, nights)


def task_log(services, dag_id: str, run_id: str, task_id: str) -> str:
    """The newest attempt's log of a task instance."""
    folder = services.logs / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    attempts = sorted(folder.glob("attempt=*.log"), key=lambda p: int(p.stem.split("=")[1]))
    assert attempts, f"no log in {folder}"
    return attempts[-1].read_text()


def backups_since(started: datetime) -> list[tuple]:
    """Full backups of the target catalogued since ``started``, whatever their status (retention may delete)."""
    with ops() as conn:
        return conn.execute(
            "SELECT backup_id, run_id, taken_at, covers, run_type, status FROM dbops.backups "
            "WHERE target = %s AND kind = 'full' AND created_at >= %s ORDER BY taken_at", (TARGET, started)).fetchall()


@pytest.fixture
def no_backup_since_the_nights(airflow_services):
    """Earlier backups of the target are gone: deleted from this store and marked ``deleted`` in the catalog."""
    with ops() as conn:
        for (backup_id,) in conn.execute("SELECT backup_id FROM dbops.backups WHERE target = %s AND kind = 'full' "
                                         "AND status <> 'deleted'", (TARGET,)).fetchall():
            shutil.rmtree(airflow_services.store / backup_id, ignore_errors=True)
        conn.execute("UPDATE dbops.backups SET status = 'deleted', deleted_at = now() "
                     "WHERE target = %s AND kind = 'full' AND status <> 'deleted'", (TARGET,))


def test_backfill_of_three_missed_nights_makes_one_backup_and_a_second_backfill_none(
        airflow_services, no_backup_since_the_nights):
    services = airflow_services
    nights = missed_nights(load_config().targets[TARGET].backup.schedule)
    forget_runs(services, BACKUP_DAG, nights)
    started = datetime.now(timezone.utc)

    runs = backfill(services, BACKUP_DAG, nights)

    assert [(r["run_type"], r["state"]) for r in runs] == [("backfill", "success")] * NIGHTS
    [(backup_id, run_id, taken_at, covers, run_type, status)] = backups_since(started)
    assert (run_id, covers, run_type, status) == (runs[0]["dag_run_id"], nights[0], "backfill", "complete")
    assert backup_id == f"{TARGET}/full/{taken_at.astimezone(timezone.utc):%Y%m%dT%H%M%SZ}"
    assert (services.store / backup_id / "manifest.json").is_file()
    first = task_log(services, BACKUP_DAG, runs[0]["dag_run_id"], "dump_and_store")
    assert "no backup was taken since; dumping now" in first and "stored OK: backup " in first and backup_id in first
    for run, night in zip(runs[1:], nights[1:]):
        later = task_log(services, BACKUP_DAG, run["dag_run_id"], "dump_and_store")
        assert f"complete, nothing dumped: run for the past period {night.isoformat()}; backup " in later
        assert backup_id in later and "dumping now" not in later

    again = backfill(services, BACKUP_DAG, nights, "--reprocess-behavior", "completed")

    assert [(r["run_type"], r["state"]) for r in again] == [("backfill", "success")] * NIGHTS
    assert backups_since(started) == [(backup_id, run_id, taken_at, covers, run_type, "complete")]
    logs = [task_log(services, BACKUP_DAG, r["dag_run_id"], "dump_and_store") for r in again]
    assert "complete, nothing dumped: backup " in logs[0] and "of this run is already stored" in logs[0]
    assert all(backup_id in log and "complete, nothing dumped" in log for log in logs)
    assert not [log for log in logs if "dumping now" in log]


@pytest.fixture
def table_due_for_vacuum():
    """A table of the target with dead tuples over the daily thresholds; autovacuum off, so only we vacuum it."""
    name = f"backfill_probe_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_conninfo(TARGET), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, payload text) WITH (autovacuum_enabled = off)")
                     .format(sql.Identifier(name)))
        conn.execute(sql.SQL("INSERT INTO {} SELECT i, repeat('x', 100) FROM generate_series(1, 5000) i")
                     .format(sql.Identifier(name)))
        conn.execute(sql.SQL("DELETE FROM {} WHERE id <= 2000").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(libpq_conninfo(TARGET), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))


def maintenance_log(nights: list[datetime]) -> list[tuple]:
    with ops() as conn:
        return conn.execute(
            "SELECT logical_date, object_name, action, status FROM dbops.maintenance_log WHERE target = %s "
            "AND kind = 'daily' AND logical_date = ANY(%s) ORDER BY id", (TARGET, nights)).fetchall()


def planned_actions(night: datetime) -> list[str]:
    with ops() as conn:
        plan = conn.execute("SELECT plan FROM dbops.maintenance_runs WHERE target = %s AND kind = 'daily' "
                            "AND logical_date = %s", (TARGET, night)).fetchone()[0]
    return [f"{a['action']} {a['name']}" for a in plan["plan"]["actions"]]


def test_backfilled_daily_maintenance_maintains_the_present_once(airflow_services, table_due_for_vacuum):
    services = airflow_services
    nights = missed_nights(load_config().targets[TARGET].maintenance.daily)
    forget_runs(services, MAINTENANCE_DAG, nights)
    with ops() as conn:  # what earlier sessions did for these dates: the probe table is new, so none of it
        conn.execute("DELETE FROM dbops.maintenance_log WHERE target = %s AND kind = 'daily' "
                     "AND logical_date = ANY(%s)", (TARGET, nights))

    runs = backfill(services, MAINTENANCE_DAG, nights)

    assert [(r["run_type"], r["state"]) for r in runs] == [("backfill", "success")] * NIGHTS
    done = maintenance_log(nights)
    assert (nights[0], table_due_for_vacuum, "vacuum_analyze", "done") in done
    assert {row[0] for row in done} == {nights[0]}, "only the first backfilled run found work"
    assert f"vacuum_analyze {table_due_for_vacuum}" in planned_actions(nights[0])
    assert planned_actions(nights[1]) == planned_actions(nights[2]) == []

    again = backfill(services, MAINTENANCE_DAG, nights, "--reprocess-behavior", "completed")

    assert [(r["run_type"], r["state"]) for r in again] == [("backfill", "success")] * NIGHTS
    assert maintenance_log(nights) == done
    assert [planned_actions(night) for night in nights] == [[]] * NIGHTS


ARCHIVE_DAG = f"pg_archive__{TARGET}"
MONTHS_2025 = [datetime(2025, month, 1, 2, 0, tzinfo=timezone.utc) for month in (1, 2, 3)]


def archive_runs_of(months: list[datetime]) -> dict[datetime, tuple]:
    """The newest lifecycle record of audit_logs per archive run of ``months``: (cutoff, status)."""
    with ops() as conn:
        rows = conn.execute(
            "SELECT DISTINCT ON (logical_date) logical_date, cutoff, status FROM dbops.lifecycle_runs "
            "WHERE target = %s AND job = 'archive' AND table_name = 'audit_logs' AND logical_date = ANY(%s) "
            "ORDER BY logical_date, id DESC", (TARGET, months)).fetchall()
    return {logical_date: (cutoff, status) for logical_date, cutoff, status in rows}


def test_backfill_over_three_2025_months_archives_each_months_rows(airflow_services):
    """A backfill as far back as the data reaches does each period's work; catchup stays off."""
    services = airflow_services
    forget_runs(services, ARCHIVE_DAG, MONTHS_2025)

    runs = backfill(services, ARCHIVE_DAG, MONTHS_2025)

    assert [(r["run_type"], r["state"]) for r in runs] == [("backfill", "success")] * 3
    for run in runs:
        tasks = services.api("GET", f"/api/v2/dags/{ARCHIVE_DAG}/dagRuns/{run['dag_run_id']}/taskInstances")
        assert {t["task_id"]: t["state"] for t in tasks["task_instances"]} == {
            "check_policies": "success", "archive": "success"}, "a run with its tasks, not an empty green one"
    recorded = archive_runs_of(MONTHS_2025)
    assert recorded == {month: (month - timedelta(days=730), "done") for month in MONTHS_2025}
    with psycopg.connect(libpq_conninfo(TARGET)) as conn:
        assert conn.execute("SELECT count(*) FROM audit_logs WHERE created_at < %s",
                            (MONTHS_2025[-1] - timedelta(days=730),)).fetchone()[0] == 0
    every_run = services.api("GET", f"/api/v2/dags/{ARCHIVE_DAG}/dagRuns?limit=100")["dag_runs"]
    unasked = [r for r in every_run if r["run_type"] == "scheduled"
               and datetime.fromisoformat(r["logical_date"].replace("Z", "+00:00")) < MONTHS_2025[-1] + timedelta(days=365)]
    assert unasked == [], "catchup is off: the far start date must not make the scheduler fill the past"
