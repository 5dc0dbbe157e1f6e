"""Archive moves on the real PostgreSQL 18: killed runs, held locks, backfills, foreign keys, drift,
restored keys and hostile names. Failure paths first."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from psycopg import sql

from dbops.lifecycle.archive import archive_policy
from dbops.lifecycle.archive_table import ensure_archive_table
from dbops.lifecycle.batches import Limits, Scope
from dbops.core.locks import job_lock
from dbops.lifecycle.catalog import describe
from dbops.operators.lifecycle import APPLICATION_NAME, LifecycleOperator
from scripts.stack.paths import ROOT
from tests.lifecycle.conftest import (
    DAYS,
    HOSTILE_KEY,
    HOSTILE_TABLE,
    HOSTILE_TIME,
    by_table,
    check,
    context,
    count,
    day,
    fingerprint,
    ops_rows,
    run,
    write_config,
    yaml_policies,
)

END = day(DAYS + 365)  # cutoff = END - 365d = day(DAYS): every row except the young children is due
# children g = 1..DAYS-1 are older than the cutoff, less the young ones (every 50th); parents of young
# children and the parent of the newest child (not due) are held back
YOUNG = (DAYS - 1) // 50
CHILDREN_DUE = DAYS - 1 - YOUNG
PARENTS_HELD = YOUNG + 1
SLOW = {"batch_seconds": "1ms", "pause": "300ms"}  # small batches, paused: time to interrupt the run


def archived(dsn: str, table: str = "parents") -> int:
    return count(dsn, f"SELECT count(*) FROM archive.{table}") if count(
        dsn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'archive' AND tablename = %s", (table,)) else 0


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


RUNNER = """
import sys
from datetime import datetime
from tests.lifecycle.conftest import run
from types import SimpleNamespace
run(SimpleNamespace(name=sys.argv[1]), "archive", datetime.fromisoformat(sys.argv[2]))
"""


@pytest.mark.parametrize("job", ["archive", "retention"])
def test_lifecycle_lock_held_by_another_run_fails_the_try_to_be_retried_never_skips(lab, job):
    before = fingerprint(lab.dsn)
    with job_lock("dbops_state", lab.name, "lifecycle"):  # another run of the target, on its own connection
        with pytest.raises(AirflowException, match=rf"lifecycle of {lab.name} is already running in another run "
                                                   r"\(ops-database backend pid \d+.*nothing was done.*retr") as busy:
            LifecycleOperator(task_id=job, target=lab.name, job=job, lock_wait=0).execute(context(END))
    assert not isinstance(busy.value, (AirflowSkipException, AirflowFailException))
    assert fingerprint(lab.dsn) == before
    assert ops_rows(lab.name) == []


def test_killed_task_then_rerun_moves_every_row_exactly_once(lab):
    write_config(lab, yaml_policies(), **SLOW)
    before = {t: fingerprint(lab.dsn, t) for t in ("parents", "children")}
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, lab.name, END.isoformat()], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: archived(lab.dsn, "children") >= 100)
    finally:
        proc.send_signal(signal.SIGKILL)  # the worker dies mid-run, between or inside a batch
        proc.wait(timeout=10)
    moved_before_kill = archived(lab.dsn, "children")
    assert 0 < moved_before_kill < CHILDREN_DUE
    assert {t: fingerprint(lab.dsn, t) for t in ("parents", "children")} == before  # nothing lost, nothing twice

    assert [r["status"] for r in ops_rows(lab.name) if r["table_name"] == "children"] == ["running"]

    write_config(lab, yaml_policies())
    result = by_table(run(lab, "archive", END, try_number=2))  # Airflow's retry of the killed try
    assert {t: fingerprint(lab.dsn, t) for t in ("parents", "children")} == before
    assert archived(lab.dsn, "children") == CHILDREN_DUE
    assert result["children"]["rows_moved"] == CHILDREN_DUE - moved_before_kill
    assert count(lab.dsn, "SELECT count(*) FROM children WHERE created_at < %s", (day(DAYS),)) == 0
    children = [r for r in ops_rows(lab.name) if r["table_name"] == "children"]
    assert [r["status"] for r in children] == ["abandoned", "done"]  # the killed try, reconciled by the next
    assert children[0]["error"].startswith("abandoned: try 1 of run test_run (started ")
    assert children[0]["error"].endswith("never finished (killed?); found by try 2 of run test_run")
    assert [r for r in ops_rows(lab.name) if r["status"] == "running"] == []


def test_backend_terminated_mid_run_is_retried_and_the_retry_finishes(lab):
    write_config(lab, yaml_policies(), **SLOW)
    before = fingerprint(lab.dsn, "children")

    def kill_backend() -> None:
        wait_for(lambda: archived(lab.dsn, "children") >= 50)
        with psycopg.connect(lab.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                         (APPLICATION_NAME,))

    killer = threading.Thread(target=kill_backend)
    killer.start()
    with pytest.raises(AirflowException) as failure:
        run(lab, "archive", END)
    killer.join()
    assert not isinstance(failure.value, AirflowFailException), "a lost connection is transient: retried"
    assert "transient" in str(failure.value)
    assert fingerprint(lab.dsn, "children") == before
    write_config(lab, yaml_policies())
    run(lab, "archive", END, try_number=2)
    assert fingerprint(lab.dsn, "children") == before
    assert archived(lab.dsn, "children") == CHILDREN_DUE


def test_a_row_lock_held_by_the_application_times_the_batch_out_and_it_is_retried(lab):
    """Our batch waits at most lock_timeout for the application's lock; an application update of a row our
    waiting batch holds gets it within its own lock_timeout of twice ours (no wait on the whole move)."""
    first, tenth = 1, 10  # oldest rows: both in the first batch
    limits = Limits(batch_seconds=0.2, pause=0, deadline=time.monotonic() + 120, lock_timeout=0.5,
                    statement_timeout=10, lock_retries=20, progress_every=5)
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM children")  # parents alone: every parent is due
    holder = psycopg.connect(lab.dsn)
    holder.execute("SELECT 1 FROM parents WHERE id = %s FOR UPDATE", (tenth,))
    app_error: list[BaseException] = []
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("SET application_name = 'lc_test_mover'")
        source = describe(conn, "public", "parents")
        ensure_archive_table(conn, source, 1.0)
        scope = Scope("public", "parents", ("id",), "created_at", day(DAYS), (), source.references)
        result = {}
        mover = threading.Thread(target=lambda: result.update(tally=archive_policy(conn, scope, source, limits,
                                                                                   True)))
        mover.start()
        with psycopg.connect(lab.dsn, autocommit=True) as watch:
            wait_for(lambda: watch.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                                           "'lc_test_mover' AND wait_event_type = 'Lock'").fetchone()[0] > 0)
        try:
            with psycopg.connect(lab.dsn) as app:
                app.execute("SET lock_timeout = '1s'")  # twice ours
                app.execute("UPDATE parents SET note = 'touched by the application' WHERE id = %s", (first,))
        except psycopg.Error as err:  # pragma: no cover - the assertion below reports it
            app_error.append(err)
        time.sleep(1.5)  # the holder keeps its lock for three of our lock timeouts
        holder.commit()
        holder.close()
        mover.join(timeout=60)
    assert app_error == []
    tally = result["tally"]
    assert tally.retries >= 1
    assert tally.rows == DAYS
    assert fingerprint(lab.dsn, "parents")[:2] == (DAYS, DAYS)
    assert count(lab.dsn, "SELECT count(*) FROM archive.parents WHERE id = %s AND note = 'touched by the "
                          "application'", (first,)) == 1


def test_key_already_in_the_archive_stops_that_policy_naming_the_key(lab):
    run(lab, "archive", day(400))  # cutoff day(35): parents 1..35 archived
    with psycopg.connect(lab.dsn, autocommit=True) as conn:  # someone restores an archived row
        conn.execute("INSERT INTO parents SELECT * FROM archive.parents WHERE id = 7")
    before = fingerprint(lab.dsn)
    with pytest.raises(AirflowFailException, match=r"parents: .*Key \(id\)=\(7\) already exists"):
        run(lab, "archive", day(500))
    assert fingerprint(lab.dsn)[0] == before[0]  # nothing lost
    assert count(lab.dsn, "SELECT count(*) FROM parents WHERE id = 7") == 1
    statuses = {r["table_name"]: r["status"] for r in ops_rows(lab.name) if r["cutoff"] == day(135)}
    assert statuses == {"parents": "failed", "children": "done", HOSTILE_TABLE: "done"}  # the others still ran


def test_a_changed_column_type_fails_before_anything_moves_and_a_new_column_is_added(lab):
    run(lab, "archive", day(400))
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE children ADD COLUMN \"new; col\" integer DEFAULT 42")
    run(lab, "archive", day(430))
    assert count(lab.dsn, 'SELECT count(*) FROM archive.children WHERE "new; col" = 42') > 0
    assert count(lab.dsn, 'SELECT count(*) FROM archive.children WHERE "new; col" IS NULL') > 0  # older rows
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE children ALTER COLUMN payload TYPE varchar(40)")
    base = {t: count(lab.dsn, f"SELECT count(*) FROM {t}") for t in ("parents", "children")}
    with pytest.raises(AirflowFailException, match=r"key 'lifecycle.policies\[1\].table': table 'children': column "
                                                   r"'payload' is character varying\(40\) in the table but text"):
        check(lab)
    with pytest.raises(AirflowFailException, match="payload"):
        run(lab, "archive", day(500))
    assert {t: count(lab.dsn, f"SELECT count(*) FROM {t}") for t in ("parents", "children")} == base


@pytest.mark.parametrize("on_delete", ["NO ACTION", "CASCADE"])
def test_foreign_keys_children_first_and_referenced_parents_held_back(lab, on_delete):
    """parents are listed first in the config: they are still moved after children, and a parent whose
    child stays (every 50th child is young) is held back, counted, never an FK violation; with ON DELETE
    CASCADE (rows locked first, then deleted) no child is ever cascaded away."""
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE children DROP CONSTRAINT children_parent_id_fkey, ADD CONSTRAINT "
                             "children_parent_id_fkey FOREIGN KEY (parent_id) REFERENCES parents (id) "
                             "ON DELETE {}").format(sql.SQL(on_delete)))
    children = fingerprint(lab.dsn, "children")
    result = by_table(run(lab, "archive", END))
    assert fingerprint(lab.dsn, "children") == children
    held = PARENTS_HELD
    assert result["children"]["rows_moved"] == CHILDREN_DUE
    assert result["parents"]["rows_moved"] == DAYS - held
    assert result["parents"]["rows_held_back"] == held
    assert result["parents"]["rows_behind"] == 0
    assert count(lab.dsn, "SELECT count(*) FROM parents p WHERE NOT EXISTS "
                          "(SELECT 1 FROM children c WHERE c.parent_id = p.id)") == 0
    assert count(lab.dsn, "SELECT count(*) FROM parents WHERE id % 50 <> 0") == 1  # the newest child's parent
    assert [r["table_name"] for r in ops_rows(lab.name)][:2] == ["children", "parents"]
    again = by_table(run(lab, "archive", END, run_id="rerun"))
    assert {t: p["rows_moved"] for t, p in again.items()} == {"children": 0, "parents": 0, HOSTILE_TABLE: 0}
    assert again["parents"]["rows_held_back"] == held


def test_backfill_three_months_moves_each_months_rows_only_and_a_rerun_moves_nothing(lab):
    write_config(lab, """
        - {table: parents, time_column: created_at, archive_after: 365d}""")
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM children")
    run(lab, "archive", day(365 + 31))
    ends = [day(365 + 31 + 28), day(365 + 31 + 28 + 31), day(365 + 31 + 28 + 31 + 30)]
    previous = day(31)
    for end in ends:  # backfilled runs, oldest first
        cutoff = end - (day(365) - day(0))
        moved = by_table(run(lab, "archive", end, run_id=f"backfill__{end:%Y-%m}"))["parents"]["rows_moved"]
        assert moved == count(lab.dsn, "SELECT count(*) FROM archive.parents WHERE created_at >= %s AND "
                                       "created_at < %s", (previous, cutoff)) == (cutoff - previous).days
        assert count(lab.dsn, "SELECT max(created_at) < %s FROM archive.parents", (cutoff,))
        previous = cutoff
    for end in ends:  # re-running any of them moves nothing
        assert by_table(run(lab, "archive", end, run_id="again"))["parents"]["rows_moved"] == 0
    assert fingerprint(lab.dsn)[:2] == (DAYS, DAYS)


def test_hostile_table_and_column_names(lab):
    result = by_table(run(lab, "archive", END))
    assert result[HOSTILE_TABLE]["rows_moved"] == DAYS
    archive = sql.Identifier("archive", HOSTILE_TABLE)
    with psycopg.connect(lab.dsn) as conn:
        assert conn.execute(sql.SQL("SELECT count(*), count(DISTINCT {}) FROM {}").format(
            sql.Identifier(HOSTILE_KEY), archive)).fetchone() == (DAYS, DAYS)
        assert conn.execute("SELECT count(*) FROM parents").fetchone()[0] == PARENTS_HELD  # not dropped
        assert conn.execute(sql.SQL("SELECT max({}) FROM {}").format(sql.Identifier(HOSTILE_TIME), archive)
                            ).fetchone()[0] < day(DAYS)


def test_time_budget_stops_cleanly_and_the_next_run_continues(lab):
    write_config(lab, yaml_policies(), time_budget="1ms")  # one batch per policy and run
    first = by_table(run(lab, "archive", END))
    assert first["children"]["status"] == "partial" and first["children"]["rows_behind"] > 0
    statuses = []
    for attempt in range(10):
        again = by_table(run(lab, "archive", END, run_id=f"next_{attempt}"))
        statuses.append({t: p["status"] for t, p in again.items()})
        if all(p["status"] == "done" for p in again.values()):
            break
    assert set(statuses[-1].values()) == {"done"}, statuses
    assert archived(lab.dsn, "children") == CHILDREN_DUE
    assert fingerprint(lab.dsn, "children")[:2] == (DAYS, DAYS)
