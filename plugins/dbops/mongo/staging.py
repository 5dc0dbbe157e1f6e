"""A MongoDB dump kept in its run's staging directory until it is stored, so that a retry of the run reuses it
(the directory is :func:`dbops.backup.staging.staging_dir`'s, as for PostgreSQL dumps)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from dbops.core.manifest import FileEntry
from dbops.core.streams import file_sha256
from dbops.mongo.dump import MongoDump

_RECORD = "staged_mongo.json"


def keep_staged(staging: Path, dump: MongoDump, database: str, taken_at: datetime) -> None:
    """Record a finished dump of ``database`` in its staging directory for :func:`staged_dump`."""
    (staging / _RECORD).write_text(json.dumps({"dump": asdict(dump), "database": database,
                                               "taken_at": taken_at.isoformat()}))


def staged_dump(staging: Path, database: str) -> tuple[MongoDump, datetime] | None:
    """The dump of ``database`` an earlier attempt staged, with its start time, if every file of it is still
    intact (same size and sha256)."""
    record = staging / _RECORD
    if not record.exists():
        return None
    staged = json.loads(record.read_text())
    if staged["database"] != database:
        return None
    dump = MongoDump(**{**staged["dump"], "files": [FileEntry(**f) for f in staged["dump"]["files"]]})
    for entry in dump.files:
        path = staging / entry.name
        if not path.is_file() or path.stat().st_size != entry.bytes or file_sha256(path) != entry.sha256:
            return None
    return dump, datetime.fromisoformat(staged["taken_at"])
