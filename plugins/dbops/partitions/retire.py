"""Retire a partition: detach it without stalling the application, then keep, archive or drop it.

Detach: ``DETACH PARTITION … CONCURRENTLY`` when the table has no DEFAULT partition (it takes only SHARE
UPDATE EXCLUSIVE locks, which application queries never wait behind); PostgreSQL refuses it when there is
a DEFAULT partition, and then a plain ``DETACH PARTITION`` runs under lock_timeout, retried with backoff. A
detach left pending (the concurrent detach's second transaction interrupted: killed, timed out) is
finished with ``DETACH PARTITION … FINALIZE``.

Then, per ``retire``: ``detach`` keeps the table where it is; ``archive_schema`` moves it to the archive
schema; ``drop`` drops it only after its dump was stored with a manifest and restored into a scratch
database with the same row count (:mod:`dbops.partitions.dump`). From before the dump until the DROP the
dropping session holds the table in SHARE mode (:func:`writes_blocked`), so nothing written after the dump
can be lost; the row count is checked once more under that lock. Anything short of that leaves the table
detached and fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbops.partitions.tree import TableInspection
from dbops.partitions.locks import StepSkipped, with_lock_retries
from dbops.partitions.plan import Step
from dbops.partitions.policy import PartitionsPolicy


class DropRefused(Exception):
    """The dump could not be proven recoverable: the table stays, detached."""


@dataclass
class Retired:
    how: str  # concurrently | plain | finalize | already
    bytes: int = 0


def attachment(conn: psycopg.Connection, found: TableInspection, schema: str, name: str) -> str:
    """``attached``, ``pending`` (detach pending), ``detached`` (a table of its own) or ``absent``."""
    row = conn.execute(
        "SELECT (SELECT inhdetachpending FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent "
        "JOIN pg_namespace pn ON pn.oid = p.relnamespace WHERE i.inhrelid = c.oid AND pn.nspname = %s "
        "AND p.relname = %s) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s", (found.schema, found.name, schema, name)).fetchone()
    if row is None:
        return "absent"
    return {None: "detached", True: "pending", False: "attached"}[row[0]]


def detach(conn: psycopg.Connection, found: TableInspection, step: Step, policy: PartitionsPolicy) -> Retired:
    """Detach the step's partition (autocommit connection), finishing a pending detach first."""
    conn.autocommit = True
    parent = sql.Identifier(found.schema, found.name)
    part = sql.Identifier(step.schema, step.name)

    def attempt() -> str:
        state = attachment(conn, found, step.schema, step.name)
        if state in ("detached", "absent"):
            return "already"
        if state == "pending":
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(parent, part))
            return "finalize"
        if found.default is None:
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(parent, part))
            return "concurrently"
        with conn.transaction():
            conn.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, part))
        return "plain"

    size = table_bytes(conn, step.schema, step.name)
    return Retired(with_lock_retries(f"{step.label}: detach", policy, attempt), size)


def is_partitioned(conn: psycopg.Connection, schema: str, name: str) -> bool:
    """True when the (detached) table is itself partitioned: its rows live in its own partitions."""
    row = conn.execute("SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
    return bool(row and row[0])


def table_bytes(conn: psycopg.Connection, schema: str, name: str) -> int:
    row = conn.execute("SELECT pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n "
                       "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
    return int(row[0]) if row else 0


def archive(conn: psycopg.Connection, schema: str, name: str, archive_schema: str, policy: PartitionsPolicy) -> None:
    """Move the detached table into ``archive_schema`` (created when missing)."""
    conn.autocommit = True
    if archive_schema == schema:
        return
    taken = conn.execute("SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE n.nspname = %s AND c.relname = %s", (archive_schema, name)).fetchone()
    if taken:
        raise StepSkipped(f"archive {schema}.{name}: {archive_schema}.{name} already exists; the table stays "
                          "detached where it is")

    def attempt() -> None:
        with conn.transaction():
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(archive_schema)))
            conn.execute(sql.SQL("ALTER TABLE {} SET SCHEMA {}").format(sql.Identifier(schema, name),
                                                                       sql.Identifier(archive_schema)))

    with_lock_retries(f"archive {schema}.{name}", policy, attempt)


@contextmanager
def writes_blocked(conn: psycopg.Connection, schema: str, name: str, policy: PartitionsPolicy) -> Iterator[None]:
    """Hold ``SHARE`` on the detached table in a transaction of ``conn`` for the block: readers (pg_dump's ACCESS
    SHARE) go on, writers wait until the block ends; it commits what the block did (the DROP) or rolls back.

    :raises StepSkipped: the lock was not granted after the retries.
    """
    table = sql.Identifier(schema, name)

    def attempt() -> None:
        try:
            conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(table))
        except psycopg.Error:
            conn.rollback()
            raise

    conn.autocommit = False
    try:
        with_lock_retries(f"lock {schema}.{name} against writes", policy, attempt)
        yield
        conn.commit()
    except BaseException:
        if not conn.closed:  # a killed connection has nothing to roll back; its error goes up as it is
            conn.rollback()
        raise
    finally:
        if not conn.closed:
            conn.autocommit = True


def count_rows(conn: psycopg.Connection, schema: str, name: str, timeout: float, policy: PartitionsPolicy) -> int:
    """Exact row count inside :func:`writes_blocked`, under its own statement_timeout ``timeout`` (a large table
    may need far longer than the DDL cap); the DDL cap is set back after."""
    conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{int(timeout * 1000)}ms",))
    rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]
    conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{int(policy.statement_timeout * 1000)}ms",))
    return rows


def drop_verified(conn: psycopg.Connection, schema: str, name: str, rows: int, count_timeout: float,
                  policy: PartitionsPolicy) -> int:
    """Inside :func:`writes_blocked`: drop the detached table if it still holds exactly the ``rows`` its verified
    dump holds; return the bytes freed. :raises DropRefused: the count differs."""
    now = count_rows(conn, schema, name, count_timeout, policy)
    if now != rows:
        raise DropRefused(f"{schema}.{name} has {now} rows, its verified dump {rows}: not dropped (the next run "
                          "dumps it again)")
    return drop_locked(conn, schema, name, policy)


def drop_locked(conn: psycopg.Connection, schema: str, name: str, policy: PartitionsPolicy) -> int:
    """Inside :func:`writes_blocked`: take ACCESS EXCLUSIVE and drop the table; return the bytes freed. Runs in a
    savepoint, so that a lock timeout (retried, then skipped) gives up only this, not the SHARE lock."""
    table = sql.Identifier(schema, name)

    def attempt() -> int:
        with conn.transaction():
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
            size = table_bytes(conn, schema, name)
            conn.execute(sql.SQL("DROP TABLE {}").format(table))
            return size

    return with_lock_retries(f"drop {schema}.{name}", policy, attempt)
