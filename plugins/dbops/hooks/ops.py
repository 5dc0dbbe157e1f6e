"""The ops database (connection ``ops_conn_id`` in dbops.yaml): state and history that outlive any target."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing, contextmanager

import psycopg

from dbops.hooks.postgres import DbopsPostgresHook


class OpsDatabaseHook(DbopsPostgresHook):
    """:class:`DbopsPostgresHook` (bounded connect) on the ops database.

    Every write to the ops database goes through :meth:`transaction`.

    :param postgres_conn_id: the ops database connection.
    """

    hook_name = "dbops ops database"

    @contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A new connection inside a transaction: committed when the block ends, rolled back when it
        raises; the connection is closed after."""
        with closing(self.get_conn()) as conn, conn.transaction():
            yield conn
