"""A physical base backup of a target's cluster, full or incremental, streamed compressed into one file.

``pg_basebackup -D - -Ft -X fetch`` writes the cluster as one tar stream to a pipe, the WAL it needs and
PostgreSQL's ``backup_manifest`` included; Python compresses the stream (zstd, multi-threaded, sha256 of
what is written) and, in a second thread reading the same bytes, takes ``backup_manifest`` out of it: an
incremental backup of the next run needs it as ``--incremental``, and its WAL ranges give the start and
stop LSN.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dbops.core.processes import DEFAULT_TIMEOUT, supervised, tool_failed
from dbops.core.streams import CHUNK, write_compressed

if TYPE_CHECKING:
    from dbops.backup.pitr_catalog import BaseBackup
    from dbops.core.store import BackupStore
    from dbops.hooks.postgres import DbopsPostgresHook
    from dbops.hooks.tools import PgTool

ARCHIVE = "base.tar.zst"
BACKUP_MANIFEST = "backup_manifest"


@dataclass(frozen=True)
class BaseBackupResult:
    path: Path
    bytes: int
    raw_bytes: int
    sha256: str
    backup_manifest: bytes
    start_lsn: str
    stop_lsn: str
    timeline: int
    seconds: float


def check_single_tablespace(hook: DbopsPostgresHook, target: str) -> None:
    """Fail, saying so, on a cluster with tablespaces: ``pg_basebackup`` writes one tablespace to a stream."""
    from airflow.sdk.exceptions import AirflowFailException

    names = [row[0] for row in hook.get_records(
        "SELECT spcname FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY 1")]
    if names:
        raise AirflowFailException(
            f"the cluster of {target} has tablespaces ({', '.join(names)}): pg_basebackup can stream only a cluster "
            "without them to the store. Point-in-time recovery of this target is not available; remove its pitr "
            "section or move the tables to pg_default")


def take_basebackup(tool: PgTool, env: dict[str, str], dest: Path, level: int, parent_manifest: Path | None = None,
                    timeout: float = DEFAULT_TIMEOUT, key: bytes | None = None) -> BaseBackupResult:
    """Take a base backup into ``dest`` (zstd tar, encrypted with ``key`` when given); incremental on
    ``parent_manifest`` when given.

    pg_basebackup is killed after ``timeout`` seconds and at once when compressing fails.
    """
    started = time.monotonic()
    args = [tool.path, "--pgdata=-", "--format=tar", "--wal-method=fetch", "--checkpoint=fast", "--no-password",
            "--label=dbops", "--manifest-checksums=CRC32C"]
    if parent_manifest is not None:
        args.append(f"--incremental={parent_manifest}")
    found: dict[str, bytes | BaseException] = {}
    read_end, write_end = os.pipe()
    reader = threading.Thread(target=_manifest_from_tar, args=(os.fdopen(read_end, "rb"), found), daemon=True)
    reader.start()
    stderr: list[bytes] = []
    try:
        with os.fdopen(write_end, "wb") as tee, supervised(args, timeout, env=env, stdout=subprocess.PIPE,
                                                            stderr=subprocess.PIPE) as proc:
            errors = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
            errors.start()

            def chunks():
                for chunk in iter(lambda: proc.stdout.read(CHUNK), b""):
                    tee.write(chunk)
                    yield chunk

            stored, raw, sha = write_compressed(chunks(), dest, level, key)
            returncode = proc.wait()
            errors.join()
        reader.join()
        if returncode != 0:
            raise tool_failed("pg_basebackup", returncode, b"".join(stderr).decode(errors="replace"))
        manifest = found.get(BACKUP_MANIFEST)
        if not isinstance(manifest, bytes):
            raise OSError(f"pg_basebackup wrote no {BACKUP_MANIFEST} into its tar stream ({found.get('error')})")
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    start_lsn, stop_lsn, timeline = wal_range(manifest)
    return BaseBackupResult(dest, stored, raw, sha, manifest, start_lsn, stop_lsn, timeline,
                            time.monotonic() - started)


def _manifest_from_tar(stream: BinaryIO, found: dict) -> None:
    """Read the tar stream to its end, keeping the ``backup_manifest`` member's content."""
    with stream:
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for member in tar:
                    if member.name == BACKUP_MANIFEST:
                        found[BACKUP_MANIFEST] = tar.extractfile(member).read()
        except Exception as err:  # reported by the caller when the manifest is missing
            found["error"] = err
        while stream.read(CHUNK):  # never leave the writer blocked on a full pipe
            pass


def wal_range(backup_manifest: bytes) -> tuple[str, str, int]:
    """(start LSN, stop LSN, timeline) of a backup from its ``backup_manifest``."""
    ranges = json.loads(backup_manifest)["WAL-Ranges"]
    return ranges[0]["Start-LSN"], ranges[-1]["End-LSN"], int(ranges[-1]["Timeline"])


def choose_parent(backups: list[BaseBackup], store: BackupStore, full_schedule: str, period: datetime,
                  force_full: bool) -> tuple[BaseBackup | None, str]:
    """The parent of an incremental backup for the run of ``period``, or None for a full; and why.

    A full is taken when forced, when none exists, when ``full_schedule`` ticked (at or before
    ``period``) since the newest full was taken, or when the newest backup (the would-be parent) was not
    verified by a recovery test or a file of its chain is missing from the store or has another size
    (:func:`chain_problem`).
    """
    from croniter import croniter

    from dbops.backup.pitr_catalog import FULL

    if force_full:
        return None, "a full backup was asked for"
    fulls = [b for b in backups if b.kind == FULL]
    if not fulls:
        return None, "no full base backup exists yet"
    tick = croniter(full_schedule, period + timedelta(seconds=1)).get_prev(datetime)
    if fulls[0].taken_at < tick:
        return None, f"full_schedule {full_schedule!r} ticked at {tick.isoformat()} after the newest full " \
                     f"{fulls[0].backup_id}"
    parent = backups[0]
    problem = chain_problem(backups, store, parent.backup_id)
    if problem:
        return None, f"incremental refused: the chain of its parent {parent.backup_id} cannot be recovered: {problem}"
    if parent.verified is not True:
        state = "failed its recovery test" if parent.verified is False else "is not verified by a recovery test yet"
        return None, f"incremental refused: its parent {parent.backup_id} {state}"
    return parent, f"on top of {parent.backup_id} (verified)"


def chain_problem(backups: list[BaseBackup], store: BackupStore, backup_id: str) -> str | None:
    """What makes the chain (full and incrementals) of ``backup_id`` unrecoverable from the store: a backup of
    it missing from the catalog, or a file its manifest lists (the manifest too) missing or of another size;
    None when every file is there with its recorded size."""
    from dbops.backup.pitr_catalog import chain_of
    from dbops.core.manifest import MANIFEST_NAME

    try:
        chain = chain_of(backups, backup_id)
    except LookupError as err:
        return str(err)
    for backup in chain:
        if store.size(f"{backup.backup_id}/{MANIFEST_NAME}") is None:
            return f"{backup.backup_id}/{MANIFEST_NAME} is missing from {store.describe()}"
        for entry in backup.manifest.files:
            size = store.size(f"{backup.backup_id}/{entry.name}")
            if size != entry.bytes:
                found = "missing" if size is None else f"{size} bytes"
                return (f"{backup.backup_id}/{entry.name} is {found} in {store.describe()}, its manifest says "
                        f"{entry.bytes} bytes")
    return None
