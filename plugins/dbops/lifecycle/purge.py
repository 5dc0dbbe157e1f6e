"""Retention purges: rows older than a policy's retention are deleted, batch by batch, from the table and
from its archive table (the same batch loop as archive moves, with a plain delete as the step)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from dbops.lifecycle.batches import Limits, Scope, Step, Tally, run_batches


def delete_step(scope: Scope) -> Step:
    """The step of a purge: delete the batch's rows that are still past the cutoff and not referenced."""
    condition, params = scope.batch_rows()
    statement = sql.SQL("DELETE FROM {} s WHERE {}").format(scope.identifier, condition)

    def step(conn: psycopg.Connection, tids: list[str]) -> int:
        return conn.execute(statement, {**params, "tids": tids}).rowcount

    return step


def purge(conn: psycopg.Connection, scope: Scope, limits: Limits, logger: logging.Logger | Any = None) -> Tally:
    """Delete the rows of ``scope`` batch by batch."""
    return run_batches(conn, scope, delete_step(scope), limits, f"purge {scope.label}", *([logger] if logger else []))
