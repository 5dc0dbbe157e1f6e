"""The local MongoDB-compatible server (scripts/stack/mongo.py): started on the port knob with
authentication, stopped by its pid, and a taken port refused naming the knob."""

from __future__ import annotations

import os
import socket

import pymongo
import pytest

from scripts.stack.mongo import MongoServer, mongo_client
from scripts.stack.paths import port_taken
from tests.conftest import free_port


def test_taken_port_stops_the_start_at_once_with_the_knob(tmp_path, capsys):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(SystemExit) as exc:
            MongoServer(port, tmp_path / "data").start()
    assert f"127.0.0.1:{port} (the MongoDB-compatible server) is taken by another process" in str(exc.value)
    assert f"DBOPS_MONGO_PORT={port + 1}" in str(exc.value)
    assert not (tmp_path / "data").exists()  # nothing was started or initialised


def test_start_on_the_port_with_a_password_then_stop_by_pid(tmp_path):
    port = free_port()
    server = MongoServer(port, tmp_path / "data")
    assert server.start() is True
    assert server.start() is False  # already running: a second start reuses it
    pid = server.running_pid()
    try:
        with mongo_client(port=port) as client:
            assert client.admin.command("ping")["ok"] == 1.0
            assert client.admin.command("hello")["setName"]  # a one-member replica set
        with mongo_client(password="not-the-password", port=port) as client:
            with pytest.raises(pymongo.errors.OperationFailure, match="uthentication failed"):
                client.admin.command("listDatabases")
    finally:
        server.stop()
    assert server.running_pid() is None
    assert not port_taken(port)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
