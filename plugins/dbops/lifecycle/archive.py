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


def move_step(scope: Scope, source: TableInfo, to_database: bool, export: Any = None) -> Step:
    """The step of an archive move: delete the batch's rows, insert them into the archive table (when
    ``to_database``), hand them to ``export`` (an :class:`~dbops.lifecycle.export.Exporter`) when given."""
    columns = sql.SQL(", ").join(map(sql.Identifier, source.columns))
    condition, params = scope.batch_rows()
    delete = sql.SQL("DELETE FROM {} s WHERE {} RETURNING {}").format(
        scope.identifier, condition, sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(c))
                                                        for c in source.columns))
    insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM moved").format(
        sql.Identifier(ARCHIVE_SCHEMA, source.name), columns, columns)
    if export is None:
        statement = sql.SQL("WITH moved AS ({}) {}").format(delete, insert)
    elif to_database:
        statement = sql.SQL("WITH moved AS ({}), archived AS ({}) SELECT row_to_json(moved)::text FROM moved").format(
            delete, insert)
    else:
        statement = sql.SQL("WITH moved AS ({}) SELECT row_to_json(moved)::text FROM moved").format(delete)

    def step(conn: psycopg.Connection, tids: list[str]) -> int:
        try:
            cursor = conn.execute(statement, {**params, "tids": tids})
        except psycopg.errors.UniqueViolation as err:
            detail = err.diag.message_detail or str(err)
            raise KeyAlreadyArchived(
                f"{scope.label}: {detail.rstrip('.')} in {ARCHIVE_SCHEMA}.{source.name}: rows with that key were "
                "put back into the table (a restore?) while the archive still holds them. Nothing of the batch "
                "moved; decide which copy to keep, delete the other, then re-run") from err
        if export is None:
            return cursor.rowcount
        lines = [row[0] for row in cursor.fetchall()]
        export.write(conn, lines)
        return len(lines)

    return step


def archive_policy(conn: psycopg.Connection, scope: Scope, source: TableInfo, limits: Limits, to_database: bool,
                   export: Any = None, logger: logging.Logger | Any = None) -> Tally:
    """Move the rows of ``scope`` batch by batch (the archive table must exist when ``to_database``)."""
    what = f"archive {scope.label} -> " + (f"{ARCHIVE_SCHEMA}.{source.name}" if to_database else "store")
    step = move_step(scope, source, to_database, export)
    return run_batches(conn, scope, step, limits, what, *([logger] if logger else []))
