"""Restores and verifications on the real stack: what a restore may replace and how, what verification
compares, and how tool failures and timeouts are classified.

Uses the target fixture and helpers of test_backup (a small database with its own config and store);
the operators run as the task runner runs them, `execute(context)` with a FAKE minimal context.
"""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import timedelta

import psutil
import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from psycopg import sql

from dbops.core.manifest import MANIFEST_NAME, Manifest
from dbops.operators.backup import DUMP_FILE, RestoreBackupOperator, ScratchDatabaseOperator, VerifyBackupOperator
from scripts.stack.postgres import admin_connection, conn_uri, libpq_conninfo
from tests.backup import conftest as bk
from tests.backup.conftest import backup, catalog_row, context, ops, store, verify


def restore(database: str, backup_id: str = "latest-verified", overwrite: bool = False,
            confirm_database: str | None = None) -> dict:
    confirm = {"confirm_database": confirm_database} if confirm_database is not None else {}
    return RestoreBackupOperator(task_id="restore", target=bk.NAME, backup_id=backup_id, database=database,
                                 overwrite=overwrite, **confirm).execute(context())


def run_sql(database: str, statements: str) -> None:
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(statements)


def query(database: str, statement: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(libpq_conninfo(database)) as conn:
        return conn.execute(statement, params).fetchall()


def databases_like(pattern: str) -> list[str]:
    return [row[0] for row in query("postgres", "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY 1",
                                    (pattern,))]


def drop_databases(*names: str) -> None:
    with admin_connection() as conn:
        for name in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def stored_manifest(backup_id: str) -> Manifest:
    return Manifest.from_json(store().read_bytes(f"{backup_id}/{MANIFEST_NAME}"))


def rewrite_manifest(backup_id: str, change) -> None:
    """Edit the stored manifest's JSON (the manifest itself carries no checksum)."""
    raw = json.loads(store().read_bytes(f"{backup_id}/{MANIFEST_NAME}"))
    change(raw)
    store().put_bytes(f"{backup_id}/{MANIFEST_NAME}", json.dumps(raw).encode())


def recovery_tests(backup_id: str) -> int:
    return ops().get_first("SELECT count(*) FROM dbops.recovery_tests WHERE backup_id = %s",
                           parameters=(backup_id,))[0]


def children_named(name: str) -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if p.name() == name]


# --- what the snapshot records and verification compares ---------------------------------------------------------

def test_inheritance_parent_is_counted_without_its_children(target):
    run_sql(target.database, """
        CREATE TABLE readings (id int PRIMARY KEY, value int);
        CREATE TABLE readings_archive () INHERITS (readings);
        INSERT INTO readings SELECT g, g FROM generate_series(1, 10) g;
        INSERT INTO readings_archive SELECT g, g FROM generate_series(100, 104) g;
    """)
    made = backup()
    manifest = stored_manifest(made["backup_id"])
    assert manifest.tables["public.readings"] == 10  # as pg_dump dumps it: ONLY the parent
    assert manifest.tables["public.readings_archive"] == 5
    assert verify(made["backup_id"])["verified"] is True


def test_not_valid_check_constraint_in_the_source_verifies(target):
    """The issue's repro: a healthy schema with a NOT VALID constraint must verify."""
    run_sql(target.database, """
        ALTER TABLE customers ADD CONSTRAINT c CHECK (id IS NOT NULL) NOT VALID;
        ALTER TABLE orders ADD CONSTRAINT orders_total_fk_free CHECK (total >= 0) NOT VALID;
    """)
    made = backup()
    assert verify(made["backup_id"])["verified"] is True
    manifest = stored_manifest(made["backup_id"])
    assert manifest.not_validated == ["public.customers c c", "public.orders c orders_total_fk_free"]
    checks = manifest.verification["checks"]["constraints"]
    assert checks["missing"] == [] and checks["not_validated"] == []


def test_database_level_search_path_does_not_change_constraint_names(target):
    run_sql(target.database, f"""
        CREATE SCHEMA app;
        CREATE TABLE app.accounts (id int PRIMARY KEY, customer_id int REFERENCES public.customers(id));
        INSERT INTO app.accounts SELECT g, g FROM generate_series(1, 100) g;
        ALTER DATABASE "{target.database}" SET search_path = app, public;
    """)
    made = backup()
    assert verify(made["backup_id"])["verified"] is True
    manifest = stored_manifest(made["backup_id"])
    assert "app.accounts p accounts_pkey" in manifest.constraints
    assert "public.customers p customers_pkey" in manifest.constraints


def test_a_constraint_valid_in_the_source_but_missing_after_restore_fails(target):
    made = backup()
    rewrite_manifest(made["backup_id"], lambda raw: raw["constraints"].append("public.customers c must_exist"))
    with pytest.raises(AirflowFailException, match=r"constraints: .*missing=\['public.customers c must_exist'\]"):
        verify(made["backup_id"])
    assert catalog_row(made["backup_id"])[0] is False


def test_manifest_written_before_qualified_names_still_verifies(target):
    """Older manifests: constraint names as `conrelid::regclass` printed them, no not_validated field."""
    run_sql(target.database, "ALTER TABLE customers ADD CONSTRAINT c CHECK (id IS NOT NULL) NOT VALID")
    made = backup()

    def to_old_format(raw: dict) -> None:
        raw["constraints"] = [name.removeprefix("public.") for name in raw["constraints"] if " c " not in name]
        del raw["not_validated"]

    rewrite_manifest(made["backup_id"], to_old_format)
    assert stored_manifest(made["backup_id"]).not_validated is None
    assert verify(made["backup_id"])["verified"] is True


# --- pg_restore failures: transient or permanent, and timeouts -----------------------------------------------------

SLOW_RESTORE = """
CREATE FUNCTION slow_in_scratch(int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  IF current_database() LIKE 'dbops\\_verify\\_%' THEN PERFORM pg_sleep(0.5); END IF;
  RETURN true;
END $$;
CREATE TABLE slow (id int PRIMARY KEY CHECK (slow_in_scratch(id)));
INSERT INTO slow SELECT generate_series(1, 30);
"""


def _terminate_restore_when_sleeping(found: list) -> None:
    """Terminate the pg_restore backend that loads the slow table in the throwaway cluster (as a lost
    connection would)."""
    with bk.throwaway_connection() as conn:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not found:
            for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname LIKE 'dbops\\_verify\\_%' "
                                       "AND wait_event = 'PgSleep'").fetchall():
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                found.append(pid)
            time.sleep(0.05)


def test_lost_connection_during_pg_restore_is_transient_and_records_nothing(target):
    run_sql(target.database, SLOW_RESTORE)
    made = backup()
    found: list = []
    killer = threading.Thread(target=_terminate_restore_when_sleeping, args=(found,))
    killer.start()
    try:
        with pytest.raises(AirflowException) as info:
            verify(made["backup_id"])
    finally:
        killer.join()
    assert found, "pg_restore was never seen loading the slow table"
    assert not isinstance(info.value, AirflowFailException), info.value
    assert "pg_restore exited" in str(info.value) and "transient" in str(info.value)
    assert recovery_tests(made["backup_id"]) == 0
    assert catalog_row(made["backup_id"])[0] is None
    assert stored_manifest(made["backup_id"]).verification is None


def test_pg_restore_past_its_timeout_is_killed_with_its_workers(target):
    """The tool timeout is the task's execution_timeout (here 10 s; the slow table takes 15 s to restore)."""
    run_sql(target.database, SLOW_RESTORE)
    made = backup()
    ScratchDatabaseOperator(task_id="create_scratch", target=bk.NAME).execute(context())
    try:
        with pytest.raises(AirflowException, match="pg_restore ran longer than 10 s and was killed") as info:
            VerifyBackupOperator(task_id="verify", target=bk.NAME, backup_id=made["backup_id"],
                                 execution_timeout=timedelta(seconds=10)).execute(context())
        assert not children_named("pg_restore")
    finally:
        ScratchDatabaseOperator(task_id="drop_scratch", target=bk.NAME, drop=True).execute(context())
    assert not isinstance(info.value, AirflowFailException)
    assert recovery_tests(made["backup_id"]) == 0


def test_failing_compressor_kills_pg_dump_at_once(target):
    """The compressor fails (its destination directory is gone): pg_dump, blocked on the full pipe, is
    killed rather than waited for."""
    from dbops.backup.dump import dump_database
    from dbops.hooks.postgres import DbopsPostgresHook
    from dbops.hooks.tools import find_tool

    hook = DbopsPostgresHook(postgres_conn_id=f"pg_{bk.NAME}")
    tool = find_tool("pg_dump", hook.server_version_num())
    outcome: list = []
    dumping = threading.Thread(target=lambda: outcome.append(bk.raised(
        lambda: dump_database(hook, tool, target.tmp / "gone" / DUMP_FILE, level=3))), daemon=True)
    dumping.start()
    dumping.join(timeout=60)
    leftover = children_named("pg_dump")
    for proc in leftover:  # so that a hang does not outlive the test
        proc.kill()
    assert not dumping.is_alive(), "dump_database still waits for pg_dump"
    assert isinstance(outcome[0], FileNotFoundError)
    assert leftover == []


# --- backup ids ----------------------------------------------------------------------------------------------------

def test_backup_id_as_folder_name_or_full_id(target):
    made = backup()
    folder = made["backup_id"].rsplit("/", 1)[-1]
    assert re.fullmatch(r"\d{8}T\d{6}Z", folder)  # the snapshot time, as in the store
    assert verify(folder)["backup_id"] == made["backup_id"]
    fresh = f"{target.database}_folder"
    try:
        assert restore(fresh, backup_id=folder)["backup_id"] == made["backup_id"]
        assert restore(f"{fresh}2", backup_id=made["backup_id"])["backup_id"] == made["backup_id"]
    finally:
        drop_databases(fresh, f"{fresh}2")


@pytest.mark.parametrize("backup_id", ["../../etc", "appdb/full/20261120T020000Z", "20261120", "latest; DROP"])
def test_malformed_backup_id_fails_at_once_and_says_the_format(target, backup_id):
    backup()
    with pytest.raises(AirflowFailException, match=r"is not a backup id of target .*: use latest-verified, latest, "
                                                   r"a backup folder name such as 20261130T020000Z"):
        verify(backup_id)
    with pytest.raises(AirflowFailException, match="is not a backup id"):
        restore(f"{target.database}_bad", backup_id=backup_id)
    assert not databases_like(f"{target.database}\\_bad%")


def test_unknown_backup_id_lists_the_newest_backups(target):
    made = backup()
    verify(made["backup_id"])
    folder = made["backup_id"].rsplit("/", 1)[-1]
    with pytest.raises(AirflowFailException, match=r"backup .*/20200101T000000Z has no manifest .* The newest "
                                                   rf"backups of .*: {folder} \(verified\)"):
        restore(f"{target.database}_unknown", backup_id="20200101T000000Z")


# --- restores never destroy what they replace ----------------------------------------------------------------------

def _replaceable_restore(target) -> tuple[str, str]:
    """A verified backup restored into a new database (so a restore made it), with a row added since."""
    made = backup()
    verify(made["backup_id"])
    fresh = f"{target.database}_r"
    restore(fresh)
    run_sql(fresh, "INSERT INTO customers VALUES (999999, 'added after the restore', NULL)")
    return made["backup_id"], fresh


def test_overwrite_with_a_corrupt_archive_leaves_the_existing_database_intact(target):
    backup_id, fresh = _replaceable_restore(target)
    try:
        stored = target.tmp / "store" / backup_id / DUMP_FILE
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0x01
        stored.write_bytes(data)
        with pytest.raises(AirflowFailException, match=f"FAILED: restore of .* into {fresh}; {fresh} is unchanged .*checksums: .*sha256"):
            restore(fresh, backup_id=backup_id, overwrite=True)
        assert query(fresh, "SELECT count(*) FROM customers") == [(2001,)]
        assert databases_like(f"{fresh}\\_\\_dbops%") == []
    finally:
        drop_databases(fresh)


def test_overwrite_whose_check_fails_leaves_the_existing_database_intact(target):
    """The archive is sound but the restored rows do not match the manifest: the swap never happens."""
    backup_id, fresh = _replaceable_restore(target)
    try:
        session = psycopg.connect(libpq_conninfo(fresh))  # an application's session on the old database
        rewrite_manifest(backup_id, lambda raw: raw["tables"].update({"public.customers": 1}))
        with pytest.raises(AirflowFailException, match=f"FAILED: restore of .* into {fresh}; {fresh} is unchanged .*row_counts"):
            restore(fresh, backup_id=backup_id, overwrite=True)
        assert session.execute("SELECT count(*) FROM customers").fetchone() == (2001,), "its session survived"
        session.close()
        assert databases_like(f"{fresh}\\_\\_dbops%") == []
    finally:
        drop_databases(fresh)


def test_overwrite_swaps_only_after_the_check_and_drops_the_old_database(target):
    backup_id, fresh = _replaceable_restore(target)
    try:
        session = psycopg.connect(libpq_conninfo(fresh), autocommit=True)
        result = restore(fresh, backup_id=backup_id, overwrite=True)
        assert result["replaced"] is True
        assert query(fresh, "SELECT count(*) FROM customers") == [(2000,)]
        comment = query("postgres", "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                                    "WHERE datname = %s", (fresh,))[0][0]
        assert comment == f"dbops restore of {backup_id} by test_run"
        assert databases_like(f"{fresh}\\_\\_dbops%") == []
        with pytest.raises(psycopg.OperationalError):  # the old database's session was ended at the swap
            session.execute("SELECT 1")
    finally:
        drop_databases(fresh)


def test_a_database_no_restore_created_needs_confirm_database(target, scratch_db):
    made = backup()
    verify(made["backup_id"])
    theirs = scratch_db()
    run_sql(theirs, "CREATE TABLE precious (id int); INSERT INTO precious VALUES (1)")
    with pytest.raises(AirflowFailException, match=f"no dbops restore created it .*set confirm_database to "
                                                   f"'{theirs}' as well as overwrite"):
        restore(theirs, overwrite=True)
    with pytest.raises(AirflowFailException, match="confirm_database 'other' does not match"):
        restore(theirs, overwrite=True, confirm_database="other")
    assert query(theirs, "SELECT count(*) FROM precious") == [(1,)]
    restore(theirs, overwrite=True, confirm_database=theirs)
    assert query(theirs, "SELECT count(*) FROM customers") == [(2000,)]
    assert query(theirs, "SELECT count(*) FROM pg_tables WHERE tablename = 'precious'") == [(0,)]


def test_temporary_database_of_an_interrupted_restore_is_dropped_a_foreign_one_refused(target):
    made = backup()
    verify(made["backup_id"])
    fresh = f"{target.database}_again"
    temporary = f"{fresh}__dbops_restoring"
    try:
        run_sql("postgres", f'CREATE DATABASE "{temporary}"')
        with pytest.raises(AirflowFailException, match=f"database '{temporary}', this restore's temporary name, "
                                                       "exists and no dbops restore created it; rename or drop it"):
            restore(fresh)
        assert databases_like(temporary) == [temporary]
        run_sql("postgres", f"COMMENT ON DATABASE \"{temporary}\" IS 'dbops restore of {made['backup_id']} by crashed'")
        restore(fresh)
        assert databases_like(f"{fresh}%") == [fresh]
    finally:
        drop_databases(fresh, temporary)


@pytest.fixture
def two_targets(target, monkeypatch):
    """The test target with a verification server (the `postgres` database) and the demo `appdb` as a second
    configured target."""
    monkeypatch.setenv("AIRFLOW_CONN_PG_VERIFY", conn_uri("postgres"))
    target.config_path.write_text(target.config_path.read_text().replace(
        "lock_wait_timeout: 2s}", "lock_wait_timeout: 2s, verify_conn_id: pg_verify}")
        + "  demo:\n    conn_id: pg_appdb\n")
    return target


def test_restore_refuses_system_ops_airflow_and_other_target_databases(two_targets):
    made = backup()
    verify(made["backup_id"])
    appdb_tables = query("appdb", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
    refused = {
        "dbops_test": "the dbops ops database",
        "airflow_test": "Airflow's metadata database",
        "airflow": "Airflow's metadata database",
        "postgres": "PostgreSQL's maintenance database",
        "template0": "a template database",
        "template1": "a template database",
        "appdb": "the database of target demo",
    }
    for database, reason in refused.items():
        with pytest.raises(AirflowFailException, match=f"refusing to restore over '{database}': it is {reason}"):
            restore(database, backup_id=made["backup_id"], overwrite=True, confirm_database=database)
    assert query("appdb", "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == appdb_tables
    assert ops().get_first("SELECT count(*) FROM dbops.backups WHERE backup_id = %s",
                           parameters=(made["backup_id"],))[0] == 1
    assert {"postgres", "template0", "template1", "airflow_test", "dbops_test"} <= set(databases_like("%"))
    assert databases_like("%\\_\\_dbops%") == []


def test_with_a_verification_server_the_targets_own_database_is_still_refused(two_targets):
    """Restores go to the verification server (here the same server's `postgres` connection); the target's
    own database is refused all the same."""
    made = backup()
    verify(made["backup_id"])
    run_sql(two_targets.database, "INSERT INTO customers VALUES (999999, 'written after the backup', NULL)")
    refusal = f"refusing to restore over '{two_targets.database}': it is the target's own database"
    with pytest.raises(AirflowFailException, match=refusal):
        restore(two_targets.database, overwrite=True)
    with pytest.raises(AirflowFailException, match=refusal):
        restore(two_targets.database, overwrite=True, confirm_database=two_targets.database)
    assert query(two_targets.database, "SELECT count(*) FROM customers") == [(2001,)]


# --- owners and grants -----------------------------------------------------------------------------------------------

@pytest.fixture
def roles(target):
    """Three roles (cluster-wide, so unique per test): an owner, a reader, and one the restore will lack."""
    suffix = target.database[-8:]
    names = [f"owner_{suffix}", f"reader_{suffix}", f"gone_{suffix}"]
    for name in names:
        run_sql("postgres", f"CREATE ROLE {name} NOLOGIN")
    yield names
    existing = [row[0] for row in query("postgres", "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,))]
    for database in databases_like(f"{target.database}%"):
        run_sql(database, f"DROP OWNED BY {', '.join(existing)}")
    for name in existing:
        run_sql("postgres", f"DROP ROLE {name}")


def test_restore_and_verification_keep_owners_and_grants(target, roles):
    """The throwaway verification cluster gets the roles the backup names (created there), so it restores and
    checks owners and grants too; the restore on demand needs them on its server."""
    owner, reader, _ = roles
    run_sql(target.database, f"""
        CREATE TABLE ledger (id int PRIMARY KEY, amount numeric);
        INSERT INTO ledger SELECT g, g FROM generate_series(1, 50) g;
        ALTER TABLE ledger OWNER TO {owner};
        GRANT SELECT ON ledger TO {reader};
    """)
    made = backup()
    verify(made["backup_id"])
    restore_check, created = ops().get_first(
        "SELECT checks->'restore'->>'owners_and_grants', checks->'roles'->'created' FROM dbops.recovery_tests "
        "WHERE backup_id = %s", parameters=(made["backup_id"],))
    assert restore_check == "restored"
    assert set(created) >= {owner, reader}
    fresh = f"{target.database}_owned"
    try:
        restore(fresh)
        assert query(fresh, "SELECT tableowner FROM pg_tables WHERE tablename = 'ledger'") == [(owner,)]
        privileges = query(fresh, "SELECT has_table_privilege(%s, 'public.ledger', 'SELECT'), "
                                  "has_table_privilege(%s, 'public.customers', 'SELECT')", (reader, reader))
        assert privileges == [(True, False)]
    finally:
        drop_databases(fresh)


def test_restore_with_a_missing_role_fails_naming_it_and_creates_nothing(target, roles):
    owner, reader, gone = roles
    table = '"Ledger ""2026"" TO x"'  # pg_dump quotes it; the grantee is after the last unquoted TO
    run_sql(target.database, f"""
        CREATE TABLE {table} (id int PRIMARY KEY);
        ALTER TABLE {table} OWNER TO {owner};
        GRANT SELECT ON {table} TO {reader}, {gone};
    """)
    made = backup()
    verify(made["backup_id"])
    run_sql(target.database, f"REVOKE ALL ON {table} FROM {gone}")
    run_sql("postgres", f"DROP ROLE {gone}")
    fresh = f"{target.database}_noroles"
    with pytest.raises(AirflowFailException, match=f"roles: roles {gone} own objects of the backup or hold grants "
                                                   "in it but do not exist on the server; create them"):
        restore(fresh)
    assert databases_like(f"{fresh}%") == []


def test_restore_while_another_restore_of_the_target_runs_skips_and_changes_nothing(target, monkeypatch):
    """A second restore (a backfill's, or a widened pool) waits, then skips naming the holder."""
    from dbops.core.locks import JobBusy, job_lock

    monkeypatch.setattr("dbops.core.locks.DEFAULT_WAIT_SECONDS", 1)  # FAKE: a short wait for the test
    verify(backup()["backup_id"])
    fresh = f"{target.database}_lock"
    with job_lock("dbops_state", bk.NAME, "restore"):
        with pytest.raises(JobBusy, match=f"restore of {bk.NAME} is already running in another run"):
            restore(fresh)
    assert databases_like(f"{fresh}%") == []
    try:
        assert restore(fresh)["database"] == fresh
    finally:
        drop_databases(fresh)
