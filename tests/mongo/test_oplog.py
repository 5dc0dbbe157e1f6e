"""The oplog replay of the verification restore, applied to the local server with ordinary CRUD.

The local server writes updates as update descriptions; mongod writes compact ``$v: 2`` diffs: both
forms are applied here to real documents (the mongod entries are written by hand, in mongod's format).
"""

from __future__ import annotations

import uuid

import pytest

from dbops.mongo.oplog import UnsupportedOplogEntry, refusal, replay_oplog

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


# FAKE (constructed by hand): entries shaped like mongod's applyOps, which the local server does not emit.
# mongod logs a transaction's writes as one command entry in admin.$cmd whose inner operations carry
# their own namespaces; they are applied here to real documents on the local server.
def transaction(*inner: dict, **options) -> dict:
    return {"op": "c", "ns": "admin.$cmd", "ts": "T1", "o": {"applyOps": list(inner), **options}}


TRANSACTION = transaction(
    {"op": "i", "ns": "src.docs", "ui": "uuid", "o": {"_id": 2, "v": 1}},
    {"op": "u", "ns": "src.docs", "ui": "uuid", "o2": {"_id": 1}, "o": {"$v": 2, "diff": {"u": {"a": 5}}}},
    {"op": "i", "ns": "other.docs", "ui": "uuid", "o": {"_id": 50, "not": "ours"}},
    {"op": "c", "ns": "admin.$cmd", "o": {"applyOps": [{"op": "d", "ns": "src.docs", "o": {"_id": 3}}]}},
)


def test_the_capture_keeps_transactions_that_touch_the_database_and_only_those():
    from bson import encode
    from bson.raw_bson import RawBSONDocument

    from dbops.mongo.dump import belongs_to

    def raw(entry: dict) -> RawBSONDocument:  # as the capture reads them: raw BSON from the oplog
        return RawBSONDocument(encode(entry))

    assert belongs_to(raw(TRANSACTION), "src")
    assert belongs_to(raw(transaction(transaction({"op": "d", "ns": "src.x", "o": {"_id": 1}}))), "src")  # nested
    assert not belongs_to(raw(transaction({"op": "i", "ns": "srcother.docs", "o": {"_id": 1}})), "src")
    assert not belongs_to(raw({"op": "c", "ns": "admin.$cmd", "o": {"create": "src.x"}}), "src")
    assert belongs_to(raw({"op": "i", "ns": "src.docs", "o": {"_id": 1}}), "src")


def test_a_transactions_applyops_is_replayed_with_its_inner_operations_of_the_database_only(db):
    db.docs.insert_one({"_id": 3, "gone": True})
    done = replay_oplog(db, iter([TRANSACTION]), "src")
    assert list(db.docs.find().sort("_id")) == [{**DOC, "a": 5}, {"_id": 2, "v": 1}]
    assert db.list_collection_names() == ["docs"]  # the other database's write is not applied here
    assert done == {"inserts": 1, "updates": 1, "deletes": 1, "transactions": 2}


@pytest.mark.parametrize("entry, named", [
    ({"op": "c", "ns": "src.$cmd", "o": {"renameCollection": "src.docs", "to": "src.new"}}, "renameCollection"),
    ({"op": "c", "ns": "src.$cmd", "o": {"collMod": "docs", "validator": {}}}, "collMod"),
    ({"op": "c", "ns": "src.$cmd", "o": {"dropDatabase": 1}}, "dropDatabase"),
    ({"op": "c", "ns": "src.$cmd", "o": {"frobnicate": "docs"}}, "frobnicate"),
    (transaction({"op": "c", "ns": "src.$cmd", "o": {"collMod": "docs"}}), "collMod"),
    (transaction({"op": "i", "ns": "src.docs", "o": {"_id": 9}}, prepare=True), "prepared transaction"),
])
def test_an_entry_the_replay_cannot_apply_is_refused_naming_it(db, entry, named):
    with pytest.raises(UnsupportedOplogEntry, match=named):
        replay_oplog(db, iter([entry]), "src")
    assert list(db.docs.find()) == [DOC]


@pytest.mark.parametrize("entry, named", [
    ({"op": "i", "ns": "src.system.buckets.readings", "o": {"_id": 1}}, "time-series collection 'readings'"),
    ({"op": "c", "ns": "src.$cmd", "o": {"create": "system.buckets.readings"}}, "time-series collection 'readings'"),
    ({"op": "i", "ns": "src.system.views", "o": {"_id": "src.v", "viewOn": "docs"}}, "'system.views' .* a view"),
    (transaction({"op": "i", "ns": "src.system.buckets.r", "o": {"_id": 9}}), "time-series collection 'r'"),
])
def test_writes_to_time_series_buckets_and_system_collections_are_refused_naming_them(db, entry, named):
    """mongod logs a time-series collection's writes as writes to its buckets, and a view's changes as writes to
    system.views: replaying them as ordinary documents would be wrong, so they are refused, named."""
    assert refusal(entry, "src") is not None
    with pytest.raises(UnsupportedOplogEntry, match=named):
        replay_oplog(db, iter([entry]), "src")
    assert db.list_collection_names() == ["docs"]
