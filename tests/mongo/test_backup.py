"""MongoDB backup, verification restore and restore against the local MongoDB-compatible server.

Failure paths first. Each test says which guarantee it checks.
"""

from __future__ import annotations

import os
import signal
import uuid
from datetime import datetime, timezone

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from pymongo import monitoring

from dbops.backup.verify import VerificationFailed
from dbops.core.manifest import MANIFEST_NAME
from dbops.operators.mongo import (
    MongoBackupOperator,
    MongoRestoreOperator,
    MongoScratchDatabaseOperator,
    MongoVerifyBackupOperator,
)
from tests.backup.conftest import context
from scripts.stack.mongo import MongoServer
from tests.conftest import free_port
from tests.mongo.conftest import fill, make_target, ops, state, store


def backup(name: str, run_id: str = "test_run", operator=MongoBackupOperator) -> dict:
    return operator(task_id="dump_and_store", target=name).execute(context(run_id=run_id))


def verify(name: str, backup_id: str, run_id: str = "verify_run") -> dict:
    return MongoVerifyBackupOperator(task_id="verify", target=name, backup_id=backup_id).execute(context(run_id=run_id))


def recovery_test(backup_id: str):
    return ops().get_first("SELECT ok, error FROM dbops.recovery_tests WHERE backup_id = %s ORDER BY id DESC LIMIT 1",
                           parameters=(backup_id,))


def test_wrong_password_fails_at_once_without_retry_and_never_logs_it(monkeypatch, tmp_path, stack_mongo, pg_server,
                                                                       caplog):
    """Guarantee: authentication is a permanent failure (AirflowFailException: no retries), and the password
    appears in no message or log line. The local server runs with SCRAM authentication (--auth)."""
    from scripts.stack.paths import MONGO_PORT

    password = "Wr0ng-pa55word-7c1d"
    bad = make_target(monkeypatch, tmp_path, MONGO_PORT, password=password)
    with pytest.raises(AirflowFailException) as exc:
        backup(bad.name)
    assert "uthentication failed" in str(exc.value)
    assert password not in str(exc.value) and password not in caplog.text
    assert store().list_keys(f"{bad.name}/") == []


def use_verify_conn(facts, monkeypatch, password: str | None = None) -> str:
    """Point the target's ``backup.verify_conn_id`` at an Airflow connection of its own (on the same local
    server: there is one here), with ``password`` (default the right one); returns the connection id."""
    from scripts.stack.mongo import mongo_conn

    conn_id = f"mongo_scratch_{facts.name}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", mongo_conn("admin", facts.port, password))
    config = facts.tmp / "dbops.yaml"
    text = config.read_text()
    config.write_text(text.replace("backup: {storage: local,", f"backup: {{storage: local, verify_conn_id: {conn_id},"))
    assert config.read_text() != text
    return conn_id


def test_verification_uses_verify_conn_id_and_its_failure_names_that_connection(target, monkeypatch, capsys, caplog):
    """Guarantee: with ``backup.verify_conn_id`` the scratch database is created, restored into and dropped
    through that connection, not the target's: here it has a wrong password, so the backup (target's
    connection) succeeds while the verification and the scratch drop fail at once naming that connection,
    the backup is not marked as failing its verification, and the password is never shown. (Only one
    server runs here, so the verification connection points at the same server under another name.)"""
    password = "n0t-the-scratch-pa55"
    conn_id = use_verify_conn(target, monkeypatch, password)
    made = backup(target.name)
    with pytest.raises(AirflowFailException) as exc:
        verify(target.name, made["backup_id"])
    assert f"on the verification server (connection {conn_id})" in str(exc.value)
    assert "uthentication failed" in str(exc.value)
    with pytest.raises(AirflowFailException, match=f"connection {conn_id}"):
        MongoScratchDatabaseOperator(task_id="drop_scratch", target=target.name).execute(context(run_id="verify_run"))
    assert recovery_test(made["backup_id"]) is None
    output = capsys.readouterr()
    assert all(password not in text for text in (str(exc.value), output.out, output.err, caplog.text))


def test_verification_through_verify_conn_id_restores_and_says_where(target, monkeypatch, capsys):
    """Guarantee: a working verify_conn_id verifies the backup and the log names the verification server's
    connection; without it the log warns that the scratch copy is written to the production server."""
    made = backup(target.name)
    capsys.readouterr()
    assert verify(target.name, made["backup_id"], run_id="own_server")["verified"] is True
    assert "verify_conn_id is not set, so a full copy of the database is written there" in capsys.readouterr().out
    conn_id = use_verify_conn(target, monkeypatch)
    assert verify(target.name, made["backup_id"], run_id="scratch_server")["verified"] is True
    log = capsys.readouterr().out
    assert f"on the verification server (connection {conn_id})" in log and "verify_conn_id is not set" not in log


class KillServerMidDump(MongoBackupOperator):
    """FAULT INJECTION: kills the server (SIGKILL) once the dump has read the first batch of a collection."""

    server = None

    def progress(self, collection: str, documents: int) -> None:
        if collection == "people":
            os.kill(self.server.running_pid(), signal.SIGKILL)


def test_server_killed_mid_dump_is_retried_leaves_no_manifest_and_the_retry_stores_one_backup(
        monkeypatch, tmp_path, own_mongo, pg_server):
    """Guarantee: a dump cut off by the server's death is transient (retried), stores nothing and no
    manifest; the retry of the same run makes exactly one complete backup."""
    facts = make_target(monkeypatch, tmp_path, own_mongo.port)
    fill(facts.client[facts.database], documents=1500)
    KillServerMidDump.server = own_mongo
    with pytest.raises(AirflowException) as exc:
        backup(facts.name, run_id="killed_run", operator=KillServerMidDump)
    assert not isinstance(exc.value, AirflowFailException)  # transient: Airflow retries it
    assert "will retry" in str(exc.value) or "transient" in str(exc.value)
    assert store().list_keys(f"{facts.name}/") == []  # nothing half-stored, no manifest
    assert not list((tmp_path / "staging").glob("*"))
    own_mongo.stop()  # reaps the killed process
    own_mongo.start()
    made = backup(facts.name, run_id="killed_run")
    keys = store().list_keys(f"{facts.name}/")
    assert {k.rsplit("/", 1)[-1] for k in keys if k.endswith(MANIFEST_NAME)} == {MANIFEST_NAME}
    assert all(k.startswith(made["backup_id"] + "/") for k in keys)
    assert made["rows"] == 1500 + 1500 + 500
    assert verify(facts.name, made["backup_id"])["verified"] is True


def test_a_backup_stored_but_not_recorded_by_an_earlier_attempt_is_recorded_by_the_retry(target):
    """Guarantee: an attempt that stored a complete backup but lost the ops database before recording it
    is finished by the retry (recorded, nothing dumped again), never left as an uncatalogued copy."""
    from dbops.backup.runs import new_manifest
    from dbops.backup.store_io import store_backup
    from dbops.core.config import load_config
    from dbops.core.manifest import backup_prefix
    from dbops.mongo.dump import TOOL, dump_database

    # the earlier attempt, up to the catalog: dumped and stored with the library, not recorded
    ctx = context(run_id="lost_ops")
    policy = load_config().targets[target.name].backup
    staging = target.tmp / "earlier"
    staging.mkdir()
    dump = dump_database(target.client, target.database, staging, 3, None, True)
    prefix = backup_prefix(target.name, "full", datetime(2026, 11, 20, 2, 0, 5, tzinfo=timezone.utc))
    manifest = new_manifest(ctx, policy, store(), prefix, target.name, kind="full", taken_at=datetime.now(timezone.utc),
                            snapshot_id="s", server_version=dump.server_version, tool=TOOL, files=dump.files,
                            tables=dump.counts, dump_seconds=dump.seconds, archive="a")
    manifest.extra.update({"database": target.database, "consistency": dump.consistency, "oplog": dump.oplog,
                           "hashes": dump.hashes, "index_specs": dump.indexes})
    store_backup(store(), manifest, staging)
    retried = backup(target.name, run_id="lost_ops")
    assert retried["backup_id"] == prefix
    assert {k.split("/")[2] for k in store().list_keys(f"{target.name}/full/")} == {prefix.rsplit("/", 1)[1]}
    assert ops().get_first("SELECT status FROM dbops.backups WHERE backup_id = %s", parameters=(prefix,))[0] == "complete"
    assert verify(target.name, prefix)["verified"] is True


def test_corrupt_stored_file_fails_the_verification_naming_it(target):
    """Guarantee: a stored file that is not what the manifest says fails the verification (no retry),
    names the file, and is recorded as a failed recovery test."""
    made = backup(target.name)
    stored = target.tmp / "store" / made["backup_id"] / target.database / "people.bson.zst"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(VerificationFailed) as exc:
        verify(target.name, made["backup_id"])
    assert f"{target.database}/people.bson.zst" in str(exc.value)
    ok, error = recovery_test(made["backup_id"])
    assert ok is False and "people.bson.zst" in error
    assert ops().get_first("SELECT verified FROM dbops.backups WHERE backup_id = %s",
                           parameters=(made["backup_id"],))[0] is False


class WriteDuringDump(MongoBackupOperator):
    """Writes to the database (another client) while the dump reads ``events``: inserts, deletes and
    updates in ``events``, in ``audit.log`` (read before it: collections are read by name) and in
    ``people`` (read after it)."""

    client = None
    database = None
    before = None

    def progress(self, collection: str, documents: int) -> None:
        if collection != "events" or self.before is not None:
            return
        db = self.client[self.database]
        type(self).before = state(db)
        db.events.insert_many([{"kind": "late", "at": -i} for i in range(50)])
        db.events.delete_many({"kind": "view", "at": {"$lt": 10}})
        db.events.update_many({"at": {"$gte": 100, "$lt": 105}}, {"$set": {"kind": "changed"}, "$unset": {"payload": 1}})
        db.people.insert_many([{"_id": 10_000 + i, "name": "late"} for i in range(7)])
        db.people.update_one({"_id": 1}, {"$set": {"tags.1": "c", "n": 99}})
        db["audit.log"].delete_many({"v": {"$lt": 3}})


def test_writes_during_the_dump_counts_match_the_snapshot_and_the_replay_reaches_the_dump_end(target):
    """Guarantees: (1) snapshot: each collection's count and hash in the manifest are those of the snapshot it
    was read in (``events`` without the writes made while it was read, as the server isolates snapshot
    transactions); the verification restore matches them. (2) oplog: replaying the captured oplog brings
    the scratch database to the source's state at the dump's end (no writes happen after it here)."""
    WriteDuringDump.client, WriteDuringDump.database, WriteDuringDump.before = target.client, target.database, None
    made = backup(target.name, operator=WriteDuringDump)
    db = target.client[target.database]
    after = state(db)
    from dbops.backup.lookup import load_manifest

    manifest = load_manifest(ops(), store(), target.name, made["backup_id"])
    assert manifest.tables["events"] == WriteDuringDump.before["events"][0] == 600  # not 600 + 50 - 10
    assert manifest.extra["hashes"]["events"] == WriteDuringDump.before["events"][1]
    assert manifest.tables["audit.log"] == 200  # read before the writes
    assert manifest.tables["people"] == after["people"][0] == 607  # read after them
    assert after["events"][0] == 640 and after["audit.log"][0] == 197
    assert manifest.extra["consistency"] == "oplog" and manifest.extra["oplog"]["entries"] >= 50 + 10 + 5 + 7 + 1 + 3
    assert manifest.extra["snapshot_reads"] == ["audit.log", "events", "people"]  # small: snapshot reads
    run_id = "verify_writes"
    result = verify(target.name, made["backup_id"], run_id=run_id)
    assert result["verified"] is True
    from dbops.backup.verify import scratch_database_name

    scratch = target.client[scratch_database_name(target.name, run_id)]
    assert state(scratch) == after  # the oplog replay reached the state at the dump's end
    MongoScratchDatabaseOperator(task_id="drop_scratch", target=target.name).execute(context(run_id=run_id))
    assert scratch.name not in target.client.list_database_names()


HOSTILE = ["a.b.c", "ünï €", "sl/ash", "100%", "sp ace", "x" * 100]


def test_hostile_database_and_collection_names_round_trip(monkeypatch, tmp_path, stack_mongo, pg_server):
    """Guarantee: names with dots, slashes, percent signs, spaces and unicode (``$`` is refused by the
    server) are dumped into escaped file names, verified and restored under their own names."""
    from scripts.stack.paths import MONGO_PORT

    facts = make_target(monkeypatch, tmp_path, MONGO_PORT, database=f"dbops_ünï_{uuid.uuid4().hex[:8]}")
    db = facts.client[facts.database]
    try:
        for i, name in enumerate(HOSTILE):
            db[name].insert_many([{"_id": k, "i": i, "s": "ü" * k} for k in range(20 + i)])
        db["a.b.c"].create_index([("s", 1)], name="we\"ird; $name")
        made = backup(facts.name)
        assert verify(facts.name, made["backup_id"])["verified"] is True
        files = {k.split(made["backup_id"] + "/", 1)[1] for k in store().list_keys(made["backup_id"])}
        assert f"{facts.database}/sl%2Fash.bson.zst" in files and f"{facts.database}/100%25.bson.zst" in files
        MongoRestoreOperator(task_id="restore", target=facts.name, backup_id="latest",
                             database="restored_ünï").execute(context(run_id="restore_hostile"))
        assert state(facts.client["restored_ünï"]) == state(db)
    finally:
        for name in (facts.database, "restored_ünï"):
            facts.client.drop_database(name)
        for name in facts.client.list_database_names():
            if name.startswith("dbops_verify_"):
                facts.client.drop_database(name)


def test_restore_refuses_an_existing_database_unless_overwrite_then_replaces_it_whole(target):
    """Guarantee: an existing database is kept unless overwrite; with overwrite it holds exactly the
    backup's data afterwards, its former collections are gone, nothing temporary is left."""
    made = backup(target.name)
    source = state(target.client[target.database])
    restored = target.client["restored_x"]
    restored.keep.insert_one({"mine": True})

    def restore(overwrite: bool):
        return MongoRestoreOperator(task_id="restore", target=target.name, backup_id=made["backup_id"],
                                    database="restored_x", overwrite=overwrite).execute(context(run_id="r"))

    with pytest.raises(AirflowFailException, match="exists and holds collections; set overwrite"):
        restore(False)
    assert restored.list_collection_names() == ["keep"]
    with pytest.raises(AirflowFailException, match="never restored into"):
        MongoRestoreOperator(task_id="restore", target=target.name, backup_id="latest",
                             database=target.database).execute(context(run_id="r"))
    assert restore(True)["replaced"] is True
    assert state(restored) == source
    assert not [n for n in target.client.list_database_names() if "__dbops_" in n]


def test_restore_refuses_up_front_a_database_name_differing_only_in_case(target):
    """Guarantee: a destination that differs only in letter case from the target's database, or from an existing
    database (mongod refuses such twins, but only when the collections move in), is refused before anything is
    fetched or created."""
    made = backup(target.name)
    for database, says in ((target.database.upper(), "never restored into"),
                           ("restored_TWIN", "differs only in letter case from the existing database 'restored_twin'")):
        target.client["restored_twin"].keep.insert_one({"mine": True})
        with pytest.raises(AirflowFailException, match=says):
            MongoRestoreOperator(task_id="restore", target=target.name, backup_id=made["backup_id"],
                                 database=database, overwrite=True).execute(context(run_id="r"))
        assert not [n for n in target.client.list_database_names() if n.lower().startswith(database.lower() + "__")]
    assert target.client["restored_twin"].list_collection_names() == ["keep"]
    assert "restored_TWIN" not in target.client.list_database_names()


def test_restore_never_overwrites_collections_an_interrupted_swap_moved_aside(target):
    """Guarantee: old collections left in ``<database>__dbops_replaced`` (a swap interrupted beyond undoing)
    are never dropped by a later restore: it stops before moving anything."""
    made = backup(target.name)
    target.client["restored_y"].now.insert_one({"n": 1})
    target.client["restored_y__dbops_replaced"].before.insert_one({"old": True})
    with pytest.raises(AirflowFailException, match="holds collections moved aside by an interrupted restore"):
        MongoRestoreOperator(task_id="restore", target=target.name, backup_id=made["backup_id"],
                             database="restored_y", overwrite=True).execute(context(run_id="r"))
    assert target.client["restored_y"].list_collection_names() == ["now"]
    assert target.client["restored_y__dbops_replaced"].list_collection_names() == ["before"]
    assert "restored_y__dbops_restoring" not in target.client.list_database_names()


class AfterCommand(monitoring.CommandListener):
    """FAULT INJECTION through pymongo's command monitoring (registered for the clients created while the test
    runs, the operator's included): once a command named ``name`` whose argument is ``argument`` succeeds,
    calls ``action()`` once; inert once ``armed`` is False (pymongo cannot unregister a listener)."""

    def __init__(self, name: str, argument: str, action) -> None:
        self.name, self.argument, self.action = name, argument, action
        self.armed, self.requests = True, set()
        monitoring.register(self)

    def started(self, event) -> None:
        if self.armed and event.command_name == self.name and event.command.get(self.name) == self.argument:
            self.requests.add(event.request_id)

    def succeeded(self, event) -> None:
        if self.armed and event.request_id in self.requests:
            self.armed = False
            self.action()

    def failed(self, event) -> None:
        pass


def restore_into(name: str, backup_id: str, database: str) -> dict:
    return MongoRestoreOperator(task_id="restore", target=name, backup_id=backup_id, database=database,
                                overwrite=True).execute(context(run_id="r"))


def failed_restore_with_a_write(target, made: dict, database: str, renamed: str, write,
                                error: type[Exception] = AirflowException) -> str:
    """The message of a restore into ``database`` that fails because the application runs ``write`` right
    after the swap renamed ``renamed`` aside."""
    listener = AfterCommand("renameCollection", renamed, write)
    try:
        with pytest.raises(error) as exc:
            restore_into(target.name, made["backup_id"], database)
    finally:
        listener.armed = False
    return str(exc.value)


def test_a_swap_whose_undo_fails_says_where_every_collection_is_and_drops_nothing(target):
    """Guarantee: when a move of the swap fails and moving back fails too (here the application writes to
    ``people`` right after its old collection moved aside: the restored ``people`` cannot move in, and the
    old one cannot move back), the task fails at once, never claims the database unchanged, names where
    the old collection is and says to drop the new same-named one first; no collection is dropped."""
    made = backup(target.name)
    app = target.client
    app["restored_z"].people.insert_many([{"_id": "old", "v": 1}, {"_id": "old2", "v": 2}])
    app["restored_z"].keep.insert_one({"mine": True})
    message = failed_restore_with_a_write(target, made, "restored_z", "restored_z.people",
                                          lambda: app["restored_z"].people.insert_one({"_id": "app write"}),
                                          AirflowFailException)
    assert "unchanged" not in message
    assert "undoing the moves failed too: restored_z does NOT hold its former collections" in message
    assert "former collection 'people' is in restored_z__dbops_replaced" in message
    assert "drop or rename the collection of the same name in restored_z first" in message
    assert app["restored_z__dbops_replaced"].list_collection_names() == ["people"]
    assert sorted(d["_id"] for d in app["restored_z__dbops_replaced"].people.find()) == ["old", "old2"]
    assert sorted(app["restored_z"].list_collection_names()) == ["keep", "people"]
    assert [d["_id"] for d in app["restored_z"].people.find()] == ["app write"]
    assert "restored_z__dbops_restoring" not in app.list_database_names()  # restored copies only: dropped
    with pytest.raises(AirflowFailException, match="first drop or rename a collection of the same name"):
        restore_into(target.name, made["backup_id"], "restored_z")  # never runs over what was moved aside


def test_a_swap_undone_says_what_the_check_of_the_database_found(target):
    """Guarantee: when a move fails (the application creates ``events``, a name the backup restores, after
    the old collections moved aside) and every move is undone, the error says the database was checked:
    its former collections are back, plus the collection created meanwhile; the old data is intact."""
    made = backup(target.name)
    app = target.client
    app["restored_w"].keep.insert_one({"mine": True})
    message = failed_restore_with_a_write(target, made, "restored_w", "restored_w.keep",
                                          lambda: app["restored_w"].events.insert_one({"_id": "app write"}))
    assert ("the moves were undone and checked: restored_w holds its 1 former collections again, and ['events'] "
            "created by someone else during the restore") in message
    assert "unchanged" not in message
    assert sorted(app["restored_w"].list_collection_names()) == ["events", "keep"]
    assert app["restored_w"].keep.find_one({}, {"_id": 0}) == {"mine": True}
    assert not [n for n in app.list_database_names() if n.startswith("restored_w__")]


def test_a_restore_that_fails_its_checks_leaves_the_database_untouched(target):
    """Guarantee (the normal failure path): a stored file that does not match fails the restore before any
    move; the message says the database was not touched, its collections are as they were, nothing
    temporary is left."""
    made = backup(target.name)
    stored = target.tmp / "store" / made["backup_id"] / target.database / "events.bson.zst"
    stored.write_bytes(stored.read_bytes()[:-3])
    target.client["restored_v"].keep.insert_one({"mine": True})
    with pytest.raises(AirflowFailException) as exc:
        restore_into(target.name, made["backup_id"], "restored_v")
    assert "events.bson.zst" in str(exc.value)
    assert "restored_v was not touched (nothing was moved into or out of it)" in str(exc.value)
    assert target.client["restored_v"].list_collection_names() == ["keep"]
    assert not [n for n in target.client.list_database_names() if n.startswith("restored_v__")]


def test_a_cleanup_that_fails_never_hides_the_restores_own_error(monkeypatch, tmp_path, own_mongo, pg_server):
    """Guarantee: the server dies while the restore inserts into the temporary database; dropping that
    database then fails too, and the error raised is still the restore's own (transient, retried), saying
    the target database was not touched and that the temporary one could not be dropped."""
    facts = make_target(monkeypatch, tmp_path, own_mongo.port)
    fill(facts.client[facts.database], documents=50)
    made = backup(facts.name)
    listener = AfterCommand("create", "people", lambda: os.kill(own_mongo.running_pid(), signal.SIGKILL))
    try:
        with pytest.raises(AirflowException) as exc:
            restore_into(facts.name, made["backup_id"], "restored_u")
    finally:
        listener.armed = False
        own_mongo.stop()  # reaps the killed process
        own_mongo.start()
    message = str(exc.value)
    assert not isinstance(exc.value, AirflowFailException) and "transient" in message
    assert message.startswith(f"restoring {made['backup_id']} into restored_u could not finish; restored_u was not "
                              "touched")
    assert "the temporary database restored_u__dbops_restoring could not be dropped" in message


class WriteManyDuringDump(MongoBackupOperator):
    """Writes more documents (one oplog entry each) than the server's oplog holds while the dump runs."""

    client = None
    database = None

    def progress(self, collection: str, documents: int) -> None:
        if collection == "events" and documents <= 101:
            for i in range(3):
                self.client[self.database].flood.insert_many([{"i": i, "k": k} for k in range(200)])


def test_an_oplog_that_rolls_over_during_the_dump_fails_it_without_a_manifest(monkeypatch, tmp_path, pg_server,
                                                                             tmp_path_factory):
    """Guarantee: when the oplog no longer holds the dump's start, the captured oplog would have a gap:
    the backup fails at once saying to enlarge the oplog, and stores nothing."""
    server = MongoServer(free_port(), tmp_path_factory.mktemp("small_oplog"), oplog_max_entries=100)
    server.start()
    try:
        facts = make_target(monkeypatch, tmp_path, server.port)
        fill(facts.client[facts.database], documents=300)
        WriteManyDuringDump.client, WriteManyDuringDump.database = facts.client, facts.database
        with pytest.raises(AirflowFailException, match="the oplog no longer holds the dump's start"):
            backup(facts.name, operator=WriteManyDuringDump)
        assert store().list_keys(f"{facts.name}/") == []
    finally:
        server.stop()


class RenameDuringDump(MongoBackupOperator):
    """Renames a collection (another client) while the dump reads ``events``, on the first ``renames`` dumps: an
    oplog command the replay cannot apply."""

    client = None
    database = None
    renames = 1

    def progress(self, collection: str, documents: int) -> None:
        db = self.client[self.database]
        if collection == "events" and documents <= 101 and type(self).renames > 0:
            type(self).renames -= 1
            old, new = ("audit.log", "renamed") if "audit.log" in db.list_collection_names() else ("renamed", "audit.log")
            self.client.admin.command("renameCollection", f"{self.database}.{old}", to=f"{self.database}.{new}")


def test_a_rename_during_the_dump_is_dumped_again_once_and_the_backup_verifies(target, capsys):
    """Guarantee: a renameCollection in the oplog window (which the replay cannot apply) makes the backup dump
    again once; the second dump, without it, is stored and verifies (before: a backup that could never be)."""
    RenameDuringDump.client, RenameDuringDump.database, RenameDuringDump.renames = target.client, target.database, 1
    made = backup(target.name, operator=RenameDuringDump)
    assert "holds a change its replay cannot apply (command 'renameCollection' of" in capsys.readouterr().out
    from dbops.backup.lookup import load_manifest

    manifest = load_manifest(ops(), store(), target.name, made["backup_id"])
    assert sorted(manifest.tables) == ["events", "people", "renamed"]
    assert verify(target.name, made["backup_id"])["verified"] is True


def test_renames_during_both_dumps_fail_the_backup_naming_the_rename_and_store_nothing(target):
    """Guarantee: when the second dump sees a rename too, the backup fails at once naming it, stores nothing and
    leaves nothing staged (a backup that can never be verified is never stored)."""
    RenameDuringDump.client, RenameDuringDump.database, RenameDuringDump.renames = target.client, target.database, 2
    with pytest.raises(AirflowFailException, match="again during a second one.*command 'renameCollection' of "
                                                   f"{target.database}.(audit.log|renamed)"):
        backup(target.name, operator=RenameDuringDump)
    assert store().list_keys(f"{target.name}/") == []
    assert not list((target.tmp / "staging").glob("*/*"))


class DropDuringDump(MongoBackupOperator):
    """Drops ``people`` (another client) while the dump reads ``events``: listed, gone when its turn comes."""

    client = None
    database = None

    def progress(self, collection: str, documents: int) -> None:
        if collection == "events" and "people" in self.client[self.database].list_collection_names():
            self.client[self.database].drop_collection("people")


def test_a_collection_dropped_during_the_dump_is_skipped_and_said_and_the_backup_verifies(target, capsys):
    """Guarantee: a collection dropped between the listing and its read is skipped (manifest and log say so),
    not a failed night; the backup verifies and matches the database at the dump's end."""
    DropDuringDump.client, DropDuringDump.database = target.client, target.database
    made = backup(target.name, operator=DropDuringDump)
    from dbops.backup.lookup import load_manifest

    manifest = load_manifest(ops(), store(), target.name, made["backup_id"])
    assert sorted(manifest.tables) == ["audit.log", "events"]
    assert manifest.extra["skipped"]["people"].startswith("dropped during the dump")
    logged = capsys.readouterr().out
    assert "collection people was dropped during the dump: not in this backup" in logged
    assert "skipped: people (dropped during the dump (NamespaceNotFound))" in logged
    assert verify(target.name, made["backup_id"], run_id="verify_dropped")["verified"] is True
    from dbops.backup.verify import scratch_database_name

    scratch = target.client[scratch_database_name(target.name, "verify_dropped")]
    assert state(scratch) == state(target.client[target.database])


def test_collections_read_outside_a_transaction_give_a_verified_backup_at_the_dump_end(monkeypatch, tmp_path,
                                                                                      stack_mongo, pg_server):
    """Guarantee: with ``mongo.snapshot_max_bytes: 0`` every collection is read outside a transaction (as a
    collection too large for mongod's 60 s transaction limit is); with writes during the dump, the manifest
    says no collection was a snapshot read, the documents read match the restore, and the oplog replay
    brings the scratch database to the source's state at the dump's end."""
    from scripts.stack.paths import MONGO_PORT

    facts = make_target(monkeypatch, tmp_path, MONGO_PORT, sections="    mongo: {snapshot_max_bytes: 0}\n")
    try:
        fill(facts.client[facts.database])
        WriteDuringDump.client, WriteDuringDump.database, WriteDuringDump.before = facts.client, facts.database, None
        made = backup(facts.name, operator=WriteDuringDump)
        after = state(facts.client[facts.database])
        from dbops.backup.lookup import load_manifest

        manifest = load_manifest(ops(), store(), facts.name, made["backup_id"])
        assert manifest.extra["snapshot_reads"] == [] and manifest.extra["consistency"] == "oplog"
        assert after["events"][0] == 640 and manifest.extra["oplog"]["entries"] >= 50 + 10 + 5 + 7 + 1 + 3
        assert verify(facts.name, made["backup_id"], run_id="verify_unsnapshot")["verified"] is True
        from dbops.backup.verify import scratch_database_name

        assert state(facts.client[scratch_database_name(facts.name, "verify_unsnapshot")]) == after
    finally:
        for name in facts.client.list_database_names():
            if name.startswith((facts.database, "dbops_verify_")):
                facts.client.drop_database(name)


class StopStoreMidDump(MongoBackupOperator):
    """FAULT INJECTION: stops the S3 server (the real moto server) once the dump reads its first batch of ``people``."""

    moto = None
    dumped: list = []

    def progress(self, collection: str, documents: int) -> None:
        type(self).dumped.append(collection)
        if collection == "people" and self.moto.poll() is None:
            self.moto.terminate()
            self.moto.wait(timeout=10)


def test_unreachable_store_retries_and_the_retry_stores_the_staged_dump(target, monkeypatch):
    """Guarantee: a dump that finished but could not be stored (the S3 server went away) fails as transient,
    writes no manifest and stays staged; the retry of the run stores that staged dump (the same files, no new
    dump: a write made in between is not in it) and it verifies."""
    import json

    import boto3

    from dbops.backup.staging import staging_dir
    from dbops.core.config import load_config
    from dbops.core.manifest import Manifest
    from dbops.hooks.store import get_store
    from tests.conftest import start_moto

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AIRFLOW_CONN_AWS_MGTEST", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}))
    config_path = target.tmp / "dbops.yaml"
    config_path.write_text(config_path.read_text().replace("storage: local,", "storage: s3,").replace(
        "storage:\n", "storage:\n  s3: {url: 's3://mgbkt/prod', aws_conn_id: aws_mgtest}\n", 1))

    def s3_server():
        server = start_moto(port)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="mgbkt")
        return server

    StopStoreMidDump.moto, StopStoreMidDump.dumped = s3_server(), []
    with pytest.raises(AirflowException) as exc:
        backup(target.name, run_id="s3_gone", operator=StopStoreMidDump)
    assert not isinstance(exc.value, AirflowFailException)  # transient: Airflow retries it
    assert "dump stays staged" in str(exc.value)
    staged = staging_dir(load_config(), target.name, "s3_gone")
    staged_files = {f["name"]: f["sha256"] for f in json.loads((staged / "staged_mongo.json").read_text())["dump"]["files"]}
    assert f"{target.database}/people.bson.zst" in staged_files
    target.client[target.database].people.insert_one({"_id": "after the first attempt"})
    moto = s3_server()  # S3 is back, empty: nothing of the failed attempt is there
    try:
        StopStoreMidDump.moto, StopStoreMidDump.dumped = moto, []
        result = backup(target.name, run_id="s3_gone", operator=StopStoreMidDump)
        assert StopStoreMidDump.dumped == []  # nothing was read from the server again
        s3 = get_store(load_config().storage["s3"])
        manifest = Manifest.from_json(s3.read_bytes(f"{result['backup_id']}/{MANIFEST_NAME}"))
        assert {f.name: f.sha256 for f in manifest.files} == staged_files, "the retry stored the staged dump"
        assert manifest.tables["people"] == 600  # the dump of the first attempt, without the later write
        assert not staged.exists()
        assert verify(target.name, result["backup_id"])["verified"] is True
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def test_a_dead_runs_staged_dump_is_removed_by_the_next_backup_and_a_held_one_is_kept(target):
    """What a killed try left in staging (its lock no longer held) goes, a dead verification's fetched dump too;
    a directory a running task holds stays."""
    import fcntl

    from dbops.backup.staging import staging_dir
    from dbops.core.config import load_config

    config = load_config()
    dead, busy = (staging_dir(config, target.name, run) for run in ("dead_run", "busy_run"))
    dead_verify = config.staging_path / "verify__dbops_scratch_of_a_killed_run"
    for path in (dead, busy, dead_verify):
        path.mkdir(parents=True)
        (path / "part.bson.zst").write_bytes(b"x" * 1024)
        (path / ".lock").touch()
    with open(busy / ".lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as the task working in it holds it

        made = backup(target.name, run_id="next_run")

        assert not dead.exists()
        assert (busy / "part.bson.zst").exists()
    assert not staging_dir(config, target.name, "next_run").exists()
    assert verify(target.name, made["backup_id"])["verified"] is True
    assert not dead_verify.exists(), "the verification removed a dead verification's fetched dump"
