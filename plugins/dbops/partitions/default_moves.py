"""Rows of a range that gets its own partition, moved out of the DEFAULT partition in short batches.

Each batch is one transaction (``DELETE … RETURNING`` into the new, not yet attached table) under
lock_timeout, so no lock is held longer than one batch. Between the first batch and the attach the
moved rows are not visible through the parent; the attach moves whatever arrived in DEFAULT meanwhile
in its own transaction (:func:`move_rest`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from dbops.partitions.tree import TableInspection, literal
from dbops.partitions.locks import with_lock_retries
from dbops.partitions.plan import Step
from dbops.partitions.policy import PartitionsPolicy

if TYPE_CHECKING:
    from psycopg.sql import Identifier


def _move(conn: psycopg.Connection, found: TableInspection, step: Step, table: Identifier,
          limit: int | None) -> int:
    """Move up to ``limit`` rows (all when None) of the step's range from DEFAULT into ``table``."""
    lower, upper = step.bounds
    key = sql.Identifier(found.key)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in found.columns)
    default = sql.Identifier(found.default.schema, found.default.name)
    where = sql.SQL("{k} >= {lo} AND {k} < {hi}").format(k=key, lo=literal(lower, found.key_type),
                                                          hi=literal(upper, found.key_type))
    if limit is not None:
        where = sql.SQL("ctid = ANY (ARRAY(SELECT ctid FROM {d} WHERE {w} LIMIT {n}))").format(
            d=default, w=where, n=sql.Literal(limit))
    return conn.execute(sql.SQL("WITH moved AS (DELETE FROM {d} WHERE {w} RETURNING {c}) "
                                "INSERT INTO {t} ({c}) SELECT {c} FROM moved").format(
        d=default, w=where, c=columns, t=table)).rowcount


def move_batches(conn: psycopg.Connection, found: TableInspection, step: Step, table: Identifier,
                 policy: PartitionsPolicy) -> tuple[int, int]:
    """Move the range's rows out of DEFAULT, ``batch_rows`` per transaction; return (rows, batches)."""
    if found.default is None:
        return 0, 0
    moved = batches = 0
    while True:
        def batch() -> int:
            with conn.transaction():
                return _move(conn, found, step, table, policy.batch_rows)

        rows = with_lock_retries(f"{step.label}: move batch {batches + 1}", policy, batch)
        if rows == 0:
            return moved, batches
        moved += rows
        batches += 1


def move_rest(conn: psycopg.Connection, found: TableInspection, step: Step, table: Identifier) -> int:
    """Inside the attaching transaction: the rows that reached DEFAULT since the last batch."""
    return 0 if found.default is None else _move(conn, found, step, table, None)
