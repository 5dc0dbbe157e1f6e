"""The local stack's replication role: repaired on every `up`, also on a server started before it existed."""

from __future__ import annotations

import psycopg
from psycopg import sql

from scripts.stack.bootstrap import up
from scripts.stack.postgres import REPLICATION_ROLE, admin_connection, conn_uri


def _replication_login_works() -> bool:
    try:
        with psycopg.connect(conn_uri("postgres", REPLICATION_ROLE)):
            return True
    except psycopg.OperationalError:
        return False


def test_up_on_a_running_server_repairs_the_replication_role():
    with admin_connection() as conn:  # a server from before PITR: no such role
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(REPLICATION_ROLE)))
    assert not _replication_login_works()
    up()  # the server runs already: up() does not start it
    assert _replication_login_works()
