"""Find a backup from what a person typed: ``latest``, ``latest-verified``, a folder name or a full id."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowFailException

from dbops.backup import catalog
from dbops.backup.store_io import read_manifest
from dbops.core.errors import classify

if TYPE_CHECKING:
    from dbops.core.manifest import Manifest
    from dbops.core.store import BackupStore
    from dbops.hooks.ops import OpsDatabaseHook

LATEST = "latest"
LATEST_VERIFIED = "latest-verified"
BACKUP_ID_HELP = ("latest-verified, latest, a backup folder name such as 20261130T020000Z, "
                  "or a full id such as <target>/full/20261130T020000Z")
_FOLDER = re.compile(r"\d{8}T\d{6}Z")
_VERIFIED = {True: "verified", False: "verification failed", None: "not verified"}


def parse_backup_id(target: str, backup_id: str) -> str:
    """The full id (``<target>/full/<folder>``) of a folder name or a full id; anything else is refused."""
    folder = backup_id.strip().removeprefix(f"{target}/full/")
    if not _FOLDER.fullmatch(folder):
        raise AirflowFailException(f"backup_id {backup_id!r} is not a backup id of target {target}: use "
                                   f"{BACKUP_ID_HELP.replace('<target>', target)}")
    return f"{target}/full/{folder}"


def resolve_backup_id(ops: OpsDatabaseHook, target: str, backup_id: str) -> str:
    """The full id of ``latest`` (newest complete), ``latest-verified``, a folder name or a full id."""
    backup_id = (backup_id or "").strip()
    if backup_id not in (LATEST, LATEST_VERIFIED):
        return parse_backup_id(target, backup_id)
    with ops.transaction() as conn:
        backups = catalog.backups(conn, target)
    chosen = next((b for b in backups if backup_id == LATEST or b.verified), None)
    if chosen is None:
        raise AirflowFailException(f"target {target} has no {'verified ' if backup_id == LATEST_VERIFIED else ''}"
                                   "backup in the catalog")
    return chosen.backup_id


def load_manifest(ops: OpsDatabaseHook, store: BackupStore, target: str, backup_id: str) -> Manifest:
    """The manifest of ``backup_id``; a backup without one fails, listing the target's newest backups."""
    try:
        manifest = read_manifest(store, backup_id)
    except Exception as err:
        raise classify(err, f"reading the manifest of {backup_id} in {store.describe()} failed") from err
    if manifest is not None:
        return manifest
    with ops.transaction() as conn:
        recent = catalog.backups(conn, target)[:10]
    listed = ", ".join(f"{b.backup_id.rsplit('/', 1)[-1]} ({_VERIFIED[b.verified]})" for b in recent)
    raise AirflowFailException(f"backup {backup_id} has no manifest in {store.describe()}: it does not exist or "
                               f"is incomplete. The newest backups of {target}: {listed or 'none'}")
