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

# The suite's own metadata and ops databases (airflow_test, dbops_test), never those `make run` shows.
os.environ.update(devstack.airflow_env(test=True))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[None]:
    started = devstack.start_postgres()
    devstack.ensure_databases()
    devstack.up_test_databases()
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

