"""Where the oplog capture of a dump starts, and what it keeps, on the local server (a one-member replica set).

The local server reports the majority commit point in ``hello`` (``lastWrite.majorityOpTime``); with one member
it equals the last write, so the difference between the two cannot be produced here: the tests check which
position is taken and what the manifest says, and the fallbacks on replies stripped by hand (named FAKE).
"""

from __future__ import annotations

import copy
import uuid

import pytest
from bson import Timestamp

from dbops.core.streams import read_decompressed
from dbops.mongo.dump import capture_oplog, capture_start, dump_database, last_write, start_point
from dbops.mongo.oplog import read_bson_file


@pytest.fixture
def client(stack_mongo):
    from scripts.stack.mongo import mongo_client

    client = mongo_client()
    yield client
    client.close()


@pytest.fixture
def db(client):
    name = f"dbops_test_capture_{uuid.uuid4().hex[:8]}"
    yield client[name]
    client.drop_database(name)
    client.drop_database(f"{name}_other")


def test_the_capture_starts_at_the_majority_commit_point_the_server_reports(client, db, tmp_path):
    """Checks: with the server's real replies, the start is ``hello``'s majorityOpTime (not the last write),
    and the dump's manifest section names that position and carries no fallback note."""
    db.docs.insert_one({"_id": 1})
    majority = client.admin.command("hello")["lastWrite"]["majorityOpTime"]["ts"]
    start = capture_start(client)
    assert start.source == "hello lastWrite.majorityOpTime" and start.reason == ""
    assert majority <= start.ts <= last_write(client)
    dump = dump_database(client, db.name, tmp_path, 3, None, True)
    assert dump.oplog["start_from"] == "hello lastWrite.majorityOpTime" and "start_note" not in dump.oplog


def test_without_a_majority_point_in_hello_replsetgetstatus_gives_it(client):
    """Checks: the server's real ``replSetGetStatus`` reply is used when ``hello`` has no majorityOpTime
    (FAKE: the real ``hello`` reply with that field removed by hand, as older or proxied servers answer)."""
    hello = copy.deepcopy(client.admin.command("hello"))
    del hello["lastWrite"]["majorityOpTime"]
    status = client.admin.command("replSetGetStatus")
    start = start_point(hello, status)
    assert start.ts == status["optimes"]["lastCommittedOpTime"]["ts"]
    assert start.source == "replSetGetStatus optimes.lastCommittedOpTime" and start.reason == ""


@pytest.mark.parametrize("status, why", [
    ({"error": "not authorized on admin to execute command { replSetGetStatus: 1 }"}, "replSetGetStatus failed: not authorized"),
    ({"optimes": {"lastCommittedOpTime": {"ts": Timestamp(0, 0), "t": -1}}}, "nor replSetGetStatus"),
])
def test_with_no_majority_point_the_capture_starts_at_the_last_write_and_says_why(client, status, why):
    """Checks: without a known majority commit point (FAKE: the real ``hello`` without majorityOpTime, and a
    ``replSetGetStatus`` failure or the null optime mongod reports before it knows one) the capture starts at
    the last write, and the reason says so and why."""
    hello = copy.deepcopy(client.admin.command("hello"))
    del hello["lastWrite"]["majorityOpTime"]
    start = start_point(hello, status)
    assert start.ts == hello["lastWrite"]["opTime"]["ts"] and start.source == "hello lastWrite.opTime"
    assert "no majority commit point" in start.reason and why in start.reason


def test_the_capture_keeps_the_databases_entries_after_its_start_up_to_its_end_only(client, db, tmp_path):
    """Checks (the oplog is read without a server-side filter): the entries kept are those of the database,
    after the start and up to the end, oldest first; another database's writes and writes after the end
    are left out."""
    db.docs.insert_one({"_id": 0})
    start = capture_start(client).ts
    db.docs.insert_many([{"_id": i} for i in range(1, 4)])
    client[f"{db.name}_other"].docs.insert_one({"_id": 1})
    db.docs.delete_one({"_id": 0})
    end = last_write(client)
    db.docs.insert_one({"_id": 99})  # after the end
    entry, count, _ = capture_oplog(client, db.name, start, end, tmp_path, 3, None)
    read_decompressed(tmp_path / entry.name, tmp_path / "oplog.bson", entry.sha256)
    entries = list(read_bson_file(tmp_path / "oplog.bson"))
    assert count == 4
    assert [(e["op"], e["ns"], e["o"]["_id"]) for e in entries] == [
        ("i", f"{db.name}.docs", 1), ("i", f"{db.name}.docs", 2), ("i", f"{db.name}.docs", 3),
        ("d", f"{db.name}.docs", 0)]
    assert all(start < e["ts"] <= end for e in entries)
