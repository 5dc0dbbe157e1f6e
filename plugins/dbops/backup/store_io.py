"""A backup's life in the store: stored and read back, committed by its manifest, found, removed."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from dbops.backup import catalog
from dbops.core.manifest import MANIFEST_NAME, Manifest, backup_prefix, write_manifest
from dbops.core.streams import ChecksumMismatch

if TYPE_CHECKING:
    from dbops.core.store import BackupStore
    from dbops.hooks.ops import OpsDatabaseHook


def read_manifest(store: BackupStore, prefix: str) -> Manifest | None:
    """The manifest of the backup at ``prefix``, or None when the backup is not complete."""
    key = f"{prefix}/{MANIFEST_NAME}"
    return Manifest.from_json(store.read_bytes(key)) if store.exists(key) else None


def store_backup(store: BackupStore, manifest: Manifest, staging: Path) -> None:
    """Store the files ``manifest`` lists from ``staging``, read each back (size and sha256), then write the
    manifest, the commit marker, last; ``upload_seconds`` goes into its timings."""
    started = time.monotonic()
    for entry in manifest.files:
        key = f"{manifest.backup_id}/{entry.name}"
        store.put_file(staging / entry.name, key)
        verify_stored(store, key, entry.bytes, entry.sha256)
    manifest.timings["upload_seconds"] = round(time.monotonic() - started, 3)
    write_manifest(store, manifest)


def verify_stored(store: BackupStore, key: str, size: int, sha256: str) -> None:
    """Read back what was stored: its size and its sha256 must be the staged file's."""
    stored = store.size(key)
    if stored != size:
        raise ChecksumMismatch(f"{key}: stored {stored} bytes, staged {size}")
    if store.sha256(key) != sha256:
        raise ChecksumMismatch(f"{key}: stored sha256 differs from the staged file's {sha256}")


def uncatalogued_backup_of_run(store: BackupStore, ops: OpsDatabaseHook, prefix: str, run_id: str) -> Manifest | None:
    """A complete backup below ``prefix`` (ending with ``/``) that run ``run_id`` stored but never recorded in the
    catalog (an earlier attempt killed in between), recorded now; None when there is none."""
    folders = sorted({key.rsplit("/", 1)[0] for key in store.list_keys(prefix) if key.endswith(f"/{MANIFEST_NAME}")})
    with ops.transaction() as conn:
        unknown = [folder for folder in folders if not catalog.is_catalogued(conn, folder)]
    for folder in unknown:
        stored = read_manifest(store, folder)
        if stored is not None and stored.run_id == run_id:
            with ops.transaction() as conn:
                catalog.record_backup(conn, stored)
            return stored
    return None


def remove_incomplete(store: BackupStore, prefix: str) -> dict[str, int]:
    """Delete the backup folders below ``prefix`` that have no manifest (leftovers of failed attempts);
    return each removed folder with its number of files.

    ``prefix`` is a backup folder, or ends with ``/`` and holds backup folders; a backup's files may lie in
    subfolders of its folder (a MongoDB dump's ``<db>/<collection>.bson``).
    """
    folders: dict[str, list[str]] = {}
    for key in store.list_keys(prefix):
        folder = prefix + key[len(prefix):].split("/", 1)[0] if prefix.endswith("/") else prefix
        folders.setdefault(folder, []).append(key[len(folder) + 1:])
    removed = {}
    for folder, names in folders.items():
        if MANIFEST_NAME not in names:
            for name in names:
                store.delete(f"{folder}/{name}")
            removed[folder] = len(names)
    return removed


def free_snapshot_time(store: BackupStore, ops: OpsDatabaseHook, target: str) -> datetime:
    """Now, to the second, that no full backup of ``target`` is named by yet, in the store or in the
    catalog (a deleted backup's name is never reused); the next free second otherwise."""
    while True:
        now = datetime.now(timezone.utc)
        backup_id = backup_prefix(target, "full", now)
        if not store.list_keys(backup_id):
            with ops.transaction() as conn:
                if not catalog.is_catalogued(conn, backup_id):
                    return now.replace(microsecond=0)
        time.sleep(1 - datetime.now(timezone.utc).microsecond / 1_000_000)


def delete_backup(ops: OpsDatabaseHook, store: BackupStore, backup_id: str) -> bool:
    """Delete a backup or export: catalog ``deleting``, manifest first (it stops being complete), files,
    catalog ``deleted``. An interrupted deletion never leaves a half backup that looks complete.
    Return False when it was already deleted."""
    with ops.transaction() as conn:
        if not catalog.mark_deleting(conn, backup_id):
            return False
    store.delete(f"{backup_id}/{MANIFEST_NAME}")
    for key in store.list_keys(backup_id):
        store.delete(key)
    with ops.transaction() as conn:
        catalog.mark_deleted(conn, backup_id)
    return True
