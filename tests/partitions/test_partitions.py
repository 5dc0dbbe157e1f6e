"""pg_partitions on the real PostgreSQL 18: backfill, DEFAULT moves, DETACH CONCURRENTLY killed and finalized,
application queries during retirement, drops refused without a verified dump, hostile names, dry run.

Operators run the way the task runner runs them, ``execute(context)`` with a FAKE minimal context
(logical_date, run_id, dag_run, params, ti); only a scheduler makes real ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from psycopg import sql

from dbops.core.manifest import Manifest
from dbops.hooks.ops import OpsDatabaseHook
from dbops.operators.partitions import PartitionsApplyOperator, PartitionsPlanOperator, PartitionsReportOperator
from scripts.stack.postgres import admin_connection, conn_uri, libpq_conninfo

DAY = datetime(2026, 3, 15, 4, 30, tzinfo=timezone.utc)
HOSTILE_SCHEMA = 'Ops "Schema"; x'
HOSTILE_TABLE = 'we"ird; DROP TABLE events; --'
SCHEMA = sql.SQL("""
CREATE TABLE events (id bigint GENERATED ALWAYS AS IDENTITY, at timestamptz, payload text,
                     PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE INDEX events_payload ON events (payload);
CREATE TABLE events_default PARTITION OF events DEFAULT;
CREATE SCHEMA {schema};
CREATE TABLE {schema}.{table} ("Day" date NOT NULL, "semi;colon" int) PARTITION BY RANGE ("Day");
CREATE TABLE plain_table (id int);
CREATE ROLE {reader} NOLOGIN;
GRANT SELECT ON events TO {reader};
DO $$
DECLARE m date;
BEGIN
  FOR i IN 0..5 LOOP  -- 2025-10 .. 2026-03
    m := (date '2025-10-01' + make_interval(months => i))::date;
    EXECUTE format('CREATE TABLE %I PARTITION OF events FOR VALUES FROM (%L) TO (%L)', 'ev_' || to_char(m, 'YYYYMM'),
                   m::timestamp AT TIME ZONE 'UTC', (m + interval '1 month')::timestamp AT TIME ZONE 'UTC');
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)', 'Ops "Schema"; x',
                   'p"' || to_char(m, 'YYYYMM'), 'Ops "Schema"; x', 'we"ird; DROP TABLE events; --', m,
                   (m + interval '1 month')::date);
  END LOOP;
END $$;
INSERT INTO events (at, payload) SELECT timestamptz '2025-10-01' + g * interval '1 hour', 'e' || g
  FROM generate_series(0, 3999) g;                                  -- 2025-10-01 .. 2026-03-18: partitions
INSERT INTO events (at, payload) SELECT timestamptz '2026-04-02' + g * interval '7 minutes', 'd' || g
  FROM generate_series(0, 2499) g;                                  -- April 2026: DEFAULT, moved
INSERT INTO events (at, payload) SELECT timestamptz '2031-01-01' + g * interval '1 day', 'far' || g
  FROM generate_series(0, 9) g;                                     -- far future: DEFAULT, stays
INSERT INTO {schema}.{table} SELECT date '2025-10-01' + g % 160, g FROM generate_series(1, 3000) g;
""")


def context(logical_date: datetime = DAY, run_id: str = "test_run", params: dict | None = None) -> dict:
    """FAKE minimal Airflow context: what the partitions operators read from it."""
    ti = SimpleNamespace(try_number=1, max_tries=1)
    return {"logical_date": logical_date, "run_id": run_id, "ti": ti, "params": params or {},
            "dag_run": SimpleNamespace(run_after=logical_date, run_type="scheduled")}


def write_config(t: SimpleNamespace, retire: str = "drop", lock_timeout: str = "1s", store: str | None = None,
                 extra_table: str = "", retries: int = 1) -> None:
    t.config_path.write_text(f"""
ops_conn_id: dbops_state
staging_dir: {t.tmp / 'staging'}
storage:
  local: {{url: "{store or t.tmp / 'store'}"}}
targets:
  {t.name}:
    conn_id: pg_{t.name}
    backup: {{storage: local, lock_wait_timeout: 5s}}
    partitions:
      lock_timeout: {lock_timeout}
      statement_timeout: 2min
      lock_retries: {retries}
      lock_retry_delay: 200ms
      batch_rows: 1000
      tables:
        events: {{interval: monthly, premake: 2, retention: 3 months, retire: {retire}}}
        '{HOSTILE_SCHEMA}.{HOSTILE_TABLE.replace("'", "''")}': {{interval: monthly, premake: 1, retention: 3 months, retire: {retire if retire != "drop" else "archive_schema"}, archive_schema: 'Arch "ive"'}}
{extra_table}""")


@pytest.fixture
def target(scratch_db, tmp_path, monkeypatch, pg_server):
    database = scratch_db()
    name = f"pt_{database[-12:]}"
    reader = f"reader_{database[-12:]}"
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(SCHEMA.format(schema=sql.Identifier(HOSTILE_SCHEMA), table=sql.Identifier(HOSTILE_TABLE),
                                   reader=sql.Identifier(reader)))
        conn.execute("ANALYZE")
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{name.upper()}", conn_uri(database))
    t = SimpleNamespace(database=database, name=name, reader=reader, tmp=tmp_path, config_path=tmp_path / "dbops.yaml")
    monkeypatch.setenv("DBOPS_CONFIG", str(t.config_path))
    write_config(t)
    yield t
    with admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(reader)))


def connect(t) -> psycopg.Connection:
    return psycopg.connect(libpq_conninfo(t.database), autocommit=True)


def run(t, logical_date: datetime = DAY, params: dict | None = None, run_id: str = "test_run") -> dict:
    ctx = context(logical_date, run_id, params)
    PartitionsPlanOperator(task_id="inspect_and_plan", target=t.name).execute(ctx)
    try:
        return PartitionsApplyOperator(task_id="apply", target=t.name).execute(ctx)
    finally:
        PartitionsReportOperator(task_id="report", target=t.name).execute(ctx)


def partitions(t, parent: str = "events", schema: str = "public") -> dict[str, str]:
    """Partition name -> bound, read from the catalog."""
    with connect(t) as conn:
        return dict(conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) || CASE WHEN i.inhdetachpending THEN ' PENDING' "
            "ELSE '' END FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = (SELECT p.oid FROM pg_class p JOIN pg_namespace n ON n.oid = p.relnamespace "
            "WHERE n.nspname = %s AND p.relname = %s)", (schema, parent)).fetchall())


def table_exists(t, schema: str, name: str) -> bool:
    with connect(t) as conn:
        return conn.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                            "WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone() is not None


def fingerprint(t, source: str = "SELECT * FROM events") -> tuple[int, str]:
    """Rows of ``source`` and a hash of every (id, key, payload)."""
    with connect(t) as conn:
        return conn.execute(sql.SQL("SELECT count(*), md5(string_agg(id || '|' || at::text || '|' || payload, ',' "
                                    "ORDER BY id)) FROM ({}) s").format(sql.SQL(source))).fetchone()


def steps(t) -> list[tuple]:
    with OpsDatabaseHook(postgres_conn_id="dbops_state").transaction() as conn:
        return conn.execute("SELECT table_name, step, partition_name, status, rows, detail FROM dbops.partition_steps "
                            "WHERE target = %s ORDER BY id", (t.name,)).fetchall()


def retirements(t) -> dict[str, tuple]:
    with OpsDatabaseHook(postgres_conn_id="dbops_state").transaction() as conn:
        return {f"{r[0]}.{r[1]}": r[2:] for r in conn.execute(
            "SELECT partition_schema, partition_name, status, backup_id, rows, sha256, error "
            "FROM dbops.partition_retirements WHERE target = %s", (t.name,)).fetchall()}


# --- failure paths first ---

def test_drop_refused_when_the_store_is_unreachable_table_left_detached(target):
    blocker = target.tmp / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    write_config(target, store=str(blocker / "store"))
    with pytest.raises(AirflowFailException, match="not dropped, left detached"):
        run(target)
    # the expired partitions are detached, intact, and still there
    assert table_exists(target, "public", "ev_202510") and table_exists(target, "public", "ev_202511")
    assert "ev_202510" not in partitions(target)
    with connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM ev_202510").fetchone()[0] == 744
    assert {k: v[0] for k, v in retirements(target).items() if k.startswith("public.")} == {
        "public.ev_202510": "drop_refused", "public.ev_202511": "drop_refused"}
    assert all("could not be stored" in v[4] for k, v in retirements(target).items() if k.startswith("public."))


def test_drop_refused_when_the_dump_does_not_restore(target):
    """The partition needs an enum type the scratch database does not have: the restore fails, nothing is dropped."""
    with connect(target) as conn:
        conn.execute("CREATE TYPE mood AS ENUM ('calm', 'busy'); "
                     "CREATE TABLE moods (at date NOT NULL, m mood) PARTITION BY RANGE (at); "
                     "CREATE TABLE moods_old PARTITION OF moods FOR VALUES FROM ('2025-01-01') TO ('2025-02-01'); "
                     "INSERT INTO moods VALUES ('2025-01-05', 'calm'), ('2025-01-06', 'busy')")
    write_config(target, extra_table="        moods: {interval: monthly, premake: 1, retention: 3 months, "
                                     "retire: drop}\n")
    with pytest.raises(AirflowFailException, match="could not be verified by a restore"):
        run(target)
    assert table_exists(target, "public", "moods_old") and "moods_old" not in partitions(target, "moods")
    status, backup_id, rows, sha, error = retirements(target)["public.moods_old"]
    assert status == "drop_refused" and "pg_restore" in error
    # the events partitions of the same run were dumped, verified and dropped: the run went on
    assert retirements(target)["public.ev_202510"][0] == "dropped"


def test_detach_concurrently_killed_then_next_run_finalizes(target):
    """No DEFAULT partition: DETACH CONCURRENTLY. A session holding an old snapshot makes it wait; the backend
    is terminated while it waits; the partition is left detach pending; the next run finalizes it."""
    write_config(target, retire="archive_schema", lock_timeout="30s")
    holder = connect(target)
    holder.autocommit = False
    holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    holder.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE)))
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catch(errors, lambda: run(target, run_id="killed")))
    worker.start()
    with connect(target) as conn:
        for _ in range(300):
            pid = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = 'dbops partitions' "
                               "AND query ILIKE '%%DETACH PARTITION%%CONCURRENTLY%%' AND wait_event_type = 'Lock'"
                               ).fetchone()
            if pid:
                break
            time.sleep(0.1)
        assert pid, "the concurrent detach never waited for the old snapshot"
        conn.execute("SELECT pg_terminate_backend(%s)", pid)
    worker.join(60)
    holder.rollback()
    holder.close()
    assert errors and isinstance(errors[0], AirflowException)
    pending = {k: v for k, v in partitions(target, HOSTILE_TABLE, HOSTILE_SCHEMA).items() if v.endswith("PENDING")}
    assert list(pending) == ['p"202510']
    run(target, run_id="next")
    assert 'p"202510' not in partitions(target, HOSTILE_TABLE, HOSTILE_SCHEMA)
    assert table_exists(target, 'Arch "ive"', 'p"202510')
    assert ("finalize", "done") in {(s[1], s[3]) for s in steps(target) if s[2].endswith('p"202510')}


def _catch(errors: list, work) -> None:
    try:
        work()
    except BaseException as err:  # noqa: BLE001 - handed to the test
        errors.append(err)


def test_long_query_on_parent_application_waits_at_most_lock_timeout(target):
    """A DEFAULT partition forces a plain DETACH. While a long transaction reads the parent, the detach gives up
    after lock_timeout (retried, then skipped); application queries on the parent are never stuck behind it."""
    write_config(target, retire="detach", lock_timeout="500ms", retries=1)
    holder = connect(target)
    holder.autocommit = False
    holder.execute("SELECT count(*) FROM events")  # AccessShare on the parent and every partition, held
    stop = threading.Event()
    app_errors: list[BaseException] = []

    def application() -> None:
        with connect(target) as app:
            app.execute("SET statement_timeout = '3s'")  # 6 x lock_timeout: only a queue behind our lock hits it
            while not stop.is_set():
                try:
                    app.execute("SELECT count(*) FROM events WHERE at >= '2025-10-01'")
                except psycopg.Error as err:
                    app_errors.append(err)
                    return

    app_thread = threading.Thread(target=application)
    app_thread.start()
    try:
        with pytest.raises(AirflowException, match="skipped"):
            run(target)
    finally:
        stop.set()
        app_thread.join(10)
        holder.rollback()
        holder.close()
    assert app_errors == []
    assert "ev_202510" in partitions(target), "still attached: the detach was skipped, not forced"
    skipped = [s for s in steps(target) if s[1] == "detach" and s[3] == "skipped"]
    assert skipped and "lock not granted" in skipped[0][5]
    run(target, run_id="later")  # nothing holds the table any more: retired now
    assert "ev_202510" not in partitions(target) and table_exists(target, "public", "ev_202510")


def test_attach_skipped_after_the_move_puts_the_rows_back_into_default(target):
    """A session holds the parent (and so DEFAULT) in ACCESS SHARE: the rows of April move out of DEFAULT (row
    locks only), then the attach's lock is never granted. The step is skipped and every row is still visible
    through the parent, back in DEFAULT."""
    write_config(target, retire="detach", lock_timeout="300ms", retries=1)
    before = fingerprint(target)
    holder = connect(target)
    holder.autocommit = False
    holder.execute("LOCK TABLE events IN ACCESS SHARE MODE")
    try:
        with pytest.raises(AirflowException, match="skipped"):
            run(target)
        during = fingerprint(target)
    finally:
        holder.rollback()
        holder.close()
    assert during == before and fingerprint(target) == before
    assert "events_2026_04" not in partitions(target)
    with connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM ONLY events_default WHERE at >= '2026-04-01' "
                            "AND at < '2026-05-01'").fetchone()[0] == 2500
    skipped = {s[2]: s[5] for s in steps(target) if s[1] == "create" and s[3] == "skipped"}
    assert "lock not granted" in skipped["public.events_2026_04"]
    assert "2500 rows moved back into DEFAULT" in skipped["public.events_2026_04"]
    run(target, run_id="later")  # nothing holds the parent any more: the marked table is resumed and attached
    assert "events_2026_04" in partitions(target)
    with connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM events_2026_04").fetchone()[0] == 2500


def test_update_of_the_detached_table_after_its_dump_is_not_lost(target):
    """Between the dump of ev_202510 (its manifest is in the store) and its drop, an application updates the
    detached table: the update must wait (the dropping session holds the table against writes since before
    the dump) and then fail with the table gone; it must never succeed on a table that is then dropped."""
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catch(errors, lambda: run(target)))
    worker.start()
    updated: list[int] = []
    failures: list[BaseException] = []
    with connect(target) as conn:
        conn.execute("SET lock_timeout = '20s'")
        for _ in range(600):
            if any(b'"public.ev_202510"' in m.read_bytes() for m in (target.tmp / "store").rglob("manifest.json")):
                break
            time.sleep(0.05)
        try:
            updated.append(conn.execute("UPDATE ev_202510 SET payload = 'changed after the dump'").rowcount)
        except psycopg.Error as err:
            failures.append(err)
    worker.join(120)
    assert errors == []
    assert updated == [] and isinstance(failures[0], psycopg.errors.UndefinedTable)
    assert retirements(target)["public.ev_202510"][:1] == ("dropped",)


def test_task_killed_around_the_detach_leaves_nothing_untracked(target):
    """The task runs in a child process; the ops database's retirements table is locked, so the task blocks
    on its first retirement record, and is killed (SIGKILL) there. Whatever it had done to ev_202510, the next
    run retires it: dropped after a verified dump, recorded, no detached table left behind."""
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = ("import sys; from types import SimpleNamespace; from tests.partitions.test_partitions import run; "
              "run(SimpleNamespace(name=sys.argv[1]), run_id='killed')")
    with OpsDatabaseHook(postgres_conn_id="dbops_state").transaction() as ops:
        ops.execute("LOCK TABLE dbops.partition_retirements IN EXCLUSIVE MODE")
        child = subprocess.Popen([sys.executable, "-c", script, target.name], env=child_env)
        try:
            for _ in range(1200):
                waiting = ops.execute("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                                      "WHERE c.relname = 'partition_retirements' AND NOT l.granted").fetchone()[0]
                if waiting or child.poll() is not None:
                    break
                time.sleep(0.05)
            assert waiting, "the task never tried to record a retirement"
        finally:
            child.kill()
            child.wait(30)
    run(target, run_id="next")
    assert "ev_202510" not in partitions(target) and not table_exists(target, "public", "ev_202510")
    assert retirements(target)["public.ev_202510"][:1] == ("dropped",)


def test_detach_recorded_then_task_killed_next_run_retires_the_detached_table(target):
    """The pieces in the order a killed task leaves them: the retirement recorded as 'detaching', the DETACH
    committed, nothing after it. The next run finds the table (no longer a partition) and drops it after a
    verified dump."""
    from dbops.partitions.record import record_retirement

    with OpsDatabaseHook(postgres_conn_id="dbops_state").transaction() as ops:
        record_retirement(ops, target.name, "events", "public", "ev_202510", "2025-10-01T00:00:00+00:00",
                          "2025-11-01T00:00:00+00:00", "drop", "detaching")
    with connect(target) as conn:
        conn.execute("ALTER TABLE events DETACH PARTITION ev_202510")
    run(target)
    assert not table_exists(target, "public", "ev_202510")
    status, backup_id, rows, _, _ = retirements(target)["public.ev_202510"]
    assert (status, rows) == ("dropped", 744) and backup_id


def test_pending_detach_within_retention_is_finalized_and_recorded_then_retired_when_due(target):
    """A detach left pending on a partition this run's date still keeps: finalized (a pending detach blocks
    every other concurrent detach of the table) and recorded as detached; a run on a date it is due archives it."""
    write_config(target, retire="archive_schema")
    holder = connect(target)
    holder.autocommit = False
    holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    holder.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE)))
    with connect(target) as conn:
        conn.execute("SET statement_timeout = '1s'")
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(
                sql.Identifier(HOSTILE_SCHEMA, HOSTILE_TABLE), sql.Identifier(HOSTILE_SCHEMA, 'p"202602')))
    holder.rollback()
    holder.close()
    assert partitions(target, HOSTILE_TABLE, HOSTILE_SCHEMA)['p"202602'].endswith("PENDING")
    run(target)
    assert 'p"202602' not in partitions(target, HOSTILE_TABLE, HOSTILE_SCHEMA)
    assert table_exists(target, HOSTILE_SCHEMA, 'p"202602'), "within retention: kept detached, not archived"
    assert retirements(target)[f'{HOSTILE_SCHEMA}.p"202602'][0] == "detached"
    assert table_exists(target, 'Arch "ive"', 'p"202510'), "the other retirements of the table went on"
    run(target, logical_date=datetime(2026, 6, 2, tzinfo=timezone.utc), run_id="june")  # cutoff 2026-03-02
    assert table_exists(target, 'Arch "ive"', 'p"202602')
    assert retirements(target)[f'{HOSTILE_SCHEMA}.p"202602'][0] == "archived"


# --- what it does ---

def test_backfill_creates_what_the_date_needed_moves_default_rows_and_drops_nothing_newer(target):
    before = fingerprint(target)
    run(target)
    after = partitions(target)
    assert {"events_2026_04", "events_2026_05"} <= set(after)  # March exists; April (with its rows), May created
    assert "ev_202510" not in after and "ev_202511" not in after  # upper bound <= 2025-12-15: retired (dropped)
    assert {"ev_202512", "ev_202601", "ev_202602", "ev_202603"} <= set(after)  # newer: untouched
    assert not table_exists(target, "public", "ev_202510")
    assert fingerprint(target) != before  # the dropped partitions' rows are gone ...
    with connect(target) as conn:
        moved = conn.execute("SELECT count(*) FROM events_2026_04").fetchone()[0]
        left = conn.execute("SELECT count(*) FROM events_default").fetchone()[0]
        owner_grants = conn.execute("SELECT relacl::text FROM pg_class WHERE relname = 'events_2026_04'").fetchone()[0]
        indexes = conn.execute("SELECT count(*) FROM pg_indexes WHERE tablename = 'events_2026_04'").fetchone()[0]
    assert (moved, left) == (2500, 10)  # the far-future rows stay, reported
    assert target.reader in owner_grants and indexes == 2
    status, backup_id, rows, sha, _ = retirements(target)["public.ev_202510"]
    assert (status, rows) == ("dropped", 744) and len(sha) == 64
    manifest = Manifest.from_json((target.tmp / "store" / backup_id / "manifest.json").read_bytes())
    assert manifest.tables == {"public.ev_202510": 744} and manifest.files[0].sha256 == sha


def test_default_rows_moved_with_none_lost(target):
    write_config(target, retire="detach")  # nothing dropped: every row is in the table or its detached partitions
    everything = "SELECT * FROM events UNION ALL SELECT * FROM ev_202510 UNION ALL SELECT * FROM ev_202511"
    before = fingerprint(target)  # ev_202510 and ev_202511 are still partitions of events
    run(target)
    assert fingerprint(target, everything) == before
    with connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM ONLY events_default WHERE at >= '2026-04-01' "
                            "AND at < '2026-05-01'").fetchone()[0] == 0
    run(target, run_id="again")  # idempotent: nothing more to create or move
    assert fingerprint(target, everything) == before
    creates = [s for s in steps(target) if s[1] == "create" and s[3] == "done"]
    assert sorted((s[2], s[4]) for s in creates if s[0] == "events") == [
        ("public.events_2026_04", 2500), ("public.events_2026_05", 0)]


def test_an_older_backfill_after_a_newer_run_retires_nothing_the_newer_kept(target):
    write_config(target, retire="detach")
    run(target)
    kept = set(partitions(target))
    run(target, logical_date=DAY - timedelta(days=62), run_id="backfill")  # 2026-01-13: cutoff 2025-10-13
    assert set(partitions(target)) >= kept - {"ev_202510", "ev_202511"}
    assert {"ev_202512", "ev_202601", "ev_202602"} <= set(partitions(target))


def test_dry_run_changes_nothing(target):
    with connect(target) as conn:
        catalog = conn.execute("SELECT relname, relkind, pg_get_expr(relpartbound, oid) FROM pg_class "
                               "WHERE relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace, "
                               "'pg_toast'::regnamespace) ORDER BY 1").fetchall()
    before = fingerprint(target)
    run(target, params={"dry_run": True})
    with connect(target) as conn:
        assert conn.execute("SELECT relname, relkind, pg_get_expr(relpartbound, oid) FROM pg_class "
                            "WHERE relnamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace, "
                            "'pg_toast'::regnamespace) ORDER BY 1").fetchall() == catalog
    assert fingerprint(target) == before and steps(target) == []


def test_drop_without_a_dump_counts_and_drops_under_the_write_lock(target):
    with connect(target) as conn:
        conn.execute("CREATE TABLE logs (at date NOT NULL) PARTITION BY RANGE (at); "
                     "CREATE TABLE logs_old PARTITION OF logs FOR VALUES FROM ('2025-01-01') TO ('2025-02-01'); "
                     "INSERT INTO logs SELECT date '2025-01-01' + g % 31 FROM generate_series(1, 500) g")
    write_config(target, retire="detach", extra_table="        logs: {interval: monthly, premake: 1, "
                                                      "retention: 3 months, retire: drop, dump_before_drop: false}\n")
    run(target)
    assert not table_exists(target, "public", "logs_old")
    status, backup_id, rows, _, _ = retirements(target)["public.logs_old"]
    assert (status, backup_id, rows) == ("dropped", None, 500)


def test_table_not_range_partitioned_is_an_error_naming_file_target_table_and_key(target):
    write_config(target, retire="detach",
                 extra_table="        plain_table: {interval: monthly, premake: 1, retention: 3 months}\n")
    with pytest.raises(AirflowFailException) as err:
        run(target)
    message = str(err.value)
    assert str(target.config_path) in message and f"target '{target.name}'" in message
    assert "partitions.tables.plain_table" in message and "must be RANGE-partitioned" in message
    assert "events_2026_04" in partitions(target), "the other tables were still done"
