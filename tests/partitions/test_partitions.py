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
                 extra_table: str = "", retries: int = 1, hostile: bool = True) -> None:
    quoted = f"""'{HOSTILE_SCHEMA}.{HOSTILE_TABLE.replace("'", "''")}'"""
    hostile_table = (f"""        {quoted}: {{interval: monthly, premake: 1, retention: 3 months, """
                     f"""retire: {retire if retire != "drop" else "archive_schema"}, archive_schema: 'Arch "ive"'}}\n"""
                     if hostile else "")
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
{hostile_table}{extra_table}""")


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
    t = SimpleNamespace(database=database, name=name, reader=reader, tmp=tmp_path,
                        config_path=tmp_path / "dbops.yaml", roles=[reader])
    monkeypatch.setenv("DBOPS_CONFIG", str(t.config_path))
    write_config(t)
    yield t
    with admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        for role in t.roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


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


# --- issue 20: DEFAULT moves that never hide rows, row-level security, retired ranges, strays, sub-partitions ---

EVERYTHING = "SELECT * FROM events UNION ALL SELECT * FROM ev_202510 UNION ALL SELECT * FROM ev_202511"
APRIL = "at >= '2026-04-01' AND at < '2026-05-01'"


def dbops_waiting(t, query_like: str | None = None, relation: str | None = None) -> int:
    """pid of the run's backend once it waits for a lock (on ``relation``, in a query like ``query_like``): polls
    the catalogs for that state (the interleaving itself is made by a lock the test holds)."""
    with connect(t) as conn:
        for _ in range(1200):
            row = conn.execute(
                "SELECT a.pid FROM pg_stat_activity a WHERE a.application_name = 'dbops partitions' "
                "AND a.datname = current_database() AND a.wait_event_type = 'Lock' "
                "AND (%(q)s::text IS NULL OR a.query ILIKE %(q)s) AND (%(rel)s::text IS NULL OR EXISTS ("
                "SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND NOT l.granted AND l.relation = %(rel)s::regclass))",
                {"q": query_like, "rel": relation}).fetchone()
            if row:
                return row[0]
            time.sleep(0.05)
    raise AssertionError(f"the run never waited for a lock ({query_like or relation})")


def hold_last_april_row(t) -> psycopg.Connection:
    """A transaction holding the physically last April row of DEFAULT FOR UPDATE: the first two batches of 1000
    move, the third waits for it."""
    holder = connect(t)
    holder.autocommit = False
    holder.execute(f"SELECT 1 FROM events_default WHERE ctid = (SELECT ctid FROM events_default WHERE {APRIL} "
                   "ORDER BY ctid DESC LIMIT 1) FOR UPDATE")
    return holder


def count(t, query: str) -> int:
    with connect(t) as conn:
        return conn.execute(query).fetchone()[0]


def recorded_run(t, logical_date: datetime = DAY) -> tuple[dict, dict]:
    """The plan and the report the ops database holds for the run of ``logical_date``."""
    with OpsDatabaseHook(postgres_conn_id="dbops_state").transaction() as conn:
        return conn.execute("SELECT plan, report FROM dbops.partition_runs WHERE target = %s AND logical_date = %s",
                            (t.name, logical_date)).fetchone()


def findings_of(t, table: str = "events", logical_date: datetime = DAY) -> list[str]:
    plan, _ = recorded_run(t, logical_date)
    return next(p["findings"] for p in plan["tables"] if p["table"] == table)


def test_application_insert_into_default_before_the_attach_is_moved_with_the_rest(target):
    """Item 20.5. The April rows are moved out of DEFAULT in batches; a session holds the parent in SHARE UPDATE
    EXCLUSIVE mode (the mode ATTACH needs), so the final move-and-attach waits for it; meanwhile the application
    INSERTs an April row through the parent: it lands in DEFAULT. The attach must take that row along (DEFAULT is
    locked before the final move), not fail on it (23514) and leave 2500 moved rows invisible."""
    write_config(target, retire="detach", lock_timeout="30s")
    before = fingerprint(target)
    holder = connect(target)
    holder.autocommit = False
    holder.execute("LOCK TABLE ONLY events IN SHARE UPDATE EXCLUSIVE MODE")
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catch(errors, lambda: run(target)))
    worker.start()
    try:
        dbops_waiting(target, relation="events")  # every batch is done; the attaching transaction waits
        assert count(target, f"SELECT count(*) FROM events WHERE {APRIL}") < 2500, "the moved rows are out of sight"
        assert count(target, "SELECT count(*) FROM pg_constraint WHERE conrelid = 'events_2026_04'::regclass AND "
                             "contype = 'c' AND convalidated") == 1, (
            "the bounds CHECK was validated before DEFAULT is locked: its scan holds no lock the application needs")
        with connect(target) as app:
            app.execute("INSERT INTO events (at, payload) VALUES ('2026-04-20 12:00+00', 'inserted during the move')")
        assert count(target, "SELECT count(*) FROM ONLY events_default "
                             "WHERE payload = 'inserted during the move'") == 1
    finally:
        holder.rollback()
        holder.close()
    worker.join(120)
    assert errors == []
    assert "events_2026_04" in partitions(target)
    assert count(target, "SELECT count(*) FROM events_2026_04") == 2501
    assert count(target, f"SELECT count(*) FROM ONLY events_default WHERE {APRIL}") == 0
    assert fingerprint(target, f"SELECT * FROM ({EVERYTHING}) u "
                               "WHERE payload <> 'inserted during the move'") == before
    created = [s for s in steps(target) if s[2] == "public.events_2026_04"]
    assert [(s[1], s[3], s[4]) for s in created] == [("create", "done", 2501)]


def test_attach_failing_puts_the_moved_rows_back_into_default(target):
    """Item 20.5. An event trigger makes every ATTACH PARTITION fail after the rows were moved out of DEFAULT: the
    step fails, and every moved row is back in DEFAULT, visible through the parent; the emptied table is dropped.
    Once the trigger is gone the next run creates the partition."""
    write_config(target, retire="detach")
    before = fingerprint(target)
    with connect(target) as conn:
        conn.execute("CREATE FUNCTION refuse_attach() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN "
                     "IF current_query() ILIKE '%ATTACH PARTITION%' THEN "
                     "RAISE EXCEPTION 'attach refused by the test'; END IF; END $$")
        conn.execute("CREATE EVENT TRIGGER refuse_attach ON ddl_command_start WHEN TAG IN ('ALTER TABLE') "
                     "EXECUTE FUNCTION refuse_attach()")
    with pytest.raises(AirflowFailException, match="attach refused by the test"):
        run(target)
    assert fingerprint(target, EVERYTHING) == before
    assert count(target, f"SELECT count(*) FROM ONLY events_default WHERE {APRIL}") == 2500
    assert not table_exists(target, "public", "events_2026_04")
    failed = {s[2]: s[5] for s in steps(target) if s[1] == "create" and s[3] == "failed"}
    assert "2500 rows moved back into DEFAULT" in failed["public.events_2026_04"]
    assert "the empty table was dropped" in failed["public.events_2026_04"]
    with connect(target) as conn:
        conn.execute("DROP EVENT TRIGGER refuse_attach")
    run(target, run_id="later")
    assert "events_2026_04" in partitions(target)
    assert count(target, "SELECT count(*) FROM events_2026_04") == 2500
    assert fingerprint(target, EVERYTHING) == before


def test_move_whose_backend_is_terminated_puts_the_rows_back_in_the_same_run(target):
    """Item 20.5. Two batches of April (2000 rows) are moved, the third waits for a row the test holds, and the
    run's backend is terminated there (pg_terminate_backend). The run reconnects and puts the 2000 rows back into
    DEFAULT: right after it, every row is visible through the parent. The next run creates the partition."""
    write_config(target, retire="detach", lock_timeout="30s")
    before = fingerprint(target)
    holder = hold_last_april_row(target)
    errors: list[BaseException] = []
    worker = threading.Thread(target=lambda: _catch(errors, lambda: run(target, run_id="killed")))
    worker.start()
    try:
        pid = dbops_waiting(target, query_like="%DELETE FROM%")
        assert count(target, "SELECT count(*) FROM ONLY events_2026_04") == 2000  # two batches moved
        with connect(target) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        holder.rollback()
        holder.close()
    worker.join(120)
    assert errors and isinstance(errors[0], AirflowFailException)
    assert fingerprint(target) == before, "every row is visible through the parent again"
    assert count(target, f"SELECT count(*) FROM ONLY events_default WHERE {APRIL}") == 2500
    assert not table_exists(target, "public", "events_2026_04")
    april = [(s[1], s[3], s[4]) for s in steps(target) if s[2] == "public.events_2026_04"]
    assert april == [("create", "failed", None), ("move", "done", 2000)]
    run(target, run_id="next")
    assert count(target, "SELECT count(*) FROM events_2026_04") == 2500
    assert fingerprint(target, EVERYTHING) == before


def test_task_killed_mid_move_next_run_finishes_the_move_first_thing(target):
    """Item 20.5. The task runs in a child process; two April batches are moved, the third waits for a row the test
    holds; the task is killed (SIGKILL) and its backend terminated: 2000 rows sit in the unattached table, invisible
    through the parent, and nothing of that run is left to put them back. The next run names the half-done move in
    its plan and finishes it before any other step: every row visible again, the partition attached."""
    write_config(target, retire="detach", lock_timeout="30s")
    before = fingerprint(target)
    holder = hold_last_april_row(target)
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    script = ("import sys; from types import SimpleNamespace; from tests.partitions.test_partitions import run; "
              "run(SimpleNamespace(name=sys.argv[1]), run_id='killed')")
    child = subprocess.Popen([sys.executable, "-c", script, target.name], env=child_env)
    try:
        pid = dbops_waiting(target, query_like="%DELETE FROM%")
        child.kill()
        child.wait(30)
        with connect(target) as conn:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        child.kill()
        holder.rollback()
        holder.close()
    assert count(target, "SELECT count(*) FROM ONLY events_2026_04") == 2000
    assert "events_2026_04" not in partitions(target)
    assert fingerprint(target)[0] == before[0] - 2000, "the moved rows are invisible through the parent"
    run(target, run_id="next")
    assert any(f.startswith("half-done move: public.events_2026_04 holds 2000 rows") for f in findings_of(target))
    first = steps(target)[0]
    assert first[:5] == ("events", "create", "public.events_2026_04", "done", 2500)
    assert "finished a move an earlier run left half done (2000 rows" in first[5]
    assert count(target, "SELECT count(*) FROM events_2026_04") == 2500
    assert fingerprint(target, EVERYTHING) == before


def test_half_done_move_of_a_range_the_run_does_not_create_is_moved_back(target):
    """Item 20.5. A table dbops was filling for April when its run died holds the first half of April's rows; the
    next run is for June (it creates June to August, not April): it moves the rows back into DEFAULT, first thing,
    and drops the emptied table."""
    from dbops.partitions.create import MARKER

    write_config(target, retire="detach")
    april = fingerprint(target, f"SELECT * FROM events WHERE {APRIL}")
    with connect(target) as conn:
        conn.execute("CREATE TABLE events_2026_04 (LIKE events)")
        conn.execute(sql.SQL("COMMENT ON TABLE events_2026_04 IS {}").format(sql.Literal(
            f"{MARKER}public.events [2026-04-01T00:00:00+00:00, 2026-05-01T00:00:00+00:00)")))
        moved = conn.execute("WITH m AS (DELETE FROM events_default WHERE at >= '2026-04-01' AND at < '2026-04-10' "
                             "RETURNING *) INSERT INTO events_2026_04 SELECT * FROM m").rowcount
    assert moved > 0 and fingerprint(target, f"SELECT * FROM events WHERE {APRIL}") != april
    june = datetime(2026, 6, 10, 4, 30, tzinfo=timezone.utc)
    run(target, logical_date=june, run_id="june")
    assert fingerprint(target, f"SELECT * FROM events WHERE {APRIL}") == april
    assert count(target, f"SELECT count(*) FROM ONLY events_default WHERE {APRIL}") == 2500
    assert not table_exists(target, "public", "events_2026_04")
    first = steps(target)[0]
    assert first[:5] == ("events", "move", "public.events_2026_04", "done", moved)
    assert any(f.startswith(f"half-done move: public.events_2026_04 holds {moved} rows")
               for f in findings_of(target, logical_date=june))


def test_row_level_security_on_default_is_refused_naming_table_policy_and_what_the_role_needs(target, monkeypatch):
    """Item 20.2. The run's role owns the tables but lacks BYPASSRLS, and DEFAULT forces row level security with a
    policy hiding some April rows. Nothing may be moved on what the policy shows: the plan refuses the table,
    naming DEFAULT, the policy and what the role needs; every row stays in DEFAULT. With BYPASSRLS all 2500 move."""
    from scripts.stack.paths import PG_HOST, PG_PORT

    role = f"mover_{target.database[-12:]}"
    target.roles.insert(0, role)
    with connect(target) as conn:
        conn.execute(sql.SQL("CREATE ROLE {r} LOGIN PASSWORD 'mover' NOSUPERUSER NOBYPASSRLS; "
                             "GRANT CREATE ON SCHEMA public TO {r}").format(r=sql.Identifier(role)))
        for (table,) in conn.execute("SELECT oid::regclass::text FROM pg_class "
                                     "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p')"
                                     ).fetchall():
            conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.SQL(table), sql.Identifier(role)))
        conn.execute("ALTER TABLE events_default ENABLE ROW LEVEL SECURITY; "
                     "ALTER TABLE events_default FORCE ROW LEVEL SECURITY; "
                     "CREATE POLICY hide_d1 ON events_default USING (payload NOT LIKE 'd1%')")
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{target.name.upper()}",
                       f"postgresql://{role}:mover@{PG_HOST}:{PG_PORT}/{target.database}")
    write_config(target, retire="detach", hostile=False)
    before = fingerprint(target)
    with pytest.raises(AirflowFailException) as err:
        run(target)
    message = str(err.value)
    assert f"row-level security on public.events_default hides rows from role {role}" in message
    assert "policy 'hide_d1'" in message and f"ALTER ROLE {role} BYPASSRLS" in message
    assert "NO FORCE ROW LEVEL SECURITY" in message
    plan, _ = recorded_run(target)
    assert "hide_d1" in plan["tables"][0]["error"]
    assert fingerprint(target) == before
    assert count(target, f"SELECT count(*) FROM ONLY events_default WHERE {APRIL}") == 2500
    assert not table_exists(target, "public", "events_2026_04")
    with connect(target) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} BYPASSRLS").format(sql.Identifier(role)))
    run(target, run_id="bypassrls")
    assert count(target, "SELECT count(*) FROM events_2026_04") == 2500
    assert count(target, f"SELECT count(*) FROM ONLY events_default WHERE {APRIL}") == 0


def test_backfill_never_recreates_a_range_a_newer_run_retired(target):
    """Item 20.8. The run for 2026-03-15 dumps and drops October and November 2025; a backfill for 2025-10-20
    (which would create October to December) creates neither again, says why, and leaves an October row that
    arrived since in DEFAULT."""
    run(target)
    assert retirements(target)["public.ev_202510"][0] == retirements(target)["public.ev_202511"][0] == "dropped"
    with connect(target) as conn:
        conn.execute("INSERT INTO events (at, payload) VALUES ('2025-10-20 10:00+00', 'late october')")
    backfill = datetime(2025, 10, 20, 4, 30, tzinfo=timezone.utc)
    run(target, logical_date=backfill, run_id="backfill")
    for name in ("events_2025_10", "events_2025_11"):
        assert not table_exists(target, "public", name)
    notes = findings_of(target, logical_date=backfill)
    assert any(n.startswith("not created: [2025-10-01, 2025-11-01) was retired after this run's logical date")
               and "public.ev_202510 dropped" in n for n in notes)
    assert any(n.startswith("not created: [2025-11-01, 2025-12-01) was retired") for n in notes)
    assert count(target, "SELECT count(*) FROM ONLY events_default WHERE payload = 'late october'") == 1
    hostile = findings_of(target, f"{HOSTILE_SCHEMA}.{HOSTILE_TABLE}", backfill)
    assert any("was retired after this run's logical date" in n for n in hostile)


def test_partition_detached_by_hand_is_named_in_plan_log_and_report_and_never_dropped(target, capsys):
    """Item 20.9. ev_202512 (within retention) is detached by hand and a table named as dbops names partitions was
    never attached: both are named in the plan, the log and the report, every run, and left alone; the partitions
    dbops itself retired (recorded) and unrelated tables are not listed."""
    with connect(target) as conn:
        conn.execute("ALTER TABLE events DETACH PARTITION ev_202512")
        conn.execute("CREATE TABLE events_2024_01 (LIKE events); CREATE TABLE unrelated_2024 (id int)")
    run(target)
    run(target, run_id="again")
    for name in ("ev_202512", "events_2024_01"):
        assert table_exists(target, "public", name)
        assert any(f.startswith(f"not attached: public.{name} is named like a partition of public.events")
                   for f in findings_of(target))
    _, report = recorded_run(target)
    assert sorted(t["table"] for t in report["tables"]["events"]["not_attached"]) == [
        "public.ev_202512", "public.events_2024_01"]
    assert retirements(target)["public.ev_202510"][0] == "dropped"
    out = capsys.readouterr().out
    assert "not attached: public.ev_202512 is named like a partition" in out
    assert "2 tables named like its partitions not attached" in out


def test_subpartitioned_partition_under_retire_drop_is_refused_before_detaching(target):
    """Item 20.10. An expired partition that is itself partitioned, under retire: drop, stays attached: the step
    fails saying it is sub-partitioned, before any detach or dump; the plain expired partition of the same table is
    dropped as usual. One detached by an earlier run (recorded) is refused the same way, without a dump."""
    from dbops.partitions.record import record_retirement

    with connect(target) as conn:
        conn.execute("CREATE TABLE metrics (at date NOT NULL, host text NOT NULL) PARTITION BY RANGE (at); "
                     "CREATE TABLE metrics_2025_01 PARTITION OF metrics FOR VALUES FROM ('2025-01-01') "
                     "TO ('2025-02-01') PARTITION BY LIST (host); "
                     "CREATE TABLE metrics_2025_01_a PARTITION OF metrics_2025_01 FOR VALUES IN ('a'); "
                     "CREATE TABLE metrics_2025_01_rest PARTITION OF metrics_2025_01 DEFAULT; "
                     "CREATE TABLE metrics_2025_02 PARTITION OF metrics FOR VALUES FROM ('2025-02-01') "
                     "TO ('2025-03-01') PARTITION BY LIST (host); "
                     "CREATE TABLE metrics_2025_02_a PARTITION OF metrics_2025_02 DEFAULT; "
                     "CREATE TABLE metrics_2025_03 PARTITION OF metrics FOR VALUES FROM ('2025-03-01') "
                     "TO ('2025-04-01'); "
                     "INSERT INTO metrics SELECT date '2025-01-01' + g % 89, "
                     "CASE WHEN g % 2 = 0 THEN 'a' ELSE 'b' END FROM generate_series(1, 900) g")
        conn.execute("ALTER TABLE metrics DETACH PARTITION metrics_2025_02")  # as an earlier run left it
    with OpsDatabaseHook(postgres_conn_id="dbops_state").transaction() as ops:
        record_retirement(ops, target.name, "metrics", "public", "metrics_2025_02", "2025-02-01T00:00:00+00:00",
                          "2025-03-01T00:00:00+00:00", "drop", "detached")
    write_config(target, extra_table="        metrics: {interval: monthly, premake: 1, retention: 3 months, "
                                     "retire: drop}\n")
    january = count(target, "SELECT count(*) FROM metrics_2025_01")
    february = count(target, "SELECT count(*) FROM metrics_2025_02")
    with pytest.raises(AirflowFailException, match="sub-partitioned"):
        run(target)
    assert "metrics_2025_01" in partitions(target, "metrics"), "refused before the detach"
    assert count(target, "SELECT count(*) FROM metrics_2025_01") == january > 0
    failed = {s[2]: (s[1], s[5]) for s in steps(target) if s[3] == "failed"}
    step, detail = failed["public.metrics_2025_01"]
    assert step == "detach" and detail.startswith("not detached: public.metrics_2025_01 is sub-partitioned")
    assert "public.metrics_2025_01" not in retirements(target)
    step, detail = failed["public.metrics_2025_02"]
    assert step == "drop" and "is sub-partitioned" in detail
    status, backup_id, *_ , error = retirements(target)["public.metrics_2025_02"]
    assert (status, backup_id) == ("drop_refused", None) and "sub-partitioned" in error
    assert count(target, "SELECT count(*) FROM metrics_2025_02") == february > 0
    assert not table_exists(target, "public", "metrics_2025_03"), "the plain expired partition was dropped"
    assert retirements(target)["public.metrics_2025_03"][0] == "dropped"


def test_a_killed_runs_partial_dump_in_staging_is_removed_by_the_next_run(target):
    """A run killed while dumping a partition to drop left its staging directory (lock no longer held)."""
    leftover = target.tmp / "staging" / f"partitions__{target.name}" / "public.ev_209901"
    leftover.mkdir(parents=True)
    (leftover / "dump.pgc.zst").write_bytes(b"partial" * 1000)
    (leftover.parent / ".lock").touch()
    other = target.tmp / "staging" / "partitions__gone_target"
    other.mkdir()
    (other / ".lock").touch()

    run(target)

    assert not leftover.exists() and not other.exists()
