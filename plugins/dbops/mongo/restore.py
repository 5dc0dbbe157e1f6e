"""Restore a stored MongoDB dump: fetch (checksums), collections with options and indexes, oplog
replay; the checks against the manifest; the swap of an on-demand restore into its database."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from airflow.sdk.exceptions import AirflowFailException
from bson import CodecOptions, json_util
from bson.raw_bson import RawBSONDocument

from dbops.backup.restore import fetch_file
from dbops.core.manifest import Manifest
from dbops.core.store import BackupStore
from dbops.mongo.dump import OPLOG_FILE, collection_hash, documents, file_name, index_spec, index_specs
from dbops.mongo.oplog import read_bson_file, replay_oplog

INSERT_BATCH = 5000
NEVER_REPLACED = ("admin", "local", "config")
RESTORING, REPLACED = "__dbops_restoring", "__dbops_replaced"
_BAD_DATABASE_CHARS = re.compile(r'[/\\. "$*<>:|?\x00]')
_RAW = CodecOptions(document_class=RawBSONDocument)


def fetch_dump(store: BackupStore, manifest: Manifest, staging: Path, key: bytes | None) -> Path:
    """Download every file of the dump into ``staging`` (size and sha256 checked), decompressed."""
    for entry in manifest.files:
        fetch_file(store, manifest.backup_id, entry, staging, key)
    return staging


def dumped_options(dump_dir: Path, manifest: Manifest) -> dict[str, dict]:
    """The options of every collection and view of the dump (``.metadata.json``), by name."""
    source = manifest.extra["database"]
    return {name: json_util.loads((dump_dir / file_name(source, name, ".metadata.json")).read_text()).get("options", {})
            for name in [*manifest.tables, *manifest.extra.get("views", [])]}


def restore_collections(client, dump_dir: Path, manifest: Manifest, database: str) -> None:
    """Create every collection of the dump in ``database`` with its options, insert its documents as they
    were dumped (raw BSON), then build its indexes; then create its views."""
    source = manifest.extra["database"]
    db = client.get_database(database, codec_options=_RAW)
    for name in manifest.tables:
        metadata = json_util.loads((dump_dir / file_name(source, name, ".metadata.json")).read_text())
        db.create_collection(name, **metadata.get("options", {}))
        _insert(db.get_collection(name), (RawBSONDocument(raw) for raw in
                                          read_bson_file(dump_dir / file_name(source, name, ".bson"), raw=True)))
        _create_indexes(db, name, metadata["indexes"])
    for name, options in dumped_options(dump_dir, manifest).items():
        if name not in manifest.tables:
            db.create_collection(name, **options)


def _insert(collection, documents: Iterable[RawBSONDocument]) -> None:
    """Insert ``documents`` as they are (raw BSON, no validation) in batches."""
    batch: list[RawBSONDocument] = []
    for document in documents:
        batch.append(document)
        if len(batch) == INSERT_BATCH:
            collection.insert_many(batch, ordered=False, bypass_document_validation=True)
            batch = []
    if batch:
        collection.insert_many(batch, ordered=False, bypass_document_validation=True)


def _create_indexes(db, name: str, specs: Iterable[dict]) -> None:
    indexes = [index_spec(dict(spec)) for spec in specs if spec["name"] != "_id_"]
    if indexes:
        db.command("createIndexes", name, indexes=indexes)


def replay(client, dump_dir: Path, manifest: Manifest, database: str) -> dict[str, int] | None:
    """Replay the dump's oplog into ``database`` (None when the dump has none: a standalone server's)."""
    if not any(entry.name == f"{OPLOG_FILE}.zst" for entry in manifest.files):
        return None
    return replay_oplog(client.get_database(database), read_bson_file(dump_dir / OPLOG_FILE),
                        manifest.extra["database"])


def collection_options(client, database: str) -> dict[str, dict]:
    """The options (capped size and max, validator, collation, time-series, a view's definition …) of every
    collection and view of ``database``, by name (``system.*`` left out)."""
    return {info["name"]: info.get("options", {}) for info in client.get_database(database).list_collections()
            if not info["name"].startswith("system.")}


def options_mismatch(expected: dict[str, dict], found: dict[str, dict]) -> dict[str, dict]:
    """The collections and views whose options in ``found`` are not ``expected`` (missing or extra ones too):
    name -> expected and found, as relaxed extended JSON (a number is equal whatever its BSON type)."""
    def text(options: dict | None) -> dict | None:
        return None if options is None else {
            k: json_util.dumps(v, json_options=json_util.RELAXED_JSON_OPTIONS) for k, v in options.items()}

    return {name: {"expected": text(expected.get(name)), "restored": text(found.get(name))}
            for name in sorted(set(expected) | set(found)) if text(expected.get(name)) != text(found.get(name))}


def check_restored(client, database: str, manifest: Manifest, options: dict[str, dict]) -> dict[str, Any]:
    """Compare ``database`` with the dump's snapshots: documents per collection, their hash, the indexes, and
    the ``options`` of every collection and view (views hold no documents)."""
    db = client.get_database(database, codec_options=_RAW)
    found = collection_options(client, database)
    views = {name for name, o in found.items() if "viewOn" in o}
    restored = {}
    for name in sorted((set(found) - views) | set(manifest.tables)):
        digest = collection_hash(db.get_collection(name))
        restored[name] = (digest.count, digest.hexdigest)
    expected_hashes = manifest.extra["hashes"]
    counts = {name: {"expected": manifest.tables.get(name), "restored": restored[name][0]}
              for name in restored if manifest.tables.get(name) != restored[name][0]}
    hashes = sorted(name for name in restored if expected_hashes.get(name) != restored[name][1])
    indexes = {name: {"expected": specs, "restored": restored_specs}
               for name, specs in manifest.extra["index_specs"].items()
               if (restored_specs := index_specs(db.get_collection(name))) != specs}
    return {
        "row_counts": {"ok": not counts, "collections": len(manifest.tables),
                       "documents": sum(count for count, _ in restored.values()), "mismatched": counts},
        "document_hashes": {"ok": not hashes, "collections": len(expected_hashes), "mismatched": hashes},
        "indexes": {"ok": not indexes, "count": sum(len(s) for s in manifest.extra["index_specs"].values()),
                    "mismatched": indexes},
        "options": options_check(options, found),
    }


def options_check(expected: dict[str, dict], found: dict[str, dict]) -> dict[str, Any]:
    mismatched = options_mismatch(expected, found)
    return {"ok": not mismatched, "collections": len(expected), "views": sum("viewOn" in o for o in expected.values()),
            "mismatched": mismatched}


def check_database_name(name: str, target_database: str, existing: list[str]) -> None:
    """Refuse a name MongoDB rejects, too long for the temporary names, a database never replaced, or one that
    differs only in case from the target's or an ``existing`` database (mongod refuses such twins, but only
    when the restore's collections move in, at the end)."""
    if not name or _BAD_DATABASE_CHARS.search(name) or len(name.encode()) > 63 - len(RESTORING):
        raise AirflowFailException(f"database {name!r}: use at most {63 - len(RESTORING)} bytes and none of "
                                   "/\\. \"$*<>:|? (MongoDB's rule, with room for the temporary name)")
    folded = name.lower()
    if folded in NEVER_REPLACED or folded == target_database.lower():
        raise AirflowFailException(f"database {name!r} is never restored into (admin, local, config and the target's "
                                   f"own database {target_database!r}, in any letter case); restore into a new "
                                   "database and switch the application to it")
    twin = next((other for other in existing if other != name and other.lower() == folded), None)
    if twin is not None:
        raise AirflowFailException(f"database {name!r} differs only in letter case from the existing database "
                                   f"{twin!r}, which MongoDB refuses; restore into {twin!r} (with overwrite) or "
                                   "into a name of its own")


class SwapUndone(Exception):
    """A swap that failed and was undone; the message says what the check of the database found. The
    original error is the ``__cause__``."""


class SwapStuck(AirflowFailException):
    """A swap that failed and could not be undone: the message says which collections are where and how to
    put them back."""


def swap_into(client, temporary: str, database: str) -> str | None:
    """Give ``temporary``'s collections and views to ``database``; its former ones move aside first into
    ``<database>__dbops_replaced`` (returned, or None when ``database`` was empty), dropped by the caller.

    Each moves with its options (:func:`_move`): renamed, or, where a rename would lose them, copied.
    If a move fails, every move done is undone and ``database``'s collections are listed again:
    :class:`SwapUndone` says what that check found. If an undo fails too (e.g. the application created a
    collection of the same name meanwhile), :class:`SwapStuck` says where each collection is. Nothing is
    dropped here but what was moved (a copied collection or a view once it is in place in its destination).
    A ``<database>__dbops_replaced`` that holds collections (left by a swap that could not be undone) is never
    overwritten: the restore stops before moving anything.
    """
    retired = f"{database}{REPLACED}"
    if client.get_database(retired).list_collection_names():
        raise AirflowFailException(
            f"database {retired} holds collections moved aside by an interrupted restore: move each back into "
            f"{database} (renameCollection; first drop or rename a collection of the same name that was created "
            f"in {database} since, once you know it holds nothing you need) or drop {retired}, then run again")
    old, new = _namespaces(client, database), _namespaces(client, temporary)
    keeps = renames_keep_options(client, temporary, retired) if any(_copied_unless_kept(i) for i in old + new) else True
    moves = [(database, retired, info) for info in old] + [(temporary, database, info) for info in new]
    done: list[tuple[str, str, dict]] = []
    try:
        for source, dest, info in moves:
            _move(client, source, dest, info, keeps)
            done.append((source, dest, info))
    except Exception as err:
        stuck = []
        for source, dest, info in reversed(done):
            try:
                _move(client, dest, source, info, keeps)
            except Exception as undo_err:
                stuck.append((source, dest, info["name"], undo_err))
        if stuck:
            raise SwapStuck(_stuck_message(database, retired, stuck, err)) from err
        raise SwapUndone(_check_undone(client, database, [info["name"] for info in old])) from err
    return retired if old else None


def _namespaces(client, database: str) -> list[dict]:
    """The ``listCollections`` entries of ``database``'s collections and views (``system.*`` are the server's)."""
    return [info for info in client.get_database(database).list_collections()
            if not info["name"].startswith("system.")]


def _copied_unless_kept(info: dict) -> bool:
    """A collection with options: renamed only where renameCollection keeps them."""
    return info.get("type", "collection") == "collection" and bool(info.get("options"))


RENAME_PROBE = "__dbops_rename_probe"


def renames_keep_options(client, source: str, dest: str) -> bool:
    """Whether renameCollection from ``source`` into ``dest`` keeps a collection's options on this server
    (mongod does; SecantusDB drops them): probed with an empty capped collection, dropped afterwards."""
    client.get_database(source).create_collection(RENAME_PROBE, capped=True, size=4096)
    try:
        _rename(client, source, dest, RENAME_PROBE)
        return bool(collection_options(client, dest).get(RENAME_PROBE, {}).get("capped"))
    finally:
        client.get_database(source).drop_collection(RENAME_PROBE)
        client.get_database(dest).drop_collection(RENAME_PROBE)


def _move(client, source: str, dest: str, info: dict, renames_keep: bool) -> None:
    """Move one collection or view from ``source`` to ``dest`` with its options: a view is created in ``dest``
    with its definition, then dropped from ``source``; a time-series collection (mongod cannot rename one), or
    a collection with options where renames lose them, is copied (:func:`_copy`); any other is renamed."""
    name, options = info["name"], info.get("options", {})
    if info.get("type") == "view":
        client.get_database(dest).create_collection(name, **options)
        client.get_database(source).drop_collection(name)
    elif info.get("type") == "timeseries" or (_copied_unless_kept(info) and not renames_keep):
        _copy(client, source, dest, name, options)
    else:
        _rename(client, source, dest, name)


def _copy(client, source: str, dest: str, name: str, options: dict) -> None:
    """Create collection ``name`` in ``dest`` with its options, insert its documents (raw, in natural order),
    build its indexes, then drop it from ``source``. A copy that fails drops what it copied (the source is
    intact) and raises."""
    original = client.get_database(source, codec_options=_RAW).get_collection(name)
    db = client.get_database(dest, codec_options=_RAW)
    db.create_collection(name, **options)
    try:
        _insert(db.get_collection(name), (RawBSONDocument(bytes(doc)) for batch in original.find_raw_batches({})
                                          for doc in documents(batch)))
        _create_indexes(db, name, original.list_indexes())
    except Exception:
        with contextlib.suppress(Exception):
            db.drop_collection(name)
        raise
    original.drop()


def _stuck_message(database: str, retired: str, stuck: list, err: Exception) -> str:
    """Where the collections a failed undo left are, and how to put them back."""
    places = []
    for source, dest, name, undo_err in stuck:
        kind = "former" if source == database else "restored"
        places.append(f"{kind} collection {name!r} is in {dest} (moving it back to {source} failed: "
                      f"{' '.join(str(undo_err).split())[:200]})")
    return (f"moving collections into {database} failed ({' '.join(str(err).split())[:200]}) and undoing the moves "
            f"failed too: {database} does NOT hold its former collections. " + "; ".join(places) + ". Nothing was "
            f"dropped. To put {database} back: for each former collection in {retired}, drop or rename the collection "
            f"of the same name in {database} first (restored, or created since), then renameCollection it back; then "
            f"drop {retired} (the next restore refuses to run while it holds collections)")


def _check_undone(client, database: str, old: list[str]) -> str:
    """What listing ``database`` after an undo shows, against its collections before the swap."""
    try:
        now = {info["name"] for info in _namespaces(client, database)}
    except Exception as err:
        return (f"the moves were undone, but {database} could not be listed to check it "
                f"({' '.join(str(err).split())[:200]})")
    missing, extra = sorted(set(old) - now), sorted(now - set(old))
    if missing:
        return (f"the moves were undone, yet {database} lacks former collections {missing} (dropped or renamed by "
                "someone else during the restore?)")
    return (f"the moves were undone and checked: {database} holds its {len(old)} former collections again"
            + (f", and {extra} created by someone else during the restore" if extra else ""))


def _rename(client, source: str, dest: str, name: str) -> None:
    client.admin.command("renameCollection", f"{source}.{name}", to=f"{dest}.{name}", dropTarget=False)
