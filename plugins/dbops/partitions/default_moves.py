"""Rows of a range that gets its own partition, moved out of the DEFAULT partition in short batches.

Each batch is one transaction (``DELETE … RETURNING`` into the new, not yet attached table) under
lock_timeout, so no lock is held longer than one batch. Between the first batch and the attach the
moved rows are not visible through the parent. The attaching transaction locks DEFAULT first and then
moves whatever arrived there meanwhile (:func:`move_rest`), so the attach never finds a row of its range
left in DEFAULT. When the move or the attach fails, :func:`move_back` returns the rows to DEFAULT the same
way, so a failed step leaves no row out of the parent's sight.

The session has ``row_security = off`` (:func:`dbops.partitions.tree.session`): a row-level security policy
on DEFAULT makes these statements fail instead of moving only the rows it shows (the inspection refuses
such a table first, naming the policy).
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


def _move(conn: psycopg.Connection, found: TableInspection, step: Step, source: Identifier, dest: Identifier,
          limit: int | None) -> int:
    """Move up to ``limit`` rows (all when None) of the step's range from ``source`` into ``dest``."""
    lower, upper = step.bounds
    key = sql.Identifier(found.key)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in found.columns)
    where = sql.SQL("{k} >= {lo} AND {k} < {hi}").format(k=key, lo=literal(lower, found.key_type),
                                                          hi=literal(upper, found.key_type))
    if limit is not None:
        where = sql.SQL("ctid = ANY (ARRAY(SELECT ctid FROM {s} WHERE {w} LIMIT {n}))").format(
            s=source, w=where, n=sql.Literal(limit))
    return conn.execute(sql.SQL("WITH moved AS (DELETE FROM {s} WHERE {w} RETURNING {c}) "
                                "INSERT INTO {d} ({c}) OVERRIDING SYSTEM VALUE SELECT {c} FROM moved").format(
        s=source, w=where, c=columns, d=dest)).rowcount


def _default(found: TableInspection) -> Identifier:
    return sql.Identifier(found.default.schema, found.default.name)


def _batches(conn: psycopg.Connection, found: TableInspection, step: Step, source: Identifier, dest: Identifier,
             policy: PartitionsPolicy, what: str) -> tuple[int, int]:
    """Move the range's rows from ``source`` to ``dest``, ``batch_rows`` per transaction; return (rows, batches)."""
    moved = batches = 0
    while True:
        def batch() -> int:
            with conn.transaction():
                return _move(conn, found, step, source, dest, policy.batch_rows)

        rows = with_lock_retries(f"{step.label}: {what} batch {batches + 1}", policy, batch)
        if rows == 0:
            return moved, batches
        moved += rows
        batches += 1


def move_batches(conn: psycopg.Connection, found: TableInspection, step: Step, table: Identifier,
                 policy: PartitionsPolicy) -> tuple[int, int]:
    """Move the range's rows out of DEFAULT into ``table``, in batches; return (rows, batches)."""
    if found.default is None:
        return 0, 0
    return _batches(conn, found, step, _default(found), table, policy, "move")


def move_back(conn: psycopg.Connection, found: TableInspection, step: Step, table: Identifier,
              policy: PartitionsPolicy) -> int:
    """Return the rows of the not attached ``table`` to DEFAULT, in batches; return how many."""
    if found.default is None:
        return 0
    return _batches(conn, found, step, table, _default(found), policy, "move back")[0]


def move_rest(conn: psycopg.Connection, found: TableInspection, step: Step, table: Identifier) -> int:
    """Inside the attaching transaction, DEFAULT locked: the rows that reached DEFAULT since the last batch."""
    return 0 if found.default is None else _move(conn, found, step, _default(found), table, None)
