"""mongo_maintenance_weekly__: validate, compact where due (a server without compact is reported, not a
failure), unused indexes, figures in the ops database; against the local MongoDB-compatible server.

What the local server cannot show: it answers CommandNotFound to ``compact``, reports no free storage in
``collStats`` and counts no index accesses in ``$indexStats`` (every index looks unused); an invalid
collection cannot be made without corrupting its WiredTiger files; it accepts validate's ``background``
option for every collection. The compaction plan is therefore checked on mongod-shaped ``collStats``
replies (pure), the compact call on the real server; the fallback when a server refuses a background
validate on a FAKE database object that refuses it the way mongod does (code and message).
"""

from __future__ import annotations

import pytest

from pymongo import monitoring
from pymongo.errors import OperationFailure

from dbops.mongo.maintenance import compact, compact_due, unused_indexes, validate, validation_summary
from dbops.operators.mongo import MongoMaintenanceOperator
from tests.backup.conftest import context
from tests.mongo.conftest import make_target, ops

MAINTENANCE = """    mongo:
      maintenance: {compact_free_pct: 20, compact_min_bytes: 1MB}
"""


@pytest.fixture
def maintenance_target(monkeypatch, tmp_path, stack_mongo, pg_server):
    from scripts.stack.paths import MONGO_PORT

    facts = make_target(monkeypatch, tmp_path, MONGO_PORT, sections=MAINTENANCE)
    db = facts.client[facts.database]
    db["orders.2026"].insert_many([{"n": i, "m": i % 5} for i in range(300)])
    db["orders.2026"].create_index("m", name="never_used")
    db["ünï"].insert_one({"x": 1})
    yield facts
    facts.client.drop_database(facts.database)
    facts.client.close()


def test_compact_on_a_server_without_it_is_reported_not_raised(maintenance_target):
    """Guarantee: CommandNotFound from ``compact`` is "not supported" (False), not an error."""
    db = maintenance_target.client[maintenance_target.database]
    assert compact(db, "orders.2026") == (False, None)


@pytest.mark.parametrize(("free", "storage", "due"), [
    (30 * 2**20, 100 * 2**20, True),   # 30 % and 30 MB free
    (15 * 2**20, 100 * 2**20, False),  # under 20 %
    (600 * 2**10, 2 * 2**20, False),   # 29 % but under 1 MB
    (None, 100 * 2**20, False),        # not reported (the local server)
])
def test_compact_is_due_only_above_both_thresholds(free, storage, due):
    stats = {"storageSize": storage}
    if free is not None:
        stats["wiredTiger"] = {"block-manager": {"file bytes available for reuse": free}}
    assert (compact_due(stats, 20.0, 2**20) is not None) is due


def test_weekly_maintenance_validates_every_collection_and_records_its_report(maintenance_target):
    """Guarantee: every collection (dots, unicode) is validated, the never-used index is reported, the
    report is in dbops.maintenance_runs, and nothing is compacted where no free storage is reported."""
    result = MongoMaintenanceOperator(task_id="maintain", target=maintenance_target.name).execute(context())
    assert [(v["collection"], v["valid"], v["mode"]) for v in result["validate"]] == [
        ("orders.2026", True, "background"), ("ünï", True, "background")]
    assert "never_used" in result["unused_indexes"]["orders.2026"]
    assert result["compacted"] == {} and result["bytes_reclaimed"] == 0
    assert set(result["compact_skipped"]) == {"orders.2026", "ünï"}
    report = ops().get_first("SELECT report FROM dbops.maintenance_runs WHERE target = %s AND kind = 'weekly'",
                             parameters=(maintenance_target.name,))[0]
    assert report["unused_indexes"] == {"orders.2026": result["unused_indexes"]["orders.2026"]}
    db = maintenance_target.client[maintenance_target.database]
    assert validate(db, "orders.2026").valid and "_id_" not in unused_indexes(db["orders.2026"])


class Commands(monitoring.CommandListener):
    """Records the commands a client sends (pymongo's command monitoring)."""

    def __init__(self) -> None:
        self.sent = []

    def started(self, event) -> None:
        self.sent.append(dict(event.command))

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass


def test_validate_asks_the_real_server_for_a_background_validate(maintenance_target):
    """Guarantee: the command sent is ``validate`` with ``background: true`` (no exclusive collection lock on
    mongod 4.4+ / WiredTiger), never a foreground one when the server accepts the option."""
    from scripts.stack.mongo import mongo_client

    listener = Commands()
    client = mongo_client(port=maintenance_target.port, event_listeners=[listener])
    try:
        result = validate(client[maintenance_target.database], "orders.2026")
    finally:
        client.close()
    assert (result.valid, result.mode) == (True, "background")
    sent = [c for c in listener.sent if "validate" in c]
    assert [(c["validate"], c.get("background"), c.get("full")) for c in sent] == [("orders.2026", True, None)]


class RefusesBackground:
    """FAKE database: answers ``validate`` with ``background`` the way a mongod that cannot validate in the
    background does (InvalidOptions); the local server accepts the option, so it cannot show this."""

    def __init__(self, code: int = 72) -> None:
        self.code = code
        self.sent = []

    def command(self, name, collection, **options):
        self.sent.append(options)
        if options.get("background"):
            raise OperationFailure("refused", self.code, {"ok": 0, "code": self.code,
                                                          "errmsg": "background validation is not supported"})
        return {"valid": True, "errors": [], "ok": 1}


def test_a_refused_background_validate_is_reported_not_validated_unless_foreground_is_allowed():
    """Guarantee (FAKE server, see RefusesBackground): without validate_foreground no foreground validate
    (exclusive lock) is run; the collection is NOT VALIDATED with the server's reason, named in the summary."""
    db = RefusesBackground()
    result = validate(db, "chat")
    assert (result.valid, result.mode) == (None, None)
    assert "background validation is not supported" in result.reason and "validate_foreground is false" in result.reason
    assert db.sent == [{"background": True}]
    summary = validation_summary([result, validate(RefusesBackground(), "other", foreground=True)])
    assert summary.startswith("1 collections validated (1 foreground; 0 invalid), 1 NOT VALIDATED: chat (")


def test_a_refused_background_validate_runs_in_the_foreground_when_allowed_and_other_errors_raise():
    """Guarantee (FAKE server): with validate_foreground the fallback is one foreground validate; an error
    that is not a refusal of the option (e.g. Unauthorized) is raised, never taken for one."""
    db = RefusesBackground()
    result = validate(db, "chat", foreground=True)
    assert (result.valid, result.mode) == (True, "foreground") and db.sent == [{"background": True}, {}]
    with pytest.raises(OperationFailure):
        validate(RefusesBackground(code=13), "chat", foreground=True)


def test_validate_foreground_is_off_unless_configured(monkeypatch, tmp_path):
    from dbops.core.config import load_config
    from tests.conftest import free_port

    facts = make_target(monkeypatch, tmp_path, free_port(), sections=MAINTENANCE)
    assert load_config().targets[facts.name].mongo.maintenance.validate_foreground is False
    on = make_target(monkeypatch, tmp_path, free_port(),
                     sections=MAINTENANCE.replace("1MB}", "1MB, validate_foreground: true}"))
    assert load_config().targets[on.name].mongo.maintenance.validate_foreground is True
