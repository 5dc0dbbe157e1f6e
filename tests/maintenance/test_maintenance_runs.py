"""Weekly and daily maintenance on the real PostgreSQL 18: bounded locks, hostile names, dying targets,
idempotence per logical date, REINDEX CONCURRENTLY leftovers, and whole DAG runs.

Operators run the way the task runner runs them, ``execute(context)`` with a FAKE minimal context
(logical_date, run_id, dag_run, params, ti with try_number and XCom); the DAG-level tests use ``dag.test()``.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from psycopg import sql

from dbops.hooks.ops import OpsDatabaseHook
from dbops.maintenance import log
from dbops.maintenance.plan import REINDEX, VACUUM_FULL, Action
from dbops.maintenance.scan import APPLICATION_NAME
from dbops.operators.maintenance import (
    MaintenanceActionOperator,
    MaintenancePlanOperator,
    MaintenanceReportOperator,
)
from scripts.stack.paths import ROOT
from scripts.stack.postgres import TEST_DATABASES, conn_uri, libpq_conninfo

NAME = "set by the target fixture"
DAY = datetime(2026, 11, 22, 1, 0, tzinfo=timezone.utc)
LOCK_TIMEOUT = 1.0
RETRIES = 2
HOSTILE_SCHEMA = 'Ops "Schema"; x'
HOSTILE_TABLE = 'Weird "Name"; DROP TABLE bloated; --'
HOSTILE_INDEX = 'Idx "On"; Weird'
SCHEMA = sql.SQL("""
CREATE TABLE bloated (id int PRIMARY KEY, payload text NOT NULL);
CREATE TABLE calm (id int PRIMARY KEY, payload text NOT NULL);
CREATE SCHEMA {schema};
CREATE TABLE {schema}.{table} ("Mixed Case" int PRIMARY KEY, "semi;colon" text NOT NULL);
CREATE INDEX {index} ON {schema}.{table} ("semi;colon");
ALTER TABLE bloated SET (autovacuum_enabled = false);
ALTER TABLE {schema}.{table} SET (autovacuum_enabled = false);
INSERT INTO bloated SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 40000) g;
INSERT INTO calm SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 5000) g;
INSERT INTO {schema}.{table} SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 30000) g;
DELETE FROM bloated WHERE id % 4 <> 0;
DELETE FROM {schema}.{table} WHERE "Mixed Case" % 4 <> 0;
""").format(schema=sql.Identifier(HOSTILE_SCHEMA), table=sql.Identifier(HOSTILE_TABLE),
            index=sql.Identifier(HOSTILE_INDEX))


def context(logical_date: datetime | None = DAY, run_id: str = "test_run", try_number: int = 1,
            params: dict | None = None, xcom: dict | None = None) -> dict:
    """FAKE minimal Airflow context: what the maintenance operators read from it."""
    store = xcom if xcom is not None else {}
    ti = SimpleNamespace(try_number=try_number, max_tries=RETRIES,
                         xcom_push=lambda key, value: store.__setitem__(key, value),
                         xcom_pull=lambda task_ids, key="return_value": store.get(key))
    return {"logical_date": logical_date, "run_id": run_id, "ti": ti, "params": params or {},
            "dag_run": SimpleNamespace(run_after=DAY + timedelta(hours=1))}


@pytest.fixture
def target(scratch_db, tmp_path, monkeypatch, pg_server):
    """A target with two bloated tables (one with hostile names), a calm one, and its own config."""
    global NAME
    database = scratch_db()
    NAME = f"mt_{database[-12:]}"
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("SELECT pg_stat_force_next_flush()")  # the load's counts land before ANALYZE resets them
        conn.execute("ANALYZE")
        conn.execute("SELECT pg_stat_force_next_flush()")
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{NAME.upper()}", conn_uri(database))
    config_path = tmp_path / "dbops.yaml"
    config_path.write_text(f"""
ops_conn_id: dbops_state
storage: {{}}
targets:
  {NAME}:
    conn_id: pg_{NAME}
    maintenance: {{bloat_pct: 20, min_bytes: 200KB, lock_timeout: {LOCK_TIMEOUT}s, lock_retries: {RETRIES},
                   lock_retry_delay: 1s, vacuum_min_dead: 100, analyze_min_mod: 100, long_transaction: 1h}}
""")
    monkeypatch.setenv("DBOPS_CONFIG", str(config_path))
    return SimpleNamespace(database=database, dsn=libpq_conninfo(database))


def plan(ctx: dict | None = None, kind: str = "weekly") -> list[dict]:
    return MaintenancePlanOperator(task_id="scan_and_plan", target=NAME, kind=kind).execute(ctx or context())


def maintain(item: dict, try_number: int = 1, kind: str = "weekly", ctx: dict | None = None) -> dict:
    operator = MaintenanceActionOperator(task_id="maintain", target=NAME, kind=kind, item=item, retries=RETRIES)
    return operator.execute(ctx or context(try_number=try_number))


def log_rows(kind: str = "weekly", logical_date: datetime = DAY) -> list[dict]:
    with OpsDatabaseHook(postgres_conn_id="dbops_state").transaction() as conn:
        return log.attempts(conn, NAME, kind, logical_date)


def by_name(actions: list[dict], name: str) -> dict:
    return next(a for a in actions if a["name"] == name)


def relation(dsn: str, schema: str, table: str, function: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.SQL("SELECT {}(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                    "WHERE n.nspname = %s AND c.relname = %s").format(sql.Identifier(function)),
                            (schema, table)).fetchone()[0]


def size(dsn: str, schema: str, table: str) -> int:
    return relation(dsn, schema, table, "pg_total_relation_size")


def filenode(dsn: str, schema: str, table: str) -> int:
    return relation(dsn, schema, table, "pg_relation_filenode")


def invalid_indexes(dsn: str) -> list[str]:
    with psycopg.connect(dsn) as conn:
        return [r[0] for r in conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid").fetchall()]


def wait_until_our_lock_is_queued(dsn: str, timeout: float = 10) -> int:
    """The pid of our maintenance session once it waits for a lock."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND wait_event_type "
                               "= 'Lock'", (APPLICATION_NAME,)).fetchone()
            if row:
                return row[0]
            time.sleep(0.02)
    raise TimeoutError("the maintenance session never waited for a lock")


def hold(dsn: str, statement: str, isolation: str = "READ COMMITTED") -> psycopg.Connection:
    """Another session that keeps a transaction open (released by the caller, or after 60 s idle at most)."""
    blocker = psycopg.connect(dsn)
    blocker.execute(sql.SQL("SET TRANSACTION ISOLATION LEVEL " + isolation))  # noqa: S608 - a constant
    blocker.execute("SET idle_in_transaction_session_timeout = '60s'")  # a broken test never hangs the suite
    blocker.execute(statement)
    return blocker


def test_weekly_plan_rewrites_only_the_bloated_tables_hostile_names_included(target):
    actions = plan()
    assert {(a["action"], a["schema_name"], a["name"]) for a in actions} == {
        (VACUUM_FULL, "public", "bloated"), (VACUUM_FULL, HOSTILE_SCHEMA, HOSTILE_TABLE)}
    assert all("bloat" in a["reason"] for a in actions)
    before = {a["name"]: size(target.dsn, a["schema_name"], a["name"]) for a in actions}
    results = {a["name"]: maintain(a) for a in actions}
    for name, result in results.items():
        after = size(target.dsn, by_name(actions, name)["schema_name"], name)
        assert result["status"] == "done" and after < before[name] * 0.5, (name, before[name], after)
        assert result["reclaimed_bytes"] == result["bytes_before"] - result["bytes_after"] > 0
    with psycopg.connect(target.dsn) as conn:  # nothing else happened: every table and row is there
        assert conn.execute("SELECT count(*) FROM bloated").fetchone()[0] == 10000
        assert conn.execute(sql.SQL("SELECT count(*), count(DISTINCT {}) FROM {}.{}").format(
            sql.Identifier("semi;colon"), sql.Identifier(HOSTILE_SCHEMA), sql.Identifier(HOSTILE_TABLE))
        ).fetchone() == (7500, 7500)
    rows = log_rows()
    assert [(r["object_name"], r["status"]) for r in rows] == [(a["name"], "done") for a in actions]
    assert all(r["bytes_before"] > r["bytes_after"] for r in rows)


def test_plan_action_and_report_lines_put_the_verdict_first_and_log_no_statements(target, capfd):
    """The on-call engineer reads "OK: ..." or "FAILED: ..." first, sizes in MiB, bytes as structured fields;
    the ops-database writes of the maintenance log add no "Running statement" / "Rows affected" lines."""
    xcom: dict = {}
    actions = plan(context(xcom=xcom))
    for action in actions:
        maintain(action)
    report = MaintenanceReportOperator(task_id="report", target=NAME, kind="weekly", plan_task_id="scan_and_plan")
    report.execute(context(xcom=xcom))
    out = "".join(capfd.readouterr())
    assert re.search(r"OK: weekly plan mt_\w+: scanned \d+ tables .* estimated reclaimable [\d.]+ MiB", out)
    assert re.search(r"OK: vacuum_full public\.bloated done: [\d.]+ MiB -> [\d.]+ MiB .*reclaimed_bytes=\d+", out)
    assert re.search(rf"OK: weekly maintenance {NAME} 2026-11-22: {len(actions)} done, reclaimed [\d.]+ MiB.*"
                     r"reclaimed_bytes=\d+", out)
    assert "Rows affected" not in out and "Running statement" not in out


def test_report_of_a_failed_action_says_failed_first(target, capfd):
    xcom: dict = {}
    actions = plan(context(xcom=xcom))
    with OpsDatabaseHook(postgres_conn_id="dbops_state").transaction() as conn:
        entry = log.start(conn, NAME, "weekly", DAY, "test_run", 1, Action.from_dict(actions[0]))
        log.finish(conn, entry, "failed", error="the server said no")
    report = MaintenanceReportOperator(task_id="report", target=NAME, kind="weekly", plan_task_id="scan_and_plan")
    with pytest.raises(AirflowFailException, match="the server said no"):
        report.execute(context(xcom=xcom))
    out = "".join(capfd.readouterr())
    assert re.search(rf"FAILED: {len(actions)} of {len(actions)} actions did not finish: weekly maintenance {NAME} "
                     r"2026-11-22: 0 done", out)


def test_held_lock_bounds_application_waits_then_retries_then_skips_and_the_run_goes_on(target):
    xcom: dict = {}
    actions = plan(context(xcom=xcom))
    blocker = hold(target.dsn, "SELECT count(*) FROM bloated")  # AccessShareLock until rollback
    waits: list[float] = []

    def application_query():
        pid_waiting = wait_until_our_lock_is_queued(target.dsn)
        assert pid_waiting
        with psycopg.connect(target.dsn, autocommit=True) as app:
            started = time.monotonic()
            app.execute("SELECT count(*) FROM bloated")  # queues behind our AccessExclusiveLock request
            waits.append(time.monotonic() - started)

    app = threading.Thread(target=application_query)
    app.start()
    try:
        with pytest.raises(AirflowException) as first:
            maintain(by_name(actions, "bloated"), try_number=1)
        app.join(timeout=30)
        assert waits and waits[0] < LOCK_TIMEOUT + 1.0, f"the application waited {waits} s behind our lock"
        assert not isinstance(first.value, (AirflowFailException, AirflowSkipException)), first.value
        assert "lock_timeout" in str(first.value) and "will retry" in str(first.value)
        with pytest.raises(AirflowSkipException, match=r"skipped: lock not granted .*held by: pid \d+"):
            maintain(by_name(actions, "bloated"), try_number=RETRIES + 1)
        hostile = maintain(by_name(actions, HOSTILE_TABLE), try_number=1)  # the rest of the run completes
    finally:
        blocker.rollback()
        blocker.close()
    assert hostile["status"] == "done"
    statuses = [(r["object_name"], r["status"], r["try_number"]) for r in log_rows()]
    assert statuses == [("bloated", "retry", 1), ("bloated", "skipped", RETRIES + 1), (HOSTILE_TABLE, "done", 1)]
    assert "held by: pid" in log_rows()[1]["error"]
    report = MaintenanceReportOperator(task_id="report", target=NAME, kind="weekly", plan_task_id="scan_and_plan")
    result = report.execute(context(xcom=xcom))
    assert result["totals"]["skipped"] == 1 and result["totals"]["failed"] == 0
    assert result["skipped_reasons"][0].startswith("public.bloated: lock not granted within lock_timeout 1 s")


def test_target_dies_mid_run_the_task_retries_and_the_log_shows_it(target):
    actions = plan()
    blocker = hold(target.dsn, "SELECT count(*) FROM bloated")

    def kill_our_backend():
        pid = wait_until_our_lock_is_queued(target.dsn)
        with psycopg.connect(target.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    killer = threading.Thread(target=kill_our_backend)
    killer.start()
    try:
        with pytest.raises(AirflowException) as died:
            maintain(by_name(actions, "bloated"), try_number=1)
    finally:
        killer.join()
        blocker.rollback()
        blocker.close()
    assert not isinstance(died.value, (AirflowFailException, AirflowSkipException)), died.value
    assert "transient" in str(died.value)
    retried = maintain(by_name(actions, "bloated"), try_number=2)
    assert retried["status"] == "done" and retried["reclaimed_bytes"] > 0
    rows = log_rows()
    assert [(r["status"], r["try_number"]) for r in rows] == [("retry", 1), ("done", 2)]
    assert "terminat" in rows[0]["error"]


@pytest.mark.parametrize(("try_number", "note"), [(1, "(transient; will retry)"),
                                                  (RETRIES + 1, "(transient, but no retry is left)")])
def test_unreachable_target_fails_the_scan_as_transient(target, monkeypatch, try_number, note):
    """The message says "will retry" only when the running task has a try left."""
    from airflow.sdk.execution_time.context import set_current_context

    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{NAME.upper()}", f"postgresql://nobody:x@127.0.0.1:{free_port()}/db"
                                                          "?connect_timeout=2")
    ctx = context(try_number=try_number)
    with set_current_context(ctx), pytest.raises(AirflowException) as info:
        plan(ctx)
    assert not isinstance(info.value, AirflowFailException)
    assert str(info.value).endswith(note)


def free_port() -> int:
    from tests.conftest import free_port as port

    return port()


def test_same_logical_date_twice_does_not_redo_finished_work(target):
    for action in plan():
        maintain(action)
    nodes = filenode(target.dsn, "public", "bloated")
    with psycopg.connect(target.dsn, autocommit=True) as conn:  # bloat it again: a new date would rewrite it
        conn.execute("DELETE FROM bloated WHERE id % 8 <> 0")
        conn.execute("ANALYZE bloated")
    xcom: dict = {}
    again = plan(context(xcom=xcom))
    assert VACUUM_FULL not in {a["action"] for a in again if a["name"] == "bloated"}
    assert [(a["name"], a["action"]) for a in xcom["plan"]["plan"]["done"]] == [("bloated", VACUUM_FULL)]
    retried_task = maintain(Action("table", "public", "bloated", "bloated", VACUUM_FULL, "retry", 1).to_dict())
    assert retried_task["note"] == "done earlier for this logical date"
    assert filenode(target.dsn, "public", "bloated") == nodes, "VACUUM FULL ran again"
    assert len(log_rows()) == 2
    next_week = plan(context(logical_date=DAY + timedelta(days=7)))
    assert (VACUUM_FULL, "bloated") in {(a["action"], a["name"]) for a in next_week}


def test_runs_planned_side_by_side_rewrite_a_table_once(target):
    """Backfilled runs for two dates plan before either maintains: the second rewrite is not done again."""
    first = by_name(plan(context(run_id="backfill__a")), "bloated")
    second = by_name(plan(context(logical_date=DAY + timedelta(days=7), run_id="backfill__b")), "bloated")
    assert first["action"] == second["action"] == VACUUM_FULL
    assert maintain(first, ctx=context(run_id="backfill__a"))["status"] == "done"
    nodes = filenode(target.dsn, "public", "bloated")
    result = maintain(second, ctx=context(logical_date=DAY + timedelta(days=7), run_id="backfill__b"))
    assert result["note"] == "done by run backfill__a after this run planned it"
    assert filenode(target.dsn, "public", "bloated") == nodes, "VACUUM FULL ran again"
    assert log_rows(logical_date=DAY + timedelta(days=7)) == [], "nothing attempted for the second date"


def test_failed_reindex_concurrently_leaves_no_invalid_index(target):
    item = Action("index", "public", "bloated_pkey", "bloated", REINDEX, "test", 1_000_000).to_dict()
    # A transaction with an old snapshot: REINDEX CONCURRENTLY waits for it after building _ccnew.
    blocker = hold(target.dsn, "SELECT count(*) FROM calm", isolation="REPEATABLE READ")
    try:
        with pytest.raises(AirflowException, match="lock_timeout") as info:
            maintain(item, try_number=1)
        assert not isinstance(info.value, (AirflowFailException, AirflowSkipException))
        assert invalid_indexes(target.dsn) == []
        with pytest.raises(AirflowSkipException):
            maintain(item, try_number=RETRIES + 1)
        assert invalid_indexes(target.dsn) == []
    finally:
        blocker.rollback()
        blocker.close()
    assert maintain(item, try_number=1)["status"] == "done"
    with psycopg.connect(target.dsn) as conn:
        names = [r[0] for r in conn.execute("SELECT indexrelid::regclass::text FROM pg_index i "
                                            "WHERE indrelid = 'bloated'::regclass").fetchall()]
    assert names == ["bloated_pkey"] and invalid_indexes(target.dsn) == []


def notes(xcom: dict) -> dict[str, dict]:
    return {n["name"]: n for n in xcom["plan"]["plan"]["notes"]}


def test_exclusion_constraint_index_is_reported_not_reindexed_concurrently(target):
    """PostgreSQL refuses REINDEX CONCURRENTLY on an exclusion constraint's index (0A000)."""
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE slots (id int, during tstzrange, CONSTRAINT slots_id_excl EXCLUDE USING btree "
                     "(id WITH =), CONSTRAINT slots_during_excl EXCLUDE USING gist (during WITH &&))")
        conn.execute("INSERT INTO slots SELECT g, tstzrange(now() + g * interval '1 h', now() + (g + 1) * interval "
                     "'1 h') FROM generate_series(1, 40000) g")
        conn.execute("DELETE FROM slots WHERE id > 10000")  # the btree keeps its size; the heap is truncated
        conn.execute("VACUUM ANALYZE slots")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            conn.execute("REINDEX INDEX CONCURRENTLY slots_id_excl")
    xcom: dict = {}
    actions = plan(context(xcom=xcom))
    assert [a["name"] for a in actions if a["action"] == REINDEX] == []
    note = notes(xcom)["slots_id_excl"]
    assert note["action"] == "recommend" and note["reason"].startswith("bloat ")
    assert "cannot REINDEX CONCURRENTLY" in note["reason"]


DUPLICATES = sql.SQL("""
CREATE TABLE {table} (id int, {column} text);
INSERT INTO {table} VALUES (1, 'ann@example.com'), (2, 'ann@example.com'), (3, 'ann@example.com'),
    (4, 'bob@example.com'), (5, 'bob@example.com'), (6, 'eve@example.com'), (7, NULL), (8, NULL),
    (9, 'no-at-sign'), (10, 'no-at-sign');
""")


@pytest.fixture
def duplicated(target):
    """An invalid unique index on a table with hostile names: its CREATE UNIQUE INDEX CONCURRENTLY hit duplicates.
    NULLs and rows outside the index's predicate are not duplicates."""
    table, column = 'Dup "People"; x', 'e%mail'
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute(DUPLICATES.format(table=sql.Identifier(table), column=sql.Identifier(column)))
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY people_email ON {} ({}) WHERE {} LIKE '%@%'")
                         .format(sql.Identifier(table), sql.Identifier(column), sql.Identifier(column)))
        conn.execute("ANALYZE")
    assert invalid_indexes(target.dsn) == ["people_email"]
    return SimpleNamespace(table=table, column=column)


def test_invalid_unique_index_with_duplicates_is_reported_with_the_keys_not_planned(target, duplicated):
    xcom: dict = {}
    actions = plan(context(xcom=xcom))
    assert "people_email" not in {a["name"] for a in actions}
    reason = notes(xcom)["people_email"]["reason"]
    assert "2 duplicated keys: (ann@example.com) 3 rows, (bob@example.com) 2 rows" in reason
    assert "remove or merge the duplicate rows" in reason
    with psycopg.connect(target.dsn, autocommit=True) as conn:  # the DBA removes the duplicates
        conn.execute(sql.SQL("DELETE FROM {} WHERE id IN (2, 3, 5)").format(sql.Identifier(duplicated.table)))
    again = plan(context(logical_date=DAY + timedelta(days=7)))
    item = by_name(again, "people_email")
    assert item["action"] == REINDEX
    assert maintain(item, ctx=context(logical_date=DAY + timedelta(days=7)))["status"] == "done"
    assert invalid_indexes(target.dsn) == []


def test_reindex_failing_on_duplicates_says_which_keys_and_what_to_do(target, duplicated):
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DELETE FROM {} WHERE id IN (2, 3, 5)").format(sql.Identifier(duplicated.table)))
    item = by_name(plan(), "people_email")
    with psycopg.connect(target.dsn, autocommit=True) as conn:  # written between the plan and the REINDEX
        conn.execute(sql.SQL("INSERT INTO {} VALUES (11, 'eve@example.com')").format(
            sql.Identifier(duplicated.table)))
    with pytest.raises(AirflowFailException) as info:
        maintain(item, try_number=1)
    message = str(info.value)
    assert "could not create unique index" in message
    assert "the table has 1 duplicated key: (eve@example.com) 2 rows" in message
    assert "remove or merge the duplicate rows" in message
    [row] = log_rows()
    assert row["status"] == "failed" and "(eve@example.com) 2 rows" in row["error"]
    assert invalid_indexes(target.dsn) == ["people_email"], "no _ccnew leftover"


def test_leftover_of_an_interrupted_reindex_is_planned_and_dropped(target):
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE dup (v int)")
        conn.execute("INSERT INTO dup VALUES (1), (1)")
        with pytest.raises(psycopg.errors.UniqueViolation):  # leaves an invalid index, as a crash would
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY dup_v_idx_ccnew ON dup (v)")
        conn.execute("ANALYZE dup")
    assert invalid_indexes(target.dsn) == ["dup_v_idx_ccnew"]
    actions = plan()
    leftover = by_name(actions, "dup_v_idx_ccnew")
    assert leftover["action"] == "drop_invalid_leftover" and actions[0] == leftover
    assert maintain(leftover)["status"] == "done"
    assert invalid_indexes(target.dsn) == []


def test_daily_vacuums_dead_tuples_and_analyzes_modified_tables(target):
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("UPDATE calm SET payload = payload || 'x' WHERE id <= 1000")  # 1000 dead, 1000 modified
        conn.execute("ANALYZE calm")  # analyzed: only the dead tuples are left to act on
        conn.execute("INSERT INTO calm SELECT g, 'new' FROM generate_series(5001, 6000) g")
        conn.execute("SELECT pg_stat_force_next_flush()")
    actions = {(a["schema_name"], a["name"]): a for a in plan(kind="daily")}
    assert actions[("public", "calm")]["action"] == "vacuum_analyze"
    assert actions[("public", "bloated")]["action"] == "vacuum_analyze"  # 30000 dead of 10000 live
    assert all(a["action"] in ("vacuum_analyze", "analyze") for a in actions.values())
    for action in actions.values():
        assert maintain(action, kind="daily")["status"] == "done"
    with psycopg.connect(target.dsn) as conn:
        dead = conn.execute("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'bloated'").fetchone()[0]
    assert dead == 0
    assert {r["status"] for r in log_rows("daily")} == {"done"}


def dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags")).dags[dag_id]


def test_weekly_dag_run_reclaims_and_reports_and_a_dry_run_changes_nothing(target):
    weekly = dag(f"pg_maintenance_weekly__{NAME}")
    before = size(target.dsn, "public", "bloated")
    dry = weekly.test(logical_date=DAY - timedelta(days=7), run_conf={"dry_run": True})
    states = {(ti.task_id, ti.map_index): ti.state for ti in dry.get_task_instances()}
    assert dry.state == "success", states
    assert states[("scan_and_plan", -1)] == "success" and states[("report", -1)] == "success"
    assert all(state == "skipped" for (task, _), state in states.items() if task == "maintain")
    assert size(target.dsn, "public", "bloated") == before

    run = weekly.test(logical_date=DAY, run_conf={"dry_run": False})  # dag.test() keeps the last run_conf
    states = {(ti.task_id, ti.rendered_map_index or ti.map_index): ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states[("maintain", "vacuum_full public.bloated")] == "success"
    assert size(target.dsn, "public", "bloated") < before * 0.5
    with psycopg.connect(libpq_conninfo(TEST_DATABASES["dbops"])) as ops:
        report = ops.execute("SELECT report FROM dbops.maintenance_runs WHERE target = %s AND kind = 'weekly' "
                             "AND logical_date = %s", (NAME, DAY)).fetchone()[0]
    assert report["totals"]["done"] == 2 and report["totals"]["reclaimed_bytes"] > 0
    assert {u["index"] for u in report["unused_indexes"]} == {HOSTILE_INDEX}


def test_daily_dag_run(target):
    run = dag(f"pg_maintenance_daily__{NAME}").test(logical_date=DAY)
    states = {(ti.task_id, ti.rendered_map_index or ti.map_index): ti.state for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states[("maintain", "vacuum_analyze public.bloated")] == "success"


def test_maintenance_dags_map_one_task_per_object_in_the_targets_pool():
    """For every target with a maintenance policy: both DAGs; the mapped task in the target's pool."""
    from airflow.dag_processing.dagbag import DagBag

    from dbops.core.config import load_config, pool_name

    bag = DagBag(dag_folder=str(ROOT / "dags" / "pg_maintenance.py"))
    assert bag.import_errors == {}
    for name, settings in load_config().targets.items():
        if settings.maintenance is None:
            continue
        for kind in ("weekly", "daily"):
            maintenance_dag = bag.dags[f"pg_maintenance_{kind}__{name}"]
            maintain_task = maintenance_dag.task_dict["maintain"]
            assert maintain_task.pool == pool_name(name)
            assert maintain_task.partial_kwargs["retries"] == max(1, settings.maintenance.lock_retries)
            assert maintenance_dag.task_dict["report"].trigger_rule == "all_done"
            assert "dry_run" in maintenance_dag.params
            assert maintenance_dag.timetable.expression == getattr(settings.maintenance, kind)


def test_pgstattuple_measures_the_candidates_when_installed(target):
    with psycopg.connect(target.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pgstattuple")
    actions = {a["name"]: a for a in plan()}
    assert "pgstattuple_approx" in actions["bloated"]["reason"]
    with psycopg.connect(target.dsn) as conn:  # 3 of 4 rows deleted: the measured bloat says so
        free, dead, length = conn.execute("SELECT approx_free_space, dead_tuple_len, table_len "
                                          "FROM pgstattuple_approx('bloated'::regclass)").fetchone()
    assert actions["bloated"]["bloat_bytes"] == free + dead and (free + dead) / length > 0.7


def test_weekly_dag_run_with_a_held_lock_skips_that_table_and_succeeds(target):
    """The whole run under a lock held throughout: retried with backoff, skipped with the reason, run green."""
    blocker = hold(target.dsn, "SELECT count(*) FROM bloated")
    try:
        run = dag(f"pg_maintenance_weekly__{NAME}").test(logical_date=DAY, run_conf={"dry_run": False})
    finally:
        blocker.rollback()
        blocker.close()
    states = {(ti.task_id, ti.rendered_map_index or ti.map_index): (ti.state, ti.try_number)
              for ti in run.get_task_instances()}
    assert run.state == "success", states
    assert states[("maintain", "vacuum_full public.bloated")] == ("skipped", RETRIES + 1)
    assert states[("maintain", f"vacuum_full {HOSTILE_SCHEMA}.{HOSTILE_TABLE}")] == ("success", 1)
    assert [(r["status"], r["try_number"]) for r in log_rows() if r["object_name"] == "bloated"] == [
        ("retry", 1), ("retry", 2), ("skipped", 3)]


def test_action_of_an_overlapping_run_waits_then_skips_and_logs_nothing(target, monkeypatch):
    """A backfill's run beside the scheduled one: the second rewrite of the target skips, naming the holder."""
    from dbops.core.locks import JobBusy, job_lock

    monkeypatch.setattr("dbops.operators.maintenance.LOCK_WAIT_SECONDS", 1)  # FAKE: a short wait for the test
    item = by_name(plan(), "bloated")
    with job_lock("dbops_state", NAME, "maintenance"):
        with pytest.raises(JobBusy, match=f"maintenance of {NAME} is already running in another run"):
            maintain(item)
    assert log_rows() == [], "a skipped action writes nothing to the maintenance log"
    assert maintain(item)["status"] == "done"
