"""Fixtures of the MongoDB tests: a database on the local MongoDB-compatible server (the stack's, or a
server of the test's own when the test kills it) with its own dbops config, and the operators run the
way the task runner runs them, ``execute(context)`` (the context is the FAKE minimal one of
tests/backup/conftest.py)."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest

from dbops.core.config import load_config
from dbops.hooks.ops import OpsDatabaseHook
from dbops.hooks.store import get_store
from scripts.stack.mongo import MongoServer, mongo_client, mongo_conn, start_mongo
from tests.conftest import config_yaml, free_port


@pytest.fixture(scope="session")
def stack_mongo():
    """The local stack's server (started by devstack test, or here)."""
    start_mongo()


@pytest.fixture(scope="module")
def own_mongo(tmp_path_factory):
    """A server of the module's own (a test may kill it); stopped by its pid at the end."""
    server = MongoServer(free_port(), tmp_path_factory.mktemp("mongod"))
    server.start()
    yield server
    server.stop()


def make_target(monkeypatch, tmp_path, port: int, database: str | None = None, password: str | None = None,
                sections: str = ""):
    """A MongoDB target ``mg_<hex>`` on the server at ``port``, its config (plus ``sections``, YAML indented
    like the target's keys) in DBOPS_CONFIG; returns its facts."""
    name = f"mg_{uuid.uuid4().hex[:10]}"
    database = database or f"dbops_test_{name}"
    monkeypatch.setenv(f"AIRFLOW_CONN_MONGO_{name.upper()}", mongo_conn(database, port, password))
    config_path = tmp_path / "dbops.yaml"
    config_path.write_text(config_yaml(tmp_path, f"""\
  {name}:
    engine: mongodb
    conn_id: mongo_{name}
    backup: {{storage: local, retention: {{daily: 2, weekly: 0, monthly: 0}}}}
{sections}"""))
    monkeypatch.setenv("DBOPS_CONFIG", str(config_path))
    return SimpleNamespace(name=name, database=database, client=mongo_client(port=port), tmp=tmp_path, port=port)


@pytest.fixture
def target(monkeypatch, tmp_path, stack_mongo, pg_server):
    """A small database on the stack's server: three collections with indexes, dropped after the test."""
    from scripts.stack.paths import MONGO_PORT

    facts = make_target(monkeypatch, tmp_path, MONGO_PORT)
    fill(facts.client[facts.database])
    yield facts
    for name in facts.client.list_database_names():
        if name.startswith((facts.database, "dbops_verify_", "restored_")):
            facts.client.drop_database(name)
    facts.client.close()


def fill(db, documents: int = 600) -> None:
    db.people.insert_many([{"_id": i, "name": f"person {i}", "tags": ["a", "b"], "n": i % 7} for i in range(documents)])
    db.people.create_index([("name", 1), ("n", -1)], name="name_n")
    db.people.create_index("n", unique=False, sparse=True)
    db.events.insert_many([{"kind": "view", "at": i, "payload": {"x": "y" * 50}} for i in range(documents)])
    db.events.create_index("at", expireAfterSeconds=86400 * 30)
    db["audit.log"].insert_many([{"_id": f"k{i}", "v": i} for i in range(documents // 3)])


def store():
    return get_store(load_config().storage["local"])


def ops() -> OpsDatabaseHook:
    return OpsDatabaseHook(postgres_conn_id="dbops_state")


def state(db) -> dict[str, tuple[int, str]]:
    """Documents and order-independent hash of every collection of ``db``."""
    from bson import CodecOptions
    from bson.raw_bson import RawBSONDocument

    from dbops.mongo.dump import collection_hash

    raw = db.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    return {name: (h.count, h.hexdigest) for name in sorted(raw.list_collection_names())
            if (h := collection_hash(raw[name]))}
