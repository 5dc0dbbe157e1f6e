"""pg_archive__ and pg_retention__ as whole DAG runs (``dag.test()``) on a scratch target: the cutoff comes
from the run's logical date (zero-length data interval), the heavy tasks are in the target's pool."""

from __future__ import annotations

from datetime import timedelta

from dbops.core.config import pool_name
from scripts.stack.paths import ROOT
from tests.lifecycle.conftest import DAYS, count, day, ops_rows, write_config


def dags():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags" / "pg_lifecycle.py"))
    assert bag.import_errors == {}
    return bag.dags


def states(run) -> dict[str, str]:
    return {ti.task_id: ti.state for ti in run.get_task_instances()}


def test_archive_and_retention_dag_runs_cut_off_from_their_logical_date(lab):
    # long ages: the runs' logical dates must be after the DAGs' start date (2026-01-01)
    write_config(lab, """
        - {table: parents, time_column: created_at, archive_after: 1000d, retention: 1100d}
        - {table: children, time_column: created_at, archive_after: 1000d, retention: 1100d}
        - {table: 'public.children_daily', time_column: created_at, archive_after: 1d, cadence: daily}""")
    import psycopg

    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE children_daily (id int PRIMARY KEY, created_at timestamptz NOT NULL)")
        conn.execute("CREATE INDEX ON children_daily (created_at)")
        conn.execute("INSERT INTO children_daily SELECT g, %s::timestamptz + g * interval '1 hour' "
                     "FROM generate_series(1, 100) g", (day(0),))
    bag = dags()
    archive, retention = bag[f"pg_archive__{lab.name}"], bag[f"pg_retention__{lab.name}"]
    assert {t.task_id for t in archive.tasks} == {"check_policies", "archive"}
    assert {t.task_id for t in retention.tasks} == {"check_policies", "archive_daily", "purge"}
    for task in (archive.get_task("archive"), retention.get_task("archive_daily"), retention.get_task("purge")):
        assert task.pool == pool_name(lab.name) and task.execution_timeout > timedelta(minutes=10)
    assert archive.schedule == "0 2 1 * *" and retention.schedule == "30 3 * * *"

    run = archive.test(logical_date=day(1000 + 100))  # cutoff day(100)
    assert states(run) == {"check_policies": "success", "archive": "success"}
    assert count(lab.dsn, "SELECT max(created_at) FROM archive.parents") < day(100)
    assert count(lab.dsn, "SELECT min(created_at) FROM parents WHERE id % 50 <> 0") == day(100)
    assert count(lab.dsn, "SELECT count(*) FROM children_daily") == 100  # daily: the retention DAG's

    run = retention.test(logical_date=day(1100 + 50) + timedelta(hours=3))  # purge cutoff day(50) 03:00
    assert run.state == "success", states(run)
    assert count(lab.dsn, "SELECT count(*) FROM archive.parents WHERE created_at < %s",
                 (day(50) + timedelta(hours=3),)) == 0
    assert count(lab.dsn, "SELECT count(*) FROM archive.children_daily") == 100  # all older than 1 day
    jobs = {(r["job"], r["table_name"]) for r in ops_rows(lab.name) if r["status"] == "done"}
    assert ("archive", "public.children_daily") in jobs and ("retention", "parents") in jobs
    assert count(lab.dsn, "SELECT count(*) FROM archive.parents") + count(
        lab.dsn, "SELECT count(*) FROM parents") == DAYS - 51 + 1  # parents 1..51 are past it, 50 is held back
