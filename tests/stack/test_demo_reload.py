"""The local stack reloads the demo target when its sources changed, and only then (real PostgreSQL)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from scripts.stack.postgres import admin_connection, demo_version, libpq_conninfo, load_demo_unless_current


@pytest.fixture
def demo_database(monkeypatch) -> str:
    monkeypatch.setenv("DBOPS_DEMO_SIZE_MB", "20")
    name = f"demo_reload_{uuid.uuid4().hex[:8]}"
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield name
    with admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _state(database: str) -> tuple[str | None, bool, bool]:
    """The database's demo version, whether the demo is loaded, whether the DAGs' leftovers are there."""
    with psycopg.connect(libpq_conninfo(database)) as conn:
        return conn.execute("SELECT shobj_description(d.oid, 'pg_database'), to_regclass('public.orders') IS NOT NULL, "
                            "to_regclass('archive.orders') IS NOT NULL FROM pg_database d WHERE d.datname = %s",
                            (database,)).fetchone()


def _archive_something(database: str) -> None:
    with psycopg.connect(libpq_conninfo(database)) as conn:
        conn.execute("CREATE SCHEMA archive; CREATE TABLE archive.orders (LIKE public.orders)")


def test_current_demo_is_kept_and_an_older_one_is_rebuilt_whole(demo_database):
    load_demo_unless_current(demo_database)
    assert _state(demo_database) == (demo_version(), True, False)

    _archive_something(demo_database)  # what pg_archive__ leaves in a demo it ran on
    load_demo_unless_current(demo_database)
    assert _state(demo_database) == (demo_version(), True, True), "the current demo must not be reloaded"

    with admin_connection() as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'dbops demo 0000000000000000'").format(
            sql.Identifier(demo_database)))
    load_demo_unless_current(demo_database)
    assert _state(demo_database) == (demo_version(), True, False), "an older demo is rebuilt, leftovers included"
