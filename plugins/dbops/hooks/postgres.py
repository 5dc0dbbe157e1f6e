"""PostgresHook for administrative work on a target: server facts and client-tool environments."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.providers.postgres.hooks.postgres import PostgresHook

from dbops.hooks.tools import libpq_environment


DEFAULT_CONNECT_TIMEOUT = 10  # seconds; without one libpq waits as long as the network lets it


class DbopsPostgresHook(PostgresHook):
    """:class:`PostgresHook` with a bounded connect, the server version and safe environments for pg_dump
    and friends.

    :param postgres_conn_id: the Airflow connection of the target.
    :param connect_timeout: seconds to wait for the server to answer (overrides the connection's extra
        ``connect_timeout``; without either, 10 s).
    """

    hook_name = "dbops Postgres"

    def __init__(self, *args: Any, connect_timeout: float | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("log_sql", False)  # no per-statement lines: each task logs its own summary
        super().__init__(*args, **kwargs)
        self.connect_timeout = connect_timeout

    def connect_timeout_seconds(self) -> int:
        """Whole seconds libpq waits for the server: the hook's, else the connection's extra, else 10."""
        if self.connect_timeout is not None:  # libpq takes whole seconds, at least 2
            return max(2, round(self.connect_timeout))
        return int(self.connection.extra_dejson.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT))

    def _create_connection(self, conn_args: dict[str, Any]) -> Any:
        return super()._create_connection({**conn_args, "connect_timeout": self.connect_timeout_seconds()})

    def server_version_num(self) -> int:
        """``server_version_num`` of the target, e.g. 180006."""
        return int(self.get_first("SELECT current_setting('server_version_num')")[0])

    @contextmanager
    def cli_environment(self, database: str | None = None) -> Iterator[dict[str, str]]:
        """libpq environment for a CLI tool against this connection, with its ``ssl*`` extras; the password
        stays in a private passfile."""
        conn = self.connection
        with libpq_environment(conn.host or "localhost", conn.port, conn.login, database or self.database
                               or conn.schema, conn.password, self.connect_timeout_seconds(),
                               conn.extra_dejson) as env:
            yield env
