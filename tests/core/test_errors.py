"""What a failure tells the person on call: the grant a real pg_dump permission error needs."""

from __future__ import annotations

import subprocess
import uuid

import psycopg
import pytest
from psycopg import sql

from dbops.core.errors import dump_permission_fix
from dbops.hooks.tools import find_tool, libpq_environment
from scripts.stack.paths import PG_HOST, PG_PORT
from scripts.stack.postgres import libpq_conninfo


@pytest.fixture
def reader(scratch_db):
    """A database with a table and a large object owned by the superuser, and a login role for pg_dump."""
    database = scratch_db()
    role, password = f"reader_{uuid.uuid4().hex[:8]}", "reader-Pa55-1"
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY)")
        oid = conn.execute("SELECT lo_from_bytea(0, 'scan of a contract')").fetchone()[0]
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    yield database, role, password, oid
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def dump_as(database: str, role: str, password: str) -> subprocess.CompletedProcess:
    pg_dump = find_tool("pg_dump", 180000).path
    with libpq_environment(PG_HOST, PG_PORT, role, database, password) as env:
        return subprocess.run([pg_dump, "-Fc", "--no-sync", "-f", "/dev/null"], env=env, capture_output=True, text=True,
                              timeout=120)


def grant(database: str, statement: str, *identifiers: str) -> None:
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(*map(sql.Identifier, identifiers)))


def test_large_object_permission_error_names_the_grant_that_fixes_it(reader):
    database, role, password, oid = reader
    grant(database, "GRANT pg_read_all_data TO {}", role)

    failed = dump_as(database, role, password)

    assert failed.returncode != 0 and f"permission denied for large object {oid}" in failed.stderr
    fix = dump_permission_fix(failed.stderr)
    assert "GRANT SELECT ON LARGE OBJECT <oid> TO <backup role>" in fix
    assert "pg_read_all_data does not cover them" in fix
    grant(database, f"GRANT SELECT ON LARGE OBJECT {oid} TO {{}}", role)  # what the message says to do
    assert dump_as(database, role, password).returncode == 0


def test_table_permission_error_names_pg_read_all_data(reader):
    database, role, password, _ = reader

    failed = dump_as(database, role, password)

    assert "permission denied for table accounts" in failed.stderr
    assert dump_permission_fix(failed.stderr) == ("Grant the backup role read access to every table "
                                                  "(e.g. pg_read_all_data).")
    assert dump_permission_fix("could not connect to server: Connection refused") == ""
