"""Replay a dump's ``oplog.bson`` with ordinary CRUD (no ``applyOps``): inserts, deletes, updates.

A transaction's writes are one ``applyOps`` command entry (in ``admin.$cmd``); its inner operations of
the dumped database are applied the same way. Collection creation and drops, index builds and drops are
replayed; any other entry (``renameCollection``, ``collMod``, ``dropDatabase``, writes to a time-series
collection's buckets, unknown ones) is refused (:func:`refusal`).

Every operation is idempotent, as oplog application must be: an insert replaces the document with
the same ``_id`` (it may already be in the dumped collection), a delete of a missing document does
nothing, an update applies its change to the document whatever it held. Updates come as ``$v: 2``
diffs in mongod's compact form (``u``/``i``/``d``/``s<field>``) or as an update description
(``updatedFields``/``removedFields``/``truncatedArrays``), as ``$v: 1`` operators, or as a whole
replacement document.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson

from dbops.mongo.dump import belongs_to, index_spec


class UnsupportedOplogEntry(Exception):
    """An oplog entry that this replay cannot apply faithfully."""


def read_bson_file(path: Path, raw: bool = False) -> Iterator[Any]:
    """The documents of a ``.bson`` file (documents back to back), decoded or as raw bytes."""
    with open(path, "rb") as fh:
        while header := fh.read(4):
            size = int.from_bytes(header, "little")
            data = header + fh.read(size - 4)
            if len(data) != size:
                raise ValueError(f"{path.name}: truncated document at the end")
            yield data if raw else bson.decode(data)


def replay_oplog(db, entries: Iterator[dict], source_db: str) -> dict[str, int]:
    """Apply ``entries`` (oplog entries of ``source_db``) to the same collections in ``db``; return what was done.

    :raises UnsupportedOplogEntry: an entry this replay cannot apply (named), so the restore is never
        silently incomplete.
    """
    done: Counter[str] = Counter()
    for entry in entries:
        _apply(db, entry, source_db, done, entry.get("ts"))
    return dict(done)


REPLAYED_COMMANDS = ("create", "drop", "createIndexes", "commitIndexBuild", "dropIndexes", "startIndexBuild",
                     "abortIndexBuild")
_BUCKETS = "system.buckets."


def refusal(entry: dict, source_db: str) -> str | None:
    """Why the replay cannot apply ``entry`` (an oplog entry of ``source_db``), or None: a command other than
    collection creation and drops and index builds (e.g. ``renameCollection``, ``collMod``), a prepared
    transaction, a write to a time-series collection's buckets (mongod logs those, not the documents), an
    unknown op. An update's diff is checked only when applied."""
    op, o = entry["op"], entry["o"]
    if op == "c":
        name = next(iter(o))
        if name == "applyOps":
            if o.get("prepare"):
                return "a prepared transaction's applyOps cannot be replayed"
            return next((why for inner in o["applyOps"] if belongs_to(inner, source_db)
                         and (why := refusal(inner, source_db))), None)
        of = o[name] if isinstance(o[name], str) else ""
        if name not in REPLAYED_COMMANDS:
            return (f"command {name!r}{f' of {of}' if of else ''} cannot be replayed; restore this backup with "
                    "mongorestore --oplogReplay, or take a backup outside the change")
        return _system_write(of)
    return _system_write(entry["ns"][len(source_db) + 1:]) or (
        None if op in ("i", "d", "u", "n") else f"unknown op {op!r}")


def _system_write(collection: str) -> str | None:
    """Why a change to ``collection`` cannot be replayed when it is a server-managed one (None otherwise)."""
    if collection.startswith(_BUCKETS):
        return (f"a write to time-series collection {collection[len(_BUCKETS):]!r} (to its buckets) cannot be "
                "replayed; take the backup while it receives no writes")
    if collection.startswith("system."):
        return (f"a change to {collection!r} (e.g. a view created, changed or dropped during the dump) cannot be "
                "replayed; take the backup outside the change")
    return None


def _apply(db, entry: dict, source_db: str, done: Counter[str], ts: Any) -> None:
    why = refusal(entry, source_db)
    if why:
        raise UnsupportedOplogEntry(f"oplog entry {ts}: {why}")
    op, ns = entry["op"], entry["ns"]
    if op == "c":
        _command(db, entry["o"], source_db, done, ts)
        return
    collection = db.get_collection(ns[len(source_db) + 1:])
    if op == "i":
        collection.replace_one({"_id": entry["o"]["_id"]}, entry["o"], upsert=True)
    elif op == "d":
        collection.delete_one({"_id": entry["o"]["_id"]})
    elif op == "u":
        for update in update_of(entry["o"]):
            if any(name.startswith("$") for name in update):
                collection.update_one(entry["o2"], update)
            else:
                collection.replace_one(entry["o2"], update)
    done[{"i": "inserts", "d": "deletes", "u": "updates", "n": "noops"}[op]] += 1


def update_of(o: dict) -> list[dict]:
    """The update(s) an ``u`` entry's ``o`` makes: a replacement document or update operators."""
    if o.get("$v") == 2:
        diff = o["diff"]
        if "updatedFields" in diff or "removedFields" in diff or "truncatedArrays" in diff:
            return _description_updates(diff)
        sets, unsets = {}, {}
        _compact_diff(diff, "", sets, unsets)
        return [u for u in ({"$set": sets} if sets else None, {"$unset": unsets} if unsets else None) if u]
    if any(k.startswith("$") for k in o):
        return [{k: v for k, v in o.items() if k != "$v"}]
    return [o]  # a whole replacement document


def _description_updates(diff: dict) -> list[dict]:
    updates = [{"$push": {t["field"]: {"$each": [], "$slice": t["newSize"]}}} for t in diff.get("truncatedArrays", [])]
    change: dict[str, Any] = {}
    if diff.get("updatedFields"):
        change["$set"] = dict(diff["updatedFields"])
    if diff.get("removedFields"):
        change["$unset"] = {name: "" for name in diff["removedFields"]}
    return updates + ([change] if change else [])


def _compact_diff(diff: dict, prefix: str, sets: dict, unsets: dict) -> None:
    if diff.get("a") is True:  # an array diff: u<index> / s<index>; a new length 'l' needs a truncation
        if "l" in diff:
            raise UnsupportedOplogEntry(f"array diff of {prefix.rstrip('.')!r} resizes the array")
        for key, value in diff.items():
            if key == "a":
                continue
            index = key[1:]
            if key[0] == "u":
                sets[f"{prefix}{index}"] = value
            else:
                _compact_diff(value, f"{prefix}{index}.", sets, unsets)
        return
    for kind in ("u", "i"):
        for name, value in diff.get(kind, {}).items():
            sets[f"{prefix}{name}"] = value
    for name in diff.get("d", {}):
        unsets[f"{prefix}{name}"] = ""
    for key, sub in diff.items():
        if key.startswith("s"):
            _compact_diff(sub, f"{prefix}{key[1:]}.", sets, unsets)


def _command(db, o: dict, source_db: str, done: Counter[str], ts: Any) -> None:
    """Collection-level commands and the ``applyOps`` of transactions (:func:`refusal` refused any other)."""
    name = next(iter(o))
    if name == "applyOps":  # a transaction's writes; only those of ``source_db`` belong to the dump
        for inner in o["applyOps"]:
            if belongs_to(inner, source_db):
                _apply(db, inner, source_db, done, ts)
        done["transactions"] += 1
        return
    if name == "create":
        if o["create"] not in db.list_collection_names():
            db.create_collection(o["create"], **{k: v for k, v in o.items() if k not in ("create", "idIndex")})
    elif name == "drop":
        db.drop_collection(o["drop"])
    elif name in ("createIndexes", "commitIndexBuild"):
        indexes = o.get("indexes") or [{k: v for k, v in o.items() if k != "createIndexes"}]
        db.command("createIndexes", o[name], indexes=[index_spec(i) for i in indexes])
    elif name == "dropIndexes":
        db.get_collection(o["dropIndexes"]).drop_index(o["index"])
    done["commands"] += 1  # startIndexBuild, abortIndexBuild: an index build takes effect at its commit
