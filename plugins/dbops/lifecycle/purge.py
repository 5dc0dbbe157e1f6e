"""Retention purges: rows older than a policy's retention are deleted, batch by batch, from the table and
from its archive table (the batch loop of :mod:`dbops.lifecycle.batches`, with a plain delete as the step)."""

from __future__ import annotations

import logging
from typing import Any

import psycopg

from dbops.lifecycle.batches import Limits, Scope, Step, Tally, run_batches


def purge(conn: psycopg.Connection, scope: Scope, limits: Limits, logger: logging.Logger | Any = None) -> Tally:
    """Delete the rows of ``scope`` batch by batch."""
    return run_batches(conn, scope, Step(), limits, f"purge {scope.label}", *([logger] if logger else []))
