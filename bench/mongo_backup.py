"""MongoDB backup and verification restore against their limits, on the same data, interleaved.

A database ``bench_mongo_<N>`` on the local MongoDB-compatible server is filled once by
scripts/mongo_demo_data.py (reused while the marker in ``dbops_bench_marks`` says it is complete at that
size; ``chatdb`` is never touched). Then, per round:

- ours dump: ``dump_database`` (snapshot transaction per collection, raw BSON into zstd at the demo
  target chatdb's level + sha256 per file, metadata, oplog capture) into a staging directory;
- the read limit: every collection read as raw BSON batches and discarded;
- ours verify: ``restore_and_check`` from a local store (fetch with size + sha256, decompress, insert,
  indexes, documents + hash + index check, oplog replay) into a fresh database;
- a plain re-insert of the same BSON with ``insert_many`` (raw documents, batches of 5000) into another.

``dump_bytes`` is compared with the same BSON through gzip -6 (zlib, in process). The order of each
pair alternates per round. ``oplog_capture_seconds`` (no baseline) is what one read of the oplog costs
on this server, part of every replica-set dump: the local server reads and decodes its whole oplog (up to
100 000 entries) for any oplog query, under its storage lock, where mongod reads from the end; so it weighs on
``dump_limit_seconds`` here (the capture sends no filter, which this server would evaluate on every entry). Medians over rounds; one JSON object per metric on stdout, progress on stderr.

    python bench/mongo_backup.py [--size-mb 20] [--rounds 3] [--uri-env MONGO_BENCH_URI]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from scripts.bench_output import emit, json_stdout  # noqa: E402
from scripts.stack.mongo import mongo_client, start_mongo, stop_mongo  # noqa: E402

from dbops.core.config import DEFAULT_CONFIG_PATH, load_config  # noqa: E402

LEVEL = load_config(DEFAULT_CONFIG_PATH).targets["chatdb"].backup.compression_level  # the demo target's


def progress(message: str) -> None:
    print(f"[bench mongo_backup] {message}", file=sys.stderr, flush=True)


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def prepare_database(client, size_mb: int) -> str:
    from scripts.mongo_demo_data import generate

    name = f"bench_mongo_{size_mb}"
    marks = client["dbops_bench_marks"]["complete"]
    if marks.find_one({"_id": name}) and "chat_conversations" in client[name].list_collection_names():
        progress(f"reusing database {name}")
        return name
    progress(f"loading about {size_mb} MB of demo documents into {name}")
    generate(client[name], size_mb)
    marks.replace_one({"_id": name}, {"_id": name}, upsert=True)
    return name


def read_limit(client, database: str) -> int:
    """Every collection as raw BSON batches, discarded; the bytes read."""
    db = client[database]
    return sum(len(batch) for name in db.list_collection_names() for batch in db[name].find_raw_batches({}))


def gzip_bytes(client, database: str) -> int:
    """The same BSON through gzip -6."""
    db = client[database]
    total = 0
    for name in db.list_collection_names():
        gz = zlib.compressobj(6, zlib.DEFLATED, 31)
        total += sum(len(gz.compress(batch)) for batch in db[name].find_raw_batches({})) + len(gz.flush())
    return total


def oplog_capture_seconds(client, database: str) -> float:
    """One oplog capture over an empty window (the fixed cost of a replica-set dump)."""
    from dbops.mongo.dump import capture_oplog, last_write

    with tempfile.TemporaryDirectory() as tmp:
        position = last_write(client)
        seconds, _ = timed(capture_oplog, client, database, position, position, Path(tmp), LEVEL, None)
    return seconds


def plain_insert(client, dump_dir: Path, source: str, dest: str) -> None:
    from bson.raw_bson import RawBSONDocument

    from dbops.mongo.oplog import read_bson_file

    db = client[dest]
    for path in sorted((dump_dir / source).glob("*.bson")):
        batch = []
        for raw in read_bson_file(path, raw=True):
            batch.append(RawBSONDocument(raw))
            if len(batch) == 5000:
                db[path.stem].insert_many(batch, ordered=False)
                batch = []
        if batch:
            db[path.stem].insert_many(batch, ordered=False)


def manifest_of(dump, database: str, prefix: str):
    from dbops.core.manifest import Manifest

    return Manifest(backup_id=prefix, target="bench", kind="full", logical_date="", run_id="bench", location=prefix,
                    server_version=dump.server_version, tool="bench", snapshot_id="", files=dump.files,
                    tables=dump.counts, constraints=[], timings={}, compression={},
                    extra={"database": database, "hashes": dump.hashes, "index_specs": dump.indexes,
                           "oplog": dump.oplog, "consistency": dump.consistency})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="MongoDB backup benchmark")
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--uri-env", metavar="VAR",
                        help="the name of an environment variable holding the URI of another server (e.g. a mongod "
                             "replica set) to run against instead of the local one; the URI stays out of argv")
    args = parser.parse_args(argv)
    out = json_stdout()
    if args.uri_env:
        import os

        import pymongo

        run(out, args.size_mb, args.rounds, pymongo.MongoClient(os.environ[args.uri_env]))
        return 0
    started = start_mongo()
    try:
        run(out, args.size_mb, args.rounds, mongo_client())
    finally:
        if started:
            stop_mongo()
    return 0


def run(out, size_mb: int, rounds: int, client) -> None:
    from dbops.core.config import StorageConfig
    from dbops.core.streams import read_decompressed
    from dbops.hooks.store import get_store
    from dbops.mongo.dump import dump_database
    from dbops.mongo.verify import restore_and_check

    database = prepare_database(client, size_mb)
    ours, limit, verify, insert, dump_bytes = [], [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="bench_mongo_") as tmp:
        tmp = Path(tmp)
        for round_ in range(rounds):
            staging = tmp / "staging"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            pair = [("ours", lambda: dump_database(client, database, staging, LEVEL, None, True)),
                    ("limit", lambda: read_limit(client, database))]
            for label, fn in pair if round_ % 2 == 0 else reversed(pair):
                seconds, result = timed(fn)
                (ours if label == "ours" else limit).append(seconds)
                if label == "ours":
                    dump = result
            dump_bytes = sum(f.bytes for f in dump.files)
            store = get_store(StorageConfig(url=str(tmp / "store")))
            prefix = f"bench/full/{round_}"
            for entry in dump.files:
                store.put_file(staging / entry.name, f"{prefix}/{entry.name}")
            plain_dir = tmp / "plain"
            shutil.rmtree(plain_dir, ignore_errors=True)
            for entry in dump.files:
                dest = plain_dir / entry.name.removesuffix(".zst")
                dest.parent.mkdir(parents=True, exist_ok=True)
                read_decompressed(staging / entry.name, dest, entry.sha256)
            manifest = manifest_of(dump, database, prefix)
            pair = [("ours", lambda: restore_and_check(client, store, manifest, "bench_mongo_verify", tmp / "v", None)),
                    ("insert", lambda: plain_insert(client, plain_dir, database, "bench_mongo_insert"))]
            for label, fn in pair if round_ % 2 == 0 else reversed(pair):
                client.drop_database("bench_mongo_verify" if label == "ours" else "bench_mongo_insert")
                seconds, result = timed(fn)
                if label == "ours" and not result["ok"]:
                    raise SystemExit(f"the verification failed: {result['error']}")
                (verify if label == "ours" else insert).append(seconds)
            progress(f"round {round_ + 1}: dump {ours[-1]:.1f} s (read limit {limit[-1]:.1f} s), verify {verify[-1]:.1f} s "
                     f"(insert_many {insert[-1]:.1f} s)")
        for name in ("bench_mongo_verify", "bench_mongo_insert"):
            client.drop_database(name)
    gz = gzip_bytes(client, database)
    capture = oplog_capture_seconds(client, database)
    emit(out, "mongo_backup", size_mb, "dump_limit_seconds", statistics.median(ours), "s",
         "raw BSON read, discarded", statistics.median(limit))
    emit(out, "mongo_backup", size_mb, "dump_bytes", dump_bytes, "bytes", "gzip -6 of the same BSON", gz)
    emit(out, "mongo_backup", size_mb, "verify_seconds", statistics.median(verify), "s",
         "insert_many of the same BSON", statistics.median(insert))
    emit(out, "mongo_backup", size_mb, "oplog_capture_seconds", capture, "s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
