"""dbops_preflight end to end on the real stack: healthy targets (PostgreSQL and MongoDB) pass, a dead one
fails alone."""

from __future__ import annotations

import json
import socket

import psycopg
import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.core.config import DEFAULT_CONFIG_PATH
from dbops.operators.preflight import PreflightOperator
from scripts.stack.mongo import start_mongo
from scripts.stack.paths import ROOT
from scripts.stack.postgres import TEST_DATABASES, libpq_conninfo

CHECKS = ["connectivity", "server_version", "dump_access", "pg_dump", "pg_restore", "psql", "backup_store",
          "ops_migrations"]
MONGO_CHECKS = ["connectivity", "server_version", "replica_set", "oplog", "backup_store", "ops_migrations"]


DEBIAN_15_BIN = "/usr/lib/postgresql/15/bin"  # Debian's client tools on this machine kind


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def two_targets(tmp_path, monkeypatch, pg_server):
    """Config with the demo targets (appdb, chatdb) and one whose server is down; DAG files parse with it."""
    start_mongo()
    config = DEFAULT_CONFIG_PATH.read_text() + (
        "  downdb:\n    conn_id: pg_down\n    backup: {storage: local}\n")
    path = tmp_path / "dbops.yaml"
    path.write_text(config.replace("url: var/backups", f"url: {tmp_path / 'backups'}"))
    monkeypatch.setenv("DBOPS_CONFIG", str(path))
    monkeypatch.setenv("AIRFLOW_CONN_PG_DOWN", json.dumps({
        "conn_type": "postgres", "host": "127.0.0.1", "port": closed_port(), "login": "postgres",
        "password": "irrelevant", "schema": "appdb", "extra": {"connect_timeout": 2}}))
    return path


def verdicts(run_id: str) -> dict[tuple[str, str], bool]:
    with psycopg.connect(libpq_conninfo(TEST_DATABASES["dbops"])) as conn:
        rows = conn.execute("SELECT target, check_name, ok FROM dbops.preflight_results WHERE run_id = %s",
                            (run_id,)).fetchall()
    return {(target, check): ok for target, check, ok in rows}


def test_dead_target_fails_alone_and_everything_is_recorded(two_targets):
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["dbops_preflight"]
    for task in dag.tasks:
        task.retries = 0
    run = dag.test()
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"check__appdb": "success", "check__chatdb": "success", "check__downdb": "failed"}
    recorded = verdicts(run.run_id)
    assert all(recorded[("appdb", check)] for check in CHECKS)
    assert all(recorded[("chatdb", check)] for check in MONGO_CHECKS)
    assert recorded[("downdb", "connectivity")] is False
    assert recorded[("downdb", "ops_migrations")] is True
    assert recorded[("downdb", "backup_store")] is True


def test_log_ends_with_one_verdict_per_check(two_targets, capsys):
    operator = PreflightOperator(task_id="check__downdb", target="downdb")
    with pytest.raises(AirflowException) as info:
        operator.execute({"run_id": "log-test"})
    assert not isinstance(info.value, AirflowFailException), "connection refused must be retried"
    lines = [line for line in capsys.readouterr().out.splitlines() if "PreflightOperator" in line]
    tail = lines[-len(CHECKS) - 1:]
    assert [line.split("]", 1)[1].split()[0] for line in tail[:-1]] == [
        "FAIL", "SKIP", "SKIP", "SKIP", "SKIP", "SKIP", "PASS", "PASS"]
    assert all(f" {check}: " in line for check, line in zip(CHECKS, tail))
    assert "preflight downdb: 7 of 8 checks passed or skipped, 1 failed" in tail[-1]


def test_too_old_tools_fail_without_retry(two_targets):
    """Client tools older than the server are permanent: fail at once, say what to fix.

    Real parts: the running PostgreSQL 18 server and Debian's PostgreSQL 15 client tools, pinned with
    ``tools.exclusive`` so that no newer tool is found elsewhere.
    """
    two_targets.write_text(two_targets.read_text().replace(
        "tools:\n  bin_dir: null", f"tools:\n  bin_dir: {DEBIAN_15_BIN}\n  exclusive: true"))
    operator = PreflightOperator(task_id="check__appdb", target="appdb")
    with pytest.raises(AirflowFailException,
                       match=rf"pg_dump must be version 18 or newer for server 18\.\d+: {DEBIAN_15_BIN}/pg_dump is 15"):
        operator.execute({"run_id": "old-tools"})
    assert verdicts("old-tools")[("appdb", "pg_dump")] is False


@pytest.fixture
def least_privilege_target(two_targets, scratch_db, monkeypatch):
    """Target ``lpdb``: a database with a table, a sequence and a large object owned by the superuser, reached
    as a login role with pg_read_all_data only (what a DBA grants a backup role)."""
    import uuid

    from psycopg import sql

    from scripts.stack.postgres import conn_uri

    database, role, password = scratch_db(), f"dbops_lp_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id serial PRIMARY KEY, name text)")
        large_object = conn.execute("SELECT lo_from_bytea(0, 'scanned contract')").fetchone()[0]
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(role)))
    two_targets.write_text(two_targets.read_text() + "  lpdb:\n    conn_id: pg_lp\n    backup: {storage: local}\n")
    monkeypatch.setenv("AIRFLOW_CONN_PG_LP", f"postgresql://{role}:{password}@{conn_uri(database).split('@', 1)[1]}")
    yield database, role, large_object
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_preflight_sees_the_large_object_a_pg_read_all_data_role_cannot_dump(least_privilege_target):
    from psycopg import sql

    database, role, large_object = least_privilege_target
    with pytest.raises(AirflowFailException, match=rf"dump_access: the nightly dump would fail: role {role} cannot "
                       rf"read 1 large object \({large_object}\)\..*GRANT SELECT ON LARGE OBJECT <oid> TO {role}"):
        PreflightOperator(task_id="check__lpdb", target="lpdb").execute({"run_id": "lp-1"})
    assert verdicts("lp-1")[("lpdb", "dump_access")] is False

    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT ON LARGE OBJECT {} TO {}").format(sql.Literal(large_object),
                                                                              sql.Identifier(role)))
    PreflightOperator(task_id="check__lpdb", target="lpdb").execute({"run_id": "lp-2"})
    assert verdicts("lp-2")[("lpdb", "dump_access")] is True


def test_preflight_names_the_tables_sequences_and_schemas_a_role_cannot_read(least_privilege_target):
    from psycopg import sql

    database, role, large_object = least_privilege_target
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(sql.SQL("REVOKE pg_read_all_data FROM {}").format(sql.Identifier(role)))
        conn.execute("CREATE SCHEMA private")
        conn.execute(sql.SQL("GRANT SELECT ON accounts TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("ALTER LARGE OBJECT {} OWNER TO {}").format(sql.Literal(large_object),
                                                                          sql.Identifier(role)))
    with pytest.raises(AirflowFailException) as info:
        PreflightOperator(task_id="check__lpdb", target="lpdb").execute({"run_id": "lp-3"})
    message = str(info.value)
    found = message.split("cannot read ", 1)[1].split(". ", 1)[0]
    assert found == "1 schema (private); 1 sequence (public.accounts_id_seq)", "the table it may read is not named"
    assert "pg_read_all_data" in message


def test_preflight_names_a_table_whose_row_level_security_the_dump_would_refuse(least_privilege_target):
    """pg_dump runs without --enable-row-security: a table whose policies apply to the role fails the dump."""
    from psycopg import sql

    database, role, large_object = least_privilege_target
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT ON LARGE OBJECT {} TO {}").format(sql.Literal(large_object),
                                                                              sql.Identifier(role)))
        conn.execute("CREATE TABLE tenant_notes (tenant text, note text)")
        conn.execute("ALTER TABLE tenant_notes ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY own_tenant ON tenant_notes USING (tenant = current_user)")
    with pytest.raises(AirflowFailException, match=rf"cannot read 1 row-level security table \(public\.tenant_notes\)"
                                                   rf"\. .*ALTER ROLE {role} BYPASSRLS"):
        PreflightOperator(task_id="check__lpdb", target="lpdb").execute({"run_id": "lp-4"})
