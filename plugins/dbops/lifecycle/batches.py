"""Batches over the rows of one table older than a cutoff: the one loop behind archive moves and purges.

Each batch is one short transaction with ``SET LOCAL lock_timeout`` and ``statement_timeout``:

1. lock the next rows by keyset, ``(time_column, primary key)`` after the last batch's last row,
   ``ORDER BY`` that, ``LIMIT n``, ``FOR UPDATE`` (no ``SKIP LOCKED``: a row the application holds would
   be skipped and left behind; the batch waits up to ``lock_timeout`` instead, and is retried);
2. the step (move or delete) acts on exactly those rows by ``ctid``, checking again the cutoff, the filter
   and, in a new snapshot taken while the rows are locked, that no row outside the batch references them:
   a referenced row is held back, so no foreign key is ever violated or cascaded.

A crash at any point rolls back the open batch only: nothing is lost and nothing is done twice. The batch
size adapts to ``batch_seconds``; the loop pauses between batches and stops cleanly at the time budget (after at least one batch,
so every run makes progress).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from dbops.lifecycle.catalog import Reference
from dbops.lifecycle.policy import Condition

log = logging.getLogger(__name__)

FIRST_BATCH = 200
MAX_BATCH = 50_000
# A batch failing with one of these is rolled back and retried (smaller): a lock wait or the statement
# timed out, a deadlock, or a row gained a reference between lock and check (never committed).
RETRY_SQLSTATES = {"55P03": "lock wait timed out", "57014": "statement timed out", "40P01": "deadlock",
                   "40001": "serialization failure", "23503": "a new reference appeared"}
_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


@dataclass(frozen=True)
class Scope:
    """The rows a batch loop works through: ``schema.table`` rows with ``time_column < cutoff`` matching
    ``filter``; with ``references``, rows still referenced from elsewhere are held back."""

    schema: str
    table: str
    primary_key: tuple[str, ...]
    time_column: str
    cutoff: datetime
    filter: tuple[Condition, ...] = ()
    references: tuple[Reference, ...] = ()

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.table}"

    def where(self) -> tuple[sql.Composable, dict[str, Any]]:
        """``time_column < cutoff AND <filter>`` on alias ``s``, with its parameters."""
        terms = [sql.SQL("s.{} < %(cutoff)s").format(sql.Identifier(self.time_column))]
        params: dict[str, Any] = {"cutoff": self.cutoff}
        for i, term in enumerate(self.filter):
            column, name = sql.SQL("s.{}").format(sql.Identifier(term.column)), f"f{i}"
            if term.op in ("is null", "is not null"):
                terms.append(sql.SQL("{} IS NULL" if term.op == "is null" else "{} IS NOT NULL").format(column))
                continue
            params[name] = term.value
            if term.op == "in":
                terms.append(sql.SQL("{} = ANY({})").format(column, sql.Placeholder(name)))
            elif term.op == "not in":
                terms.append(sql.SQL("{} <> ALL({})").format(column, sql.Placeholder(name)))
            else:
                terms.append(sql.SQL("{} {} {}").format(column, sql.SQL(_OPS[term.op]), sql.Placeholder(name)))
        return sql.SQL(" AND ").join(terms), params

    def referenced(self) -> sql.Composable:
        """True for a row (alias ``s``) that a row of another table, or another row of this one, references."""
        checks = []
        for ref in self.references:
            pairs = sql.SQL(" AND ").join(
                sql.SQL("c.{} = s.{}").format(sql.Identifier(c), sql.Identifier(p))
                for c, p in zip(ref.columns, ref.ref_columns, strict=True))
            self_row = sql.SQL(" AND c.ctid <> s.ctid") if (ref.schema, ref.table) == (self.schema, self.table) \
                else sql.SQL("")
            checks.append(sql.SQL("EXISTS (SELECT 1 FROM {} c WHERE {}{})").format(
                sql.Identifier(ref.schema, ref.table), pairs, self_row))
        return sql.SQL(" OR ").join(checks) if checks else sql.SQL("false")

    def batch_rows(self) -> tuple[sql.Composable, dict[str, Any]]:
        """``ctid = ANY(%(tids)s) AND <where> AND NOT <referenced>``: a step's condition on alias ``s``."""
        where, params = self.where()
        return sql.SQL("s.ctid = ANY(%(tids)s::text[]::tid[]) AND {} AND NOT ({})").format(
            where, self.referenced()), params

    def lock_statement(self, after: tuple | None) -> tuple[sql.Composable, dict[str, Any]]:
        """Lock the next ``%(limit)s`` rows after the keyset position ``after`` (time, *primary key)."""
        where, params = self.where()
        order = [sql.Identifier(self.time_column), *map(sql.Identifier, self.primary_key)]
        keyset = sql.SQL("")
        if after is not None:
            names = [f"k{i}" for i in range(len(order))]
            params |= dict(zip(names, after, strict=True))
            keyset = sql.SQL(" AND s.{} >= %(k0)s AND ({}) > ({})").format(
                sql.Identifier(self.time_column),
                sql.SQL(", ").join(sql.SQL("s.{}").format(o) for o in order),
                sql.SQL(", ").join(map(sql.Placeholder, names)))
        statement = sql.SQL("SELECT s.ctid::text, {} FROM {} s WHERE {}{} ORDER BY {} LIMIT %(limit)s "
                            "FOR UPDATE OF s").format(
            sql.SQL(", ").join(sql.SQL("s.{}").format(o) for o in order), self.identifier, where, keyset,
            sql.SQL(", ").join(sql.SQL("s.{}").format(o) for o in order))
        return statement, params

    def estimate(self, conn: psycopg.Connection) -> int:
        """The planner's estimate of the rows in scope (cheap; for the progress line's time left)."""
        where, params = self.where()
        plan = conn.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT 1 FROM {} s WHERE {}").format(
            self.identifier, where), params).fetchone()[0]
        return int(plan[0]["Plan"]["Plan Rows"])

    def leftovers(self, conn: psycopg.Connection) -> tuple[int, int]:
        """(rows in scope not referenced, rows in scope held back by references), counted now."""
        where, params = self.where()
        return conn.execute(sql.SQL("SELECT count(*) FILTER (WHERE NOT ({ref})), count(*) FILTER (WHERE {ref}) "
                                    "FROM {} s WHERE {}").format(self.identifier, where, ref=self.referenced()),
                            params).fetchone()


@dataclass(frozen=True)
class Limits:
    batch_seconds: float
    pause: float
    deadline: float  # time.monotonic() at which no new batch starts
    lock_timeout: float
    statement_timeout: float
    lock_retries: int
    progress_every: int


@dataclass
class Tally:
    """What a batch loop did."""

    rows: int = 0  # moved or deleted
    held_back: int = 0  # locked but referenced, left in place
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    max_batch_seconds: float = 0.0
    stopped: str | None = None  # why it ended before the last row in scope (e.g. the time budget)
    notes: list[str] = field(default_factory=list)


Step = Callable[[psycopg.Connection, list[str]], int]
"""Acts on the locked rows (their ctids) inside the batch's transaction; returns the rows it moved or deleted."""


class BatchFailed(Exception):
    """A batch still failed after its retries; ``error`` is the last database error."""

    def __init__(self, message: str, error: psycopg.Error):
        super().__init__(message)
        self.error = error
        self.transient = True


def run_batches(conn: psycopg.Connection, scope: Scope, step: Step, limits: Limits, what: str,
                logger: logging.Logger | Any = log) -> Tally:
    """Run ``step`` batch after batch over ``scope`` until no row is left or the time budget is spent.

    ``conn`` must be in autocommit mode: each batch is its own transaction. ``what`` names the work in log
    lines (e.g. ``move public.orders -> archive.orders``).
    """
    tally, after, size = Tally(), None, FIRST_BATCH
    expected = max(scope.estimate(conn), 1)
    started = time.monotonic()
    while True:
        attempt = 0
        while True:
            t0 = time.monotonic()
            try:
                with conn.transaction():
                    _set_limits(conn, limits)
                    statement, params = scope.lock_statement(after)
                    locked = conn.execute(statement, {**params, "limit": size}).fetchall()
                    done = step(conn, [row[0] for row in locked]) if locked else 0
                break
            except psycopg.Error as err:
                reason = RETRY_SQLSTATES.get(err.sqlstate or "")
                if reason is None:
                    raise
                attempt += 1
                tally.retries += 1
                if attempt > limits.lock_retries:
                    raise BatchFailed(f"{what}: batch failed {attempt} times ({reason}): "
                                      f"{' '.join(str(err).split())}", err) from err
                logger.warning("%s: batch of %d rows rolled back (%s); retry %d of %d with %d rows", what, size,
                               reason, attempt, limits.lock_retries, max(1, size // 2))
                size = max(1, size // 2)
                time.sleep(min(limits.lock_timeout, 0.2 * attempt))
        if not locked:
            break
        seconds = time.monotonic() - t0
        tally.batches += 1
        tally.rows += done
        tally.held_back += len(locked) - done
        tally.max_batch_seconds = max(tally.max_batch_seconds, seconds)
        after = tuple(locked[-1][1:])
        size = _next_size(size, len(locked), seconds, limits.batch_seconds)
        if tally.batches % limits.progress_every == 0:
            elapsed = time.monotonic() - started
            rate = tally.rows / elapsed if elapsed else 0.0
            left = max(expected - tally.rows - tally.held_back, 0)
            logger.info("%s: %d rows in %d batches, %.0f rows/s, about %d left (~%.0f s); batch size %d", what,
                        tally.rows, tally.batches, rate, left, left / rate if rate else 0.0, size)
        if time.monotonic() >= limits.deadline:  # checked after a batch: every run makes progress
            tally.stopped = "time budget spent; the next run continues from here"
            break
        if limits.pause:
            time.sleep(limits.pause)
    tally.seconds = time.monotonic() - started
    return tally


def _set_limits(conn: psycopg.Connection, limits: Limits) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                 (f"{int(limits.lock_timeout * 1000)}ms", f"{int(limits.statement_timeout * 1000)}ms"))


def _next_size(size: int, got: int, seconds: float, target: float) -> int:
    """The next batch size: scaled toward ``target`` seconds, at most doubled or halved per batch."""
    if got < size:  # a short batch says nothing about speed
        return size
    scaled = size * target / max(seconds, 1e-3)
    return int(min(MAX_BATCH, max(1, size // 2, min(size * 2, scaled))))
