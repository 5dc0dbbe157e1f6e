"""MongoHook for dbops: bounded timeouts, the connection's database, server facts."""

from __future__ import annotations

from typing import Any

from airflow.providers.mongo.hooks.mongo import MongoHook
from airflow.sdk.exceptions import AirflowFailException

DEFAULT_TIMEOUT_MS = 10_000  # without one pymongo waits 30 s for a server and forever for a reply


class DbopsMongoHook(MongoHook):
    """:class:`MongoHook` whose client gives up on an unreachable server, with the server's facts.

    The connection's ``schema`` is the target's database. Built in ``execute`` only: MongoHook looks
    its connection up when constructed.

    :param mongo_conn_id: the Airflow connection of the target.
    """

    hook_name = "dbops MongoDB"

    def __init__(self, mongo_conn_id: str, **kwargs: Any) -> None:
        super().__init__(mongo_conn_id=mongo_conn_id, **kwargs)
        for option in ("serverSelectionTimeoutMS", "connectTimeoutMS"):
            self.extras.setdefault(option, DEFAULT_TIMEOUT_MS)

    @property
    def database(self) -> str:
        """The target's database: the connection's schema."""
        if not self.connection.schema:
            raise AirflowFailException(f"Airflow connection {self.mongo_conn_id} names no database: set its schema "
                                       "to the database dbops works on")
        return self.connection.schema

    def server_version(self) -> str:
        return self.get_conn().server_info()["version"]

    def replica_set(self) -> str | None:
        """The replica set's name, or None on a standalone server (which has no oplog)."""
        return self.get_conn().admin.command("hello").get("setName")
