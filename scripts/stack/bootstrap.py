"""Bringing the local stack up in order: server, databases, migrations, demo data, Airflow set-up."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from scripts.stack.airflow import ensure_pools, migrate_airflow_database
from scripts.stack.mongo import load_mongo_demo_if_empty, start_mongo, stop_mongo
from scripts.stack.paths import VAR
from scripts.stack.postgres import (
    TEST_DATABASES,
    ensure_databases,
    ensure_replication,
    load_demo_unless_current,
    migrate_ops_database,
    start_postgres,
    stop_postgres,
)


def up() -> tuple[bool, bool]:
    """Everything but the Airflow services. Return whether this call started PostgreSQL, and MongoDB."""
    started = start_postgres()
    ensure_replication()  # also on a server started before: a pull may have added what PITR needs
    ensure_databases()
    migrate_ops_database()
    load_demo_unless_current()
    started_mongo = start_mongo()
    load_mongo_demo_if_empty()
    (VAR / "backups").mkdir(exist_ok=True)
    migrate_airflow_database()
    ensure_pools()
    return started, started_mongo


def up_test_databases() -> None:
    """The test suite's own Airflow metadata and ops databases."""
    ensure_databases(tuple(TEST_DATABASES.values()))
    migrate_ops_database(TEST_DATABASES["dbops"])
    migrate_airflow_database(test=True)
    ensure_pools(test=True)


@contextmanager
def stack() -> Iterator[None]:
    """The set-up for the duration of a command; each server is stopped after if this started it."""
    started_pg, started_mongo = up()
    try:
        yield
    finally:
        if started_mongo:
            stop_mongo()
        if started_pg:
            stop_postgres()
