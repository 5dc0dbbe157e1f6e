"""Archive moves: the rows of a policy's table older than its cutoff go to ``archive.<table>``.

Each batch is ``DELETE … RETURNING`` into ``INSERT`` in one statement (see :mod:`dbops.lifecycle.batches`
for the batch loop). A key already in the archive (someone restored old rows) stops the policy with an
error naming the key, and nothing of that batch moves. With an export, the batch's rows are also written
to the store, before the batch commits.
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from psycopg import sql

from dbops.lifecycle.batches import Limits, Scope, Step, Tally, run_batches
from dbops.lifecycle.catalog import TableInfo
from dbops.lifecycle.policy import ARCHIVE_SCHEMA


class KeyAlreadyArchived(Exception):
    """A row to move has a key that is already in the archive table."""


def move_step(source: TableInfo, to_database: bool, export: Any = None) -> Step:
    """Insert the deleted rows into the archive table (when ``to_database``) and hand them, as JSON lines, to
    ``export`` (an :class:`~dbops.lifecycle.export.Exporter`) when given."""
    columns = sql.SQL(", ").join(map(sql.Identifier, source.columns))
    insert = sql.SQL(", archived AS (INSERT INTO {} ({}) SELECT {} FROM done)").format(
        sql.Identifier(ARCHIVE_SCHEMA, source.name), columns, columns) if to_database else sql.SQL("")
    return Step(returning=sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c)) for c in source.columns),
                after=insert,
                output=sql.SQL("(SELECT array_agg(row_to_json(done)::text) FROM done)") if export else sql.SQL("NULL"),
                handle=(lambda conn, lines: export.write(conn, lines)) if export else None)


def archive_policy(conn: psycopg.Connection, scope: Scope, source: TableInfo, limits: Limits, to_database: bool,
                   export: Any = None, logger: logging.Logger | Any = None) -> Tally:
    """Move the rows of ``scope`` batch by batch (the archive table must exist when ``to_database``)."""
    what = f"archive {scope.label} -> " + (f"{ARCHIVE_SCHEMA}.{source.name}" if to_database else "store")
    try:
        return run_batches(conn, scope, move_step(source, to_database, export), limits, what,
                           *([logger] if logger else []))
    except psycopg.errors.UniqueViolation as err:
        detail = err.diag.message_detail or str(err)
        raise KeyAlreadyArchived(
            f"{scope.label}: {detail.rstrip('.')} in {ARCHIVE_SCHEMA}.{source.name}: rows with that key were put "
            "back into the table (a restore?) while the archive still holds them. Nothing of the batch moved; "
            "decide which copy to keep, delete the other, then re-run") from err
