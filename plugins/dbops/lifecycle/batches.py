"""Batches over the rows of one table older than a cutoff: the one loop behind archive moves and purges.

Each batch is one short transaction with ``SET LOCAL lock_timeout`` and ``statement_timeout``. It takes the
next rows by keyset, ``(time_column, primary key)`` after the last batch's last row, ``ORDER BY`` that,
``LIMIT n`` — no ``SKIP LOCKED``: a row the application holds would be skipped and left behind; the batch
waits up to ``lock_timeout`` instead, and is retried — and deletes them (``DELETE … RETURNING``), checking
again the cutoff, the filter and that no row outside the batch references them: a referenced row is held
back (counted), and the keyset moves past it. What the step does with the deleted rows (insert them into
the archive table, export them) is part of the same statement.

* Usually that is one statement. A foreign key that would fail on the delete (``NO ACTION``, ``RESTRICT``)
  makes a reference that appears meanwhile an error: the batch is rolled back and retried.
* When a referencing foreign key would cascade (``CASCADE``, ``SET NULL``, ``SET DEFAULT``), a reference
  that appears meanwhile must be seen, never cascaded: the batch first locks its rows (``FOR UPDATE``,
  which blocks new references to them), then deletes exactly those rows by ``ctid`` in a second statement,
  whose new snapshot sees every reference made before the lock.

A crash at any point rolls back the open batch only: nothing is lost and nothing is done twice. The batch
size adapts to ``batch_seconds``; the loop pauses between batches and stops cleanly at the time budget
(after at least one batch, so every run makes progress).
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

FIRST_BATCH = 500
MAX_BATCH = 50_000  # rows; about a third of a second at 150,000 rows/s
# A batch failing with one of these is rolled back and retried (smaller): a lock wait or the statement
# timed out, a deadlock, or a row gained a reference between the batch's snapshot and its delete.
RETRY_SQLSTATES = {"55P03": "lock wait timed out", "57014": "statement timed out", "40P01": "deadlock",
                   "40001": "serialization failure", "23503": "a new reference appeared"}
_OPS = {"=": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}


@dataclass(frozen=True)
class Step:
    """What a batch does with the rows it deletes, as SQL around the ``DELETE`` (the CTE ``done``).

    ``returning``: what the delete returns, for ``after``; ``after``: more CTEs reading ``done`` (each
    starting with a comma); ``output``: one more value over ``done`` handed to ``handle(conn, value)`` inside
    the batch's transaction, before it commits.
    """

    returning: sql.Composable = field(default_factory=lambda: sql.SQL("1"))
    after: sql.Composable = field(default_factory=lambda: sql.SQL(""))
    output: sql.Composable = field(default_factory=lambda: sql.SQL("NULL"))
    handle: Callable[[psycopg.Connection, Any], None] | None = None


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

    @property
    def locks_first(self) -> bool:
        """Rows are locked in a statement of their own before the delete (see the module docstring)."""
        return any(ref.changes_rows for ref in self.references)

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

    def _order(self) -> list[sql.Identifier]:
        return [sql.Identifier(self.time_column), *map(sql.Identifier, self.primary_key)]

    def next_rows(self, after: tuple | None, lock: bool) -> tuple[sql.Composable, dict[str, Any]]:
        """The next ``%(limit)s`` rows after the keyset position ``after`` (time, *primary key): their ctid
        and keyset columns, in keyset order; ``lock``: ``FOR UPDATE``."""
        where, params = self.where()
        columns = sql.SQL(", ").join(sql.SQL("s.{}").format(o) for o in self._order())
        keyset = sql.SQL("")
        if after is not None:
            names = [f"k{i}" for i in range(len(after))]
            params |= dict(zip(names, after, strict=True))
            keyset = sql.SQL(" AND s.{} >= %(k0)s AND ({}) > ({})").format(
                sql.Identifier(self.time_column), columns, sql.SQL(", ").join(map(sql.Placeholder, names)))
        return sql.SQL("SELECT s.ctid, {} FROM {} s WHERE {}{} ORDER BY {} LIMIT %(limit)s{}").format(
            columns, self.identifier, where, keyset, columns, sql.SQL(" FOR UPDATE OF s") if lock else sql.SQL("")
        ), params

    def batch_statement(self, step: Step, after: tuple | None) -> tuple[sql.Composable, dict[str, Any]]:
        """One batch: the next rows (or, with ``locks_first``, the rows whose ctids are ``%(tids)s``) deleted,
        with ``step`` around the delete. Returns one row: rows taken, rows deleted, the step's output, and
        the keyset columns of the last row taken (NULL when none)."""
        where, params = self.where()
        order = sql.SQL(", ").join(self._order())
        if self.locks_first:
            batch = sql.SQL("")
            rows = sql.SQL("s.ctid = ANY(%(tids)s::text[]::tid[])")
        else:
            select, params = self.next_rows(after, lock=False)
            batch = sql.SQL("batch AS MATERIALIZED ({}), ").format(select)
            rows = sql.SQL("s.ctid = ANY(ARRAY(SELECT ctid FROM batch))")  # a TID scan, in physical order
        statement = sql.SQL(
            "WITH {batch}done AS (DELETE FROM {table} s WHERE {rows} AND {where} AND NOT ({referenced}) "
            "RETURNING {returning}){after} "
            "SELECT {taken}, (SELECT count(*) FROM done), {output}, last.* FROM (SELECT) one "
            "LEFT JOIN LATERAL ({last}) last ON true").format(
            batch=batch, table=self.identifier, rows=rows, where=where, referenced=self.referenced(),
            returning=step.returning, after=step.after, output=step.output,
            taken=sql.SQL("NULL") if self.locks_first else sql.SQL("(SELECT count(*) FROM batch)"),
            last=sql.SQL("SELECT NULL") if self.locks_first else sql.SQL(
                "SELECT {} FROM batch ORDER BY {} LIMIT 1").format(
                order, sql.SQL(", ").join(sql.SQL("{} DESC").format(o) for o in self._order())))
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
    deadline: float  # time.monotonic() after which no new batch starts
    lock_timeout: float
    statement_timeout: float
    lock_retries: int
    progress_every: int


@dataclass
class Tally:
    """What a batch loop did."""

    rows: int = 0  # moved or deleted
    batches: int = 0
    retries: int = 0
    seconds: float = 0.0
    max_batch_seconds: float = 0.0
    stopped: str | None = None  # why it ended before the last row in scope (e.g. the time budget)


class BatchFailed(Exception):
    """A batch still failed after its retries (transient: the task is retried and continues)."""

    transient = True


def run_batches(conn: psycopg.Connection, scope: Scope, step: Step, limits: Limits, what: str,
                logger: logging.Logger | Any = log) -> Tally:
    """Run batches of ``step`` over ``scope`` until no row is left or the time budget is spent.

    A row taken but not deleted was referenced (held back) or changed by the application between the batch's
    snapshot and its delete; when there were any, one more pass from the start takes the changed ones.
    ``conn`` must be in autocommit mode: each batch is its own transaction. ``what`` names the work in log
    lines (e.g. ``archive public.orders -> archive.orders``).
    """
    tally, size = Tally(), FIRST_BATCH
    expected = max(scope.estimate(conn), 1)
    started = time.monotonic()
    for _ in range(2):
        kept, size = _pass(conn, scope, step, limits, what, logger, tally, size, expected, started)
        if not kept or tally.stopped:
            break
    tally.seconds = time.monotonic() - started
    return tally


def _pass(conn: psycopg.Connection, scope: Scope, step: Step, limits: Limits, what: str, logger: Any,
          tally: Tally, size: int, expected: int, started: float) -> tuple[int, int]:
    """Batches from the start of the keyset to its end; returns (rows taken but not deleted, batch size)."""
    after, kept = None, 0
    while True:
        attempt = 0
        while True:
            t0 = time.monotonic()
            try:
                with conn.transaction():
                    taken, done, last = _batch(conn, scope, step, after, size, limits)
                break
            except psycopg.Error as err:
                reason = RETRY_SQLSTATES.get(err.sqlstate or "")
                if reason is None:
                    raise
                attempt += 1
                tally.retries += 1
                if attempt > limits.lock_retries:
                    raise BatchFailed(f"{what}: a batch failed {attempt} times ({reason}): "
                                      f"{' '.join(str(err).split())}") from err
                logger.warning("%s: batch of %d rows rolled back (%s); retry %d of %d with %d rows", what, size,
                               reason, attempt, limits.lock_retries, max(1, size // 2))
                size = max(1, size // 2)
                time.sleep(min(limits.lock_timeout, 0.2 * attempt))
        if not taken:
            break
        seconds = time.monotonic() - t0
        tally.batches += 1
        tally.rows += done
        kept += taken - done
        tally.max_batch_seconds = max(tally.max_batch_seconds, seconds)
        after, last_of_pass = last, taken < size  # fewer rows than asked for: the end of the keyset
        size = _next_size(size, taken, seconds, limits.batch_seconds)
        if tally.batches % limits.progress_every == 0:
            elapsed = time.monotonic() - started
            rate = tally.rows / elapsed if elapsed else 0.0
            left = max(expected - tally.rows - kept, 0)
            logger.info("%s: %d rows in %d batches, %.0f rows/s, about %d left (~%.0f s); batch size %d", what,
                        tally.rows, tally.batches, rate, left, left / rate if rate else 0.0, size)
        if last_of_pass:
            break
        if time.monotonic() >= limits.deadline:  # checked after a batch: every run makes progress
            tally.stopped = "time budget spent; the next run continues from here"
            break
        if limits.pause:
            time.sleep(limits.pause)
    return kept, size


def _batch(conn: psycopg.Connection, scope: Scope, step: Step, after: tuple | None, size: int,
           limits: Limits) -> tuple[int, int, tuple | None]:
    """One batch inside the caller's transaction: (rows taken, rows deleted, keyset position after it)."""
    conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                 (f"{int(limits.lock_timeout * 1000)}ms", f"{int(limits.statement_timeout * 1000)}ms"))
    statement, params = scope.batch_statement(step, after)
    params["limit"] = size
    if scope.locks_first:
        select, select_params = scope.next_rows(after, lock=True)
        locked = conn.execute(select, {**select_params, "limit": size}).fetchall()
        if not locked:
            return 0, 0, after
        params["tids"] = [str(row[0]) for row in locked]
        taken, last = len(locked), tuple(locked[-1][1:])
        _, done, output, *_ = conn.execute(statement, params).fetchone()
    else:
        taken, done, output, *last_row = conn.execute(statement, params).fetchone()
        last = tuple(last_row)
    if step.handle is not None and done:
        step.handle(conn, output)
    return taken, done, last


def _next_size(size: int, got: int, seconds: float, target: float) -> int:
    """The next batch size: scaled toward ``target`` seconds, at most doubled (by half once a batch takes a
    quarter of the target) and at least a quarter of the last (a slow batch is followed by a much smaller one)."""
    if got < size and seconds <= target:  # a short batch says little about speed
        return size
    scaled = size * target / max(seconds, 1e-3)
    growth = size * 2 if seconds < target / 4 else size * 3 // 2
    return int(min(MAX_BATCH, max(1, size // 4, min(growth, scaled))))
