"""mongo_maintenance_weekly__: validate, compact where due (a server without compact is reported, not a
failure), unused indexes, figures in the ops database; against the local MongoDB-compatible server.

What the local server cannot show: it answers CommandNotFound to ``compact``, reports no free storage in
``collStats`` and counts no index accesses in ``$indexStats`` (every index looks unused); an invalid
collection cannot be made without corrupting its WiredTiger files. The compaction plan is therefore
checked on mongod-shaped ``collStats`` replies (pure), and the compact call on the real server.
"""

from __future__ import annotations

import pytest

from dbops.mongo.maintenance import compact, compact_due, unused_indexes, validate
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
    assert [(v["collection"], v["valid"]) for v in result["validate"]] == [("orders.2026", True), ("ünï", True)]
    assert "never_used" in result["unused_indexes"]["orders.2026"]
    assert result["compacted"] == {} and result["bytes_reclaimed"] == 0
    assert set(result["compact_skipped"]) == {"orders.2026", "ünï"}
    report = ops().get_first("SELECT report FROM dbops.maintenance_runs WHERE target = %s AND kind = 'weekly'",
                             parameters=(maintenance_target.name,))[0]
    assert report["unused_indexes"] == {"orders.2026": result["unused_indexes"]["orders.2026"]}
    db = maintenance_target.client[maintenance_target.database]
    assert validate(db, "orders.2026").valid and "_id_" not in unused_indexes(db["orders.2026"])
