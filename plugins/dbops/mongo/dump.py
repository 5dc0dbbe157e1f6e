"""Dump a MongoDB database in mongodump's directory layout, reading raw BSON (no decode/encode).

Files (each zstd-compressed, optionally encrypted, with its sha256; see :mod:`dbops.core.streams`):
``<db>/<collection>.bson`` (the documents back to back), ``<db>/<collection>.metadata.json`` (indexes
and options, canonical extended JSON; a view has only this file: its definition) and, on a replica set,
``oplog.bson``: the oplog entries of the database from the dump's start to its end, as ``mongodump --oplog``
writes them. Decompressed, the directory is what ``mongorestore --oplogReplay`` restores.

What is read: collections and time-series collections (mongod lists those as ``type: timeseries``; their
documents are read through the collection as the application sees them, their options kept); views as
definitions (``viewOn``, ``pipeline``, collation); ``system.*`` collections are skipped (managed by the
server). Any other type fails the dump naming it: nothing holding data is skipped silently.

Consistency: on a replica set each collection up to ``snapshot_max_bytes`` is read inside one snapshot
transaction (its count is the count of that snapshot); a larger one is read outside a transaction (read
concern majority), as mongod aborts transactions after ``transactionLifetimeLimitSeconds``, and its count
is of the documents read. The oplog captured beside the dump brings every collection to the state at the
dump's end when replayed (idempotent, as for ``mongodump --oplog``). A standalone server has no oplog and no snapshot transactions:
such a dump is not point-in-time consistent, and the manifest says so.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bson import Timestamp, json_util
from bson.raw_bson import RawBSONDocument
from pymongo.errors import OperationFailure
from pymongo.read_concern import ReadConcern
from pymongo.read_preferences import ReadPreference

from dbops.core.manifest import FileEntry
from dbops.core.streams import write_compressed

TOOL = "dbops mongo dump (raw BSON batches, mongodump layout)"
OPLOG_FILE = "oplog.bson"
CONSISTENT = "oplog"  # snapshot per collection + oplog from the dump's start to its end
NOT_CONSISTENT = "none"
_HASH_MODULUS = 2**128


class OplogOverflow(Exception):
    """The oplog no longer holds the dump's start: the captured oplog would have a gap."""


class UnsupportedCollection(Exception):
    """A namespace of a type the dump cannot read (named): failing beats a backup silently without it."""


# A collection dropped while it was read: NamespaceNotFound, or its cursor killed (QueryPlanKilled).
GONE_CODES = (26, 175)
DOCUMENT_TYPES = ("collection", "timeseries")  # listCollections types whose documents are dumped


def kind_of(info: dict) -> str:
    """What the dump does with a ``listCollections`` entry: ``documents``, ``view`` (its definition) or
    ``skip`` (``system.*``).

    :raises UnsupportedCollection: any other type.
    """
    kind = info.get("type", "collection")
    if info["name"].startswith("system."):
        return "skip"
    if kind in DOCUMENT_TYPES:
        return "documents"
    if kind == "view":
        return "view"
    raise UnsupportedCollection(f"{info['name']!r} is of type {kind!r}, which this dump cannot read; nothing was "
                                "stored: back it up with mongodump, or drop it if it is not needed")


def file_name(database: str, collection: str, suffix: str) -> str:
    """A collection's file in the dump, escaped like mongodump (``%`` and ``/`` percent-encoded)."""
    return f"{database}/{collection.replace('%', '%25').replace('/', '%2F')}{suffix}"


def documents(batch: bytes) -> Iterator[memoryview]:
    """The BSON documents of a raw batch (documents back to back, each starting with its int32 length)."""
    view, position = memoryview(batch), 0
    while position < len(batch):
        size = int.from_bytes(view[position:position + 4], "little")
        yield view[position:position + size]
        position += size


class DocumentHash:
    """Order-independent hash of a set of BSON documents: the sum of their blake2b digests."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0

    def add_batch(self, batch: bytes) -> None:
        for doc in documents(batch):
            self.total += int.from_bytes(hashlib.blake2b(doc, digest_size=16).digest(), "big")
            self.count += 1

    @property
    def hexdigest(self) -> str:
        return f"{self.total % _HASH_MODULUS:032x}"


def collection_hash(collection, session=None) -> DocumentHash:
    """Count and hash every document of ``collection`` as the server returns it (raw, not decoded)."""
    digest = DocumentHash()
    for batch in collection.find_raw_batches({}, session=session):
        digest.add_batch(batch)
    return digest


def index_specs(collection) -> list[str]:
    """The collection's indexes as sorted canonical JSON (name, key in its order, options; no version fields)."""
    specs = (index_spec(dict(spec), drop_version=True) for spec in collection.list_indexes())
    return sorted(json_util.dumps({k: spec[k] for k in sorted(spec)}, json_options=json_util.CANONICAL_JSON_OPTIONS)
                  for spec in specs)


def index_spec(spec: dict, drop_version: bool = False) -> dict:
    dropped = ("ns", "entryFormat", "v") if drop_version else ("ns", "entryFormat")
    return {k: v for k, v in spec.items() if k not in dropped}


@dataclass
class MongoDump:
    files: list[FileEntry]
    counts: dict[str, int]
    hashes: dict[str, str]
    indexes: dict[str, list[str]]  # canonical JSON of each index (see index_specs)
    consistency: str
    server_version: str
    seconds: float
    oplog: dict[str, Any] | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    snapshot_reads: list[str] = field(default_factory=list)  # collections read in one snapshot transaction
    views: list[str] = field(default_factory=list)  # saved as definitions (metadata.json only)
    unreplayable: list[str] = field(default_factory=list)  # why the replay would refuse entries of the oplog captured


def ts_text(ts: Timestamp) -> str:
    return f"{ts.time}.{ts.inc}"


def last_write(client) -> Timestamp:
    """The time of the replica set's last write (``hello``): where an oplog capture ends."""
    return client.admin.command("hello")["lastWrite"]["opTime"]["ts"]


@dataclass
class CaptureStart:
    """Where an oplog capture starts, which position of the server it is, and why that one."""

    ts: Timestamp
    source: str
    reason: str = ""


def capture_start(client) -> CaptureStart:
    """The replica set's majority commit point (``hello`` ``lastWrite.majorityOpTime``, else ``replSetGetStatus``
    ``optimes.lastCommittedOpTime``); the last write when the server reports neither (the reason says so).

    Snapshot and majority reads see the data as of the majority commit point, which may lag the last write:
    a capture started at the last write would miss the writes in between.
    """
    from pymongo.errors import OperationFailure

    hello = client.admin.command("hello")
    if _known(hello["lastWrite"].get("majorityOpTime", {}).get("ts")):
        return start_point(hello, {})
    try:
        status = client.admin.command("replSetGetStatus")
    except OperationFailure as err:  # e.g. not authorized: the clusterMonitor role is missing
        status = {"error": " ".join(str(err).split())[:200]}
    return start_point(hello, status)


def start_point(hello: dict, status: dict) -> CaptureStart:
    """:func:`capture_start` from a ``hello`` and a ``replSetGetStatus`` reply (``{"error": ...}`` if it failed)."""
    majority = hello["lastWrite"].get("majorityOpTime", {}).get("ts")
    if _known(majority):
        return CaptureStart(majority, "hello lastWrite.majorityOpTime")
    committed = status.get("optimes", {}).get("lastCommittedOpTime", {}).get("ts")
    if _known(committed):
        return CaptureStart(committed, "replSetGetStatus optimes.lastCommittedOpTime")
    why = f"replSetGetStatus failed: {status['error']}" if "error" in status else "nor replSetGetStatus"
    return CaptureStart(hello["lastWrite"]["opTime"]["ts"], "hello lastWrite.opTime",
                        f"the server reports no majority commit point (not in hello; {why}); writes not yet "
                        "majority-committed at the dump's start may be missing from the capture")


def _known(ts: Timestamp | None) -> bool:
    return ts is not None and ts != Timestamp(0, 0)


def dump_database(client, database: str, staging: Path, level: int, key: bytes | None, replica_set: bool,
                  progress: Callable[[str, int], None] = lambda collection, documents: None,
                  snapshot_max_bytes: int | None = None) -> MongoDump:
    """Dump ``database`` into ``staging``; ``progress(collection, documents)`` is called after each batch.

    On a replica set a collection of at most ``snapshot_max_bytes`` (None: any size) is read in one snapshot
    transaction, a larger one outside a transaction.
    """
    started = time.monotonic()
    db = client.get_database(database)
    start = capture_start(client) if replica_set else None
    files, counts, hashes, indexes, skipped, snapshot_reads, views = [], {}, {}, {}, {}, [], []
    for info in sorted(db.list_collections(), key=lambda c: c["name"]):
        name, kind = info["name"], kind_of(info)
        if kind == "skip":
            skipped[name] = "system collection, managed by the server"
            continue
        if kind == "view":
            files.append(_write_metadata(staging, database, name, level, key, {
                "indexes": [], "options": info.get("options", {}), "collectionName": name, "type": "view"}))
            views.append(name)
            continue
        try:
            dumped = _dump_collection(client, db, info, staging, level, key, replica_set, progress, snapshot_max_bytes)
        except OperationFailure as err:
            if err.code not in GONE_CODES or db.list_collection_names(filter={"name": name}):
                raise
            for suffix in (".bson", ".metadata.json"):
                (staging / f"{file_name(database, name, suffix)}.zst").unlink(missing_ok=True)
            skipped[name] = f"dropped during the dump ({(err.details or {}).get('codeName', err.code)})"
            continue
        files += dumped.files
        counts[name], hashes[name], indexes[name] = dumped.digest.count, dumped.digest.hexdigest, dumped.indexes
        if dumped.snapshot:
            snapshot_reads.append(name)
    oplog, unreplayable = None, []
    if replica_set:
        end = last_write(client)
        entry, entries, unreplayable = capture_oplog(client, database, start.ts, end, staging, level, key)
        files.append(entry)
        oplog = {"start": ts_text(start.ts), "end": ts_text(end), "entries": entries, "start_from": start.source,
                 **({"start_note": start.reason} if start.reason else {})}
    return MongoDump(files=files, counts=counts, hashes=hashes, indexes=indexes,
                     consistency=CONSISTENT if replica_set else NOT_CONSISTENT,
                     server_version=client.server_info()["version"], seconds=time.monotonic() - started,
                     oplog=oplog, skipped=skipped, snapshot_reads=snapshot_reads, views=views,
                     unreplayable=unreplayable)


@dataclass
class _DumpedCollection:
    files: list[FileEntry]
    digest: DocumentHash
    indexes: list[str]
    snapshot: bool


def _dump_collection(client, db, info: dict, staging: Path, level: int, key: bytes | None, replica_set: bool,
                     progress: Callable[[str, int], None], snapshot_max_bytes: int | None) -> _DumpedCollection:
    """Write one collection's documents and metadata (see :func:`dump_database`)."""
    name = info["name"]
    collection = db.get_collection(name)
    snapshot = replica_set and (snapshot_max_bytes is None
                                or db.command("collStats", name)["size"] <= snapshot_max_bytes)
    if replica_set and not snapshot:
        collection = collection.with_options(read_concern=ReadConcern("majority"))
    digest = DocumentHash()
    files = [_write(staging, file_name(db.name, name, ".bson"), level, key,
                    _read_collection(client, collection, digest, snapshot, progress))]
    specs = [index_spec(dict(index)) for index in collection.list_indexes()]
    metadata = {"indexes": specs, "options": info.get("options", {}), "collectionName": name,
                "type": info.get("type", "collection")}
    if "uuid" in info.get("info", {}):
        metadata["uuid"] = info["info"]["uuid"].hex()
    files.append(_write_metadata(staging, db.name, name, level, key, metadata))
    return _DumpedCollection(files, digest, index_specs(collection), snapshot)


def _write_metadata(staging: Path, database: str, name: str, level: int, key: bytes | None,
                    metadata: dict) -> FileEntry:
    text = json_util.dumps(metadata, json_options=json_util.CANONICAL_JSON_OPTIONS).encode()
    return _write(staging, file_name(database, name, ".metadata.json"), level, key, [text])


def _read_collection(client, collection, digest: DocumentHash, snapshot: bool,
                     progress: Callable[[str, int], None]) -> Iterator[bytes]:
    """The collection's raw batches, read in one snapshot transaction or (not ``snapshot``) with read
    concern majority on a replica set, plain on a standalone server.

    A reader thread fetches the next batches while this one hashes, compresses and writes.
    """
    def read(put: Callable[[bytes], None]) -> None:
        if not snapshot:
            for batch in collection.find_raw_batches({}):
                put(batch)
            return
        with client.start_session(causal_consistency=False) as session:
            with session.start_transaction(read_concern=ReadConcern("snapshot"),
                                           read_preference=ReadPreference.PRIMARY):
                for batch in collection.find_raw_batches({}, session=session):
                    put(batch)

    for batch in prefetched(read):
        digest.add_batch(batch)
        yield batch
        progress(collection.name, digest.count)


def prefetched(read: Callable[[Callable[[bytes], None]], None], depth: int = 4) -> Iterator[bytes]:
    """What ``read(put)`` puts, produced in a thread ``depth`` items ahead; its exception is raised here.

    Stopping early (the consumer failed) makes the thread's next ``put`` raise, which ends it.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: bytes) -> None:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise _Stopped

    def run() -> None:
        try:
            read(put)
            put(done)
        except _Stopped:
            pass
        except BaseException as err:  # handed to the consumer
            with contextlib.suppress(_Stopped):
                put(err)

    thread = threading.Thread(target=run, name="dbops-mongo-reader", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class _Stopped(Exception):
    """The consumer of :func:`prefetched` stopped."""


def capture_oplog(client, database: str, start: Timestamp, end: Timestamp, staging: Path, level: int,
                  key: bytes | None) -> tuple[FileEntry, int, list[str]]:
    """Write the oplog entries of ``database`` after ``start`` up to ``end`` as ``oplog.bson`` (oldest first);
    return it, the number of entries and why the replay would refuse some of them (each reason once, e.g. a
    ``renameCollection``: see :func:`dbops.mongo.oplog.refusal`).

    One read of the oplog backwards from its newest entry, stopping at the first entry at or before ``start``:
    the oplog is truncated from its oldest end only, so finding that entry proves no entry after
    ``start`` was lost. The read has no filter: entries after ``end`` are skipped here, as a filter costs
    servers that evaluate it on every entry of the oplog (the local one does) more than the few entries
    written since ``end``. The entries of the window are held in memory until written.

    :raises OplogOverflow: no entry at or before ``start`` is left (entries were lost).
    """
    from dbops.mongo.oplog import refusal  # it imports this module

    kept: list[bytes] = []
    refused: dict[str, None] = {}
    covered = False
    cursor = client.local["oplog.rs"].find_raw_batches({}, sort=[("$natural", -1)])
    with contextlib.closing(cursor):
        for batch in cursor:
            for doc in documents(batch):
                entry = RawBSONDocument(bytes(doc))
                if entry["ts"] <= start:
                    covered = True
                    break
                if entry["ts"] <= end and belongs_to(entry, database):
                    kept.append(bytes(doc))
                    if entry["op"] == "c" or ".system." in entry["ns"]:
                        refused.update({why: None} if (why := refusal(entry, database)) else {})
            if covered:
                break
    if not covered:
        raise OplogOverflow(f"the oplog no longer holds the dump's start {ts_text(start)}: it rolled over during "
                            "the dump; enlarge it (replSetResizeOplog) or dump at a quieter time")
    return _write(staging, OPLOG_FILE, level, key, [b"".join(reversed(kept))]), len(kept), list(reversed(refused))


def belongs_to(entry, database: str) -> bool:
    """Whether an oplog entry writes to ``database``: its namespace, or a transaction's ``applyOps``
    (logged in ``admin.$cmd``) with an operation in it."""
    if entry["ns"].startswith(f"{database}."):
        return True
    operations = entry["o"].get("applyOps") if entry["op"] == "c" and entry["ns"] == "admin.$cmd" else None
    return any(belongs_to(inner, database) for inner in operations or ())


def _write(staging: Path, name: str, level: int, key: bytes | None, chunks: Iterable[bytes]) -> FileEntry:
    dest = staging / f"{name}.zst"
    dest.parent.mkdir(parents=True, exist_ok=True)
    stored, raw, sha256 = write_compressed(chunks, dest, level, key)
    return FileEntry(name=f"{name}.zst", bytes=stored, sha256=sha256, raw_bytes=raw)
