"""Collection options and views through backup, verification and restore (issue 20, items 16 and 17).

The local server's renameCollection drops a collection's options (capped, validator, collation): the
restore's swap must carry them anyway; views hold no data but their definitions must come back.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from dbops.backup.lookup import load_manifest
from dbops.mongo.restore import check_restored, collection_options
from dbops.operators.mongo import MongoBackupOperator, MongoRestoreOperator, MongoVerifyBackupOperator
from tests.backup.conftest import context
from tests.mongo.conftest import ops, state, store

VALIDATOR = {"$jsonSchema": {"bsonType": "object", "required": ["name"]}}
COLLATION = {"locale": "fr", "strength": 2}
TIMESERIES = {"timeField": "at", "metaField": "sensor", "granularity": "minutes"}


def with_options(db) -> None:
    """Collections with options, views (one with a collation, one on a view) and a time-series collection."""
    db.create_collection("capped", capped=True, size=8192, max=50)
    db.capped.insert_many([{"_id": i, "line": f"log {i}"} for i in range(30)])
    db.create_collection("validated", validator=VALIDATOR, validationLevel="moderate", validationAction="error")
    db.validated.insert_many([{"name": f"n{i}"} for i in range(20)])
    db.create_collection("collated", collation=COLLATION)
    db.collated.insert_many([{"w": w} for w in ("côte", "Cote", "coté")])
    db.collated.create_index("w", name="w_fr")
    db.command("create", "people_over_3", viewOn="people", pipeline=[{"$match": {"n": {"$gt": 3}}}])
    db.command("create", "names_fr", viewOn="people_over_3", pipeline=[{"$project": {"name": 1}}], collation=COLLATION)
    db.create_collection("readings", timeseries=TIMESERIES)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    db.readings.insert_many([{"at": start + timedelta(minutes=i), "sensor": i % 3, "v": i * 0.5} for i in range(40)])


def views(db) -> dict[str, list]:
    return {name: sorted(str(d) for d in db[name].find()) for name in ("people_over_3", "names_fr")}


def test_options_views_and_time_series_come_back_from_a_restore_that_replaces_a_database(target):
    """Guarantees: the backup saves the views' definitions (and says how many); the verification compares
    every collection's and view's options with the dump's; a restore over an existing database holding
    collections with options gives back capped size and max, validator, collation, time-series options and
    views exactly (checked again after the move), the views answering as in the source."""
    source = target.client[target.database]
    with_options(source)
    made = MongoBackupOperator(task_id="dump", target=target.name).execute(context())
    manifest = load_manifest(ops(), store(), target.name, made["backup_id"])
    assert manifest.extra["views"] == ["names_fr", "people_over_3"]
    assert "readings" in manifest.tables and manifest.tables["readings"] == 40
    outcome = MongoVerifyBackupOperator(task_id="verify", target=target.name, backup_id=made["backup_id"]).execute(
        context(run_id="v"))
    assert outcome["verified"] is True
    checks = load_manifest(ops(), store(), target.name, made["backup_id"]).verification["checks"]
    assert checks["options"] == {"ok": True, "collections": 9, "views": 2, "mismatched": {}}
    restored = target.client["restored_opts"]
    with_options(restored)  # the database replaced holds collections with options and views too
    restored.capped.insert_one({"_id": "new"})
    MongoRestoreOperator(task_id="restore", target=target.name, backup_id=made["backup_id"], database="restored_opts",
                         overwrite=True).execute(context(run_id="r"))
    assert collection_options(target.client, "restored_opts") == collection_options(target.client, target.database)
    assert restored.capped.options() == {"capped": True, "size": 8192, "max": 50}
    assert state(restored) == state(source)
    assert views(restored) == views(source)
    assert sorted(restored.collated.index_information()) == ["_id_", "w_fr"]
    assert not [n for n in target.client.list_database_names() if n.startswith("restored_opts__")]


def test_the_check_names_a_collection_whose_options_differ(target):
    """Guarantee: a restored collection whose validator is not the backup's, and a missing view, fail the options
    check naming them (counts, hashes and indexes being equal)."""
    source = target.client[target.database]
    with_options(source)
    made = MongoBackupOperator(task_id="dump", target=target.name).execute(context())
    manifest = load_manifest(ops(), store(), target.name, made["backup_id"])
    expected = collection_options(target.client, target.database)
    source.command("collMod", "validated", validator={"$jsonSchema": {"required": ["other"]}})
    source.drop_collection("names_fr")
    checks = check_restored(target.client, target.database, manifest, expected)
    assert checks["row_counts"]["ok"] and checks["document_hashes"]["ok"] and checks["indexes"]["ok"]
    assert checks["options"]["ok"] is False and sorted(checks["options"]["mismatched"]) == ["names_fr", "validated"]
    assert checks["options"]["mismatched"]["names_fr"]["restored"] is None


def test_what_the_dump_does_with_each_kind_of_namespace():
    """Pure: mongod lists time-series collections as ``type: timeseries`` (the local server as collections with
    a timeseries option, tested above): their documents are dumped; views are saved as definitions; system
    collections skipped; any other type fails the dump naming it, never skipped silently."""
    from dbops.mongo.dump import UnsupportedCollection, kind_of

    assert kind_of({"name": "readings", "type": "timeseries", "options": {"timeseries": TIMESERIES}}) == "documents"
    assert kind_of({"name": "people"}) == kind_of({"name": "people", "type": "collection"}) == "documents"
    assert kind_of({"name": "v", "type": "view"}) == "view"
    assert kind_of({"name": "system.views", "type": "collection"}) == "skip"
    with pytest.raises(UnsupportedCollection, match="'odd' is of type 'newkind'.*nothing was stored"):
        kind_of({"name": "odd", "type": "newkind"})


def test_a_swap_undone_gives_back_the_former_collections_with_their_options(target):
    """Guarantee: when a move fails after the former collections moved aside (the application creates
    ``validated``, a name the backup restores, once the former capped collection was copied aside), the undo
    brings the former collections and views back with their options and documents."""
    from tests.mongo.test_backup import AfterCommand

    with_options(target.client[target.database])
    made = MongoBackupOperator(task_id="dump", target=target.name).execute(context())
    app = target.client["restored_undo"]
    app.create_collection("capped", capped=True, size=4096, max=10)
    app.capped.insert_many([{"_id": i} for i in range(5)])
    app.command("create", "a_view", viewOn="capped", pipeline=[{"$match": {"_id": {"$gt": 2}}}])
    before = collection_options(target.client, "restored_undo")
    listener = AfterCommand("drop", "capped", lambda: app.validated.insert_one({"_id": "app write"}))
    try:
        with pytest.raises(Exception, match="the moves were undone and checked: restored_undo holds its 2 former "
                                            r"collections again, and \['validated'\] created by someone else"):
            MongoRestoreOperator(task_id="restore", target=target.name, backup_id=made["backup_id"],
                                 database="restored_undo", overwrite=True).execute(context(run_id="r"))
    finally:
        listener.armed = False
    after = collection_options(target.client, "restored_undo")
    assert {name: after[name] for name in before} == before
    assert [d["_id"] for d in app.capped.find()] == [0, 1, 2, 3, 4]
    assert [d["_id"] for d in app.a_view.find()] == [3, 4]
    assert not [n for n in target.client.list_database_names() if n.startswith("restored_undo__")]


def test_options_changed_during_the_move_fail_the_restore_naming_the_collection(target):
    """Guarantee: the options are compared again after the move: a collection whose validator is not the
    backup's once in place (here changed by the application right after it moved in) fails the restore at
    once, naming it, instead of a green restore."""
    from airflow.sdk.exceptions import AirflowFailException

    from tests.mongo.test_backup import AfterCommand

    with_options(target.client[target.database])
    made = MongoBackupOperator(task_id="dump", target=target.name).execute(context())
    app = target.client["restored_changed"]
    listener = AfterCommand("drop", "validated", lambda: app.command("collMod", "validated", validator={"x": 1}))
    try:
        with pytest.raises(AirflowFailException, match=r"after the move the options of validated are not the "
                                                       r"backup's .* kept in \(none: the database was empty\)"):
            MongoRestoreOperator(task_id="restore", target=target.name, backup_id=made["backup_id"],
                                 database="restored_changed").execute(context(run_id="r"))
    finally:
        listener.armed = False
    assert app.validated.count_documents({}) == 20  # the data are in place
