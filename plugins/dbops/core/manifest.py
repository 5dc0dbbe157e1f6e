"""The manifest: written last beside a backup's files, it is the commit marker of the backup.

A backup exists only once its manifest does. It records what a restore needs to trust the files
(sizes, sha256), what the verification compares against (per-table row counts and constraints taken
in the dump's own snapshot), and how the backup came to be (versions, timings, run).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dbops.core.store import BackupStore

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


class IncompleteBackup(Exception):
    """A file the manifest lists is missing from the store or has another size."""


def backup_prefix(target: str, kind: str, moment: datetime, tenant: str | None = None) -> str:
    """Store key prefix of a backup, ``<target>/<kind>/[<tenant>/]<moment, UTC>``.

    A full backup is named by its snapshot time, a tenant export by its run's date.
    """
    scope = f"{kind}/{tenant}" if tenant else kind
    return f"{target}/{scope}/{moment.strftime('%Y%m%dT%H%M%SZ')}"


@dataclass(frozen=True)
class FileEntry:
    name: str
    bytes: int
    sha256: str
    raw_bytes: int


@dataclass
class Manifest:
    backup_id: str
    target: str
    kind: str
    logical_date: str
    run_id: str
    location: str
    server_version: str
    tool: str
    snapshot_id: str
    files: list[FileEntry]
    tables: dict[str, int]
    constraints: list[str]
    timings: dict[str, float]
    compression: dict[str, Any]
    encryption: dict[str, Any] | None = None
    tenant_id: str | None = None
    verification: dict[str, Any] | None = None
    taken_at: str | None = None  # snapshot time (UTC, ISO 8601): the data is at least this new
    covers: str | None = None  # logical date of the run it was taken for; None for a run without one
    run_type: str | None = None  # Airflow's run type: scheduled, backfill, manual, ...
    storage: str | None = None  # the key of dbops.yaml ``storage:`` that holds it
    format_version: int = FORMAT_VERSION
    # Constraints of ``constraints`` that were NOT VALID in the snapshot. None in manifests written before
    # the names were schema-qualified (``schema.table type name``, independent of the search_path).
    not_validated: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def total_rows(self) -> int:
        return sum(self.tables.values())

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        raw = json.loads(data)
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported manifest format_version {raw.get('format_version')!r}")
        raw["files"] = [FileEntry(**f) for f in raw["files"]]
        return cls(**raw)


def write_manifest(store: BackupStore, manifest: Manifest) -> None:
    """Write the manifest, the backup's commit marker, once every file it lists is stored with its size.

    :raises IncompleteBackup: a file is missing or has another size; nothing is written.
    """
    for entry in manifest.files:
        size = store.size(f"{manifest.backup_id}/{entry.name}")
        if size != entry.bytes:
            found = "missing" if size is None else f"{size} bytes"
            raise IncompleteBackup(f"backup {manifest.backup_id}: {entry.name} is {found} in the store, the "
                                   f"manifest says {entry.bytes} bytes; its manifest is not written")
    store.put_bytes(f"{manifest.backup_id}/{MANIFEST_NAME}", manifest.to_json())
