"""The oplog replay of the verification restore, applied to the local server with ordinary CRUD.

The local server writes updates as update descriptions; mongod writes compact ``$v: 2`` diffs: both
forms are applied here to real documents (the mongod entries are written by hand, in mongod's format).
"""

from __future__ import annotations

import uuid

import pytest

from dbops.mongo.oplog import UnsupportedOplogEntry, replay_oplog

DOC = {"_id": 1, "a": 1, "old": "x", "b": {"c": 1, "keep": True}, "arr": ["p", "q", "r", "s"]}


@pytest.fixture
def db(stack_mongo):
    from scripts.stack.mongo import mongo_client

    client = mongo_client()
    name = f"dbops_test_oplog_{uuid.uuid4().hex[:8]}"
    client[name].docs.insert_one(dict(DOC))
    yield client[name]
    client.drop_database(name)
    client.close()


def entries(*updates: dict, ns: str = "src.docs") -> list[dict]:
    return [{"op": "u", "ns": ns, "o2": {"_id": 1}, "o": o} for o in updates]


def test_mongod_compact_diff_sets_inserts_deletes_and_recurses_into_objects_and_arrays(db):
    diff = {"u": {"a": 2}, "i": {"new": 3}, "d": {"old": False}, "sb": {"u": {"c": 5}}, "sarr": {"a": True, "u1": "z"}}
    done = replay_oplog(db, iter(entries({"$v": 2, "diff": diff})), "src")
    assert done == {"updates": 1}
    assert db.docs.find_one() == {"_id": 1, "a": 2, "b": {"c": 5, "keep": True}, "arr": ["p", "z", "r", "s"], "new": 3}


def test_update_description_truncates_arrays_and_replaying_twice_changes_nothing_more(db):
    o = {"$v": 2, "diff": {"updatedFields": {"b.c": 9}, "removedFields": ["old"],
                           "truncatedArrays": [{"field": "arr", "newSize": 2}]}}
    insert = {"op": "i", "ns": "src.docs", "o": {"_id": 2, "v": 1}}
    delete = {"op": "d", "ns": "src.docs", "o": {"_id": 3}}
    log = [*entries(o), insert, delete]
    replay_oplog(db, iter(log), "src")
    once = list(db.docs.find().sort("_id"))
    replay_oplog(db, iter(log), "src")  # an oplog replayed over data that already holds its effects
    assert list(db.docs.find().sort("_id")) == once
    assert once[0] == {"_id": 1, "a": 1, "b": {"c": 9, "keep": True}, "arr": ["p", "q"]}


def test_an_array_resize_in_a_compact_diff_is_refused_not_guessed(db):
    with pytest.raises(UnsupportedOplogEntry, match="resizes the array"):
        replay_oplog(db, iter(entries({"$v": 2, "diff": {"sarr": {"a": True, "l": 2}}})), "src")
    assert db.docs.find_one() == DOC  # nothing applied


def test_v1_operators_and_whole_replacements(db):
    replay_oplog(db, iter(entries({"$v": 1, "$set": {"a": 7}})), "src")
    assert db.docs.find_one()["a"] == 7
    replay_oplog(db, iter(entries({"_id": 1, "only": True})), "src")
    assert db.docs.find_one() == {"_id": 1, "only": True}
