"""The verification restore of a stored MongoDB dump: fetch, restore into an empty database, check
against the manifest's snapshots, replay the oplog."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from dbops.backup.verify import verification_outcome
from dbops.core.manifest import Manifest
from dbops.core.store import BackupStore
from dbops.core.streams import ChecksumMismatch
from dbops.mongo.oplog import UnsupportedOplogEntry
from dbops.mongo.restore import check_restored, dumped_options, fetch_dump, replay, restore_collections


def restore_and_check(client, store: BackupStore, manifest: Manifest, database: str, staging: Path,
                      key: bytes | None) -> dict[str, Any]:
    """Restore the stored dump into the empty ``database`` and prove it; a definite failure is an outcome
    with ``ok`` false (naming the file or collection), a transient fault an exception.

    The checks compare the restored collections with each collection's snapshot in the manifest
    (documents, order-independent hash, indexes) and the options of every collection and view with the
    dump's metadata (capped size and max, validator, collation, time-series, view definitions); then the
    oplog captured with the dump is replayed,
    bringing the database to the dump's end.
    """
    from pymongo.errors import OperationFailure

    from dbops.core.errors import is_transient

    checks: dict[str, Any] = {}
    restore_seconds = None
    started = time.monotonic()
    try:
        dump_dir = fetch_dump(store, manifest, staging, key)
        checks["checksums"] = {"ok": True, "files": len(manifest.files)}
        restore_collections(client, dump_dir, manifest, database)
        checks.update(check_restored(client, database, manifest, dumped_options(dump_dir, manifest)))
        done = replay(client, dump_dir, manifest, database)
        checks["oplog_replay"] = ({"ok": True, "entries": manifest.extra["oplog"]["entries"], **done} if done is not None
                                  else {"ok": True, "skipped": "no oplog: the dump is of a standalone server"})
        restore_seconds = round(time.monotonic() - started, 3)
    except ChecksumMismatch as err:
        checks["checksums"] = {"ok": False, "error": str(err)}
    except UnsupportedOplogEntry as err:
        checks["oplog_replay"] = {"ok": False, "error": str(err)}
    except OperationFailure as err:
        if is_transient(err):
            raise
        checks["restore"] = {"ok": False, "error": " ".join(str(err).split())[:2000]}
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return verification_outcome(checks, restore_seconds, run_amcheck=False)
