"""Shared fixtures: the local embedded PostgreSQL 18 (started if needed) and scratch databases.

`make test` starts the stack first; running `pytest` directly works too: the session starts the
server itself and stops it at the end if it was not running before.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from scripts import devstack

for _key, _value in devstack.airflow_env().items():
    os.environ.setdefault(_key, _value)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[None]:
    started = devstack.start_postgres()
    devstack.ensure_databases()
    devstack.migrate_ops_database()
    devstack.migrate_airflow_database()
    yield
    if started:
        devstack.stop_postgres()


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_server) -> str:
    """libpq conninfo of a superuser connection to database ``postgres``."""
    return devstack.libpq_conninfo("postgres")


@pytest.fixture
def scratch_db(pg_admin_dsn) -> Iterator[Callable[[], str]]:
    """Factory of empty databases, dropped after the test; returns the database name."""
    created: list[str] = []

    def make() -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return name

    yield make
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        for name in created:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

