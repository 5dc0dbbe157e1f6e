"""Staging: where a run's dump waits until it is stored, so that a retry of the run reuses it.

A task holds its staging directory while it works (:func:`held_staging`); what a killed run left behind is
removed by the next task that stages the same kind of work, so the staging volume does not grow with every crash.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from airflow.sdk.exceptions import AirflowFailException

from dbops.backup.dump import DumpResult
from dbops.core.config import DbopsConfig
from dbops.core.scratch import claimed, sweep
from dbops.core.streams import file_sha256
from dbops.hooks.postgres import DbopsPostgresHook

_RECORD = "staged.json"

log = logging.getLogger(__name__)


def staging_dir(config: DbopsConfig, target: str, run_id: str) -> Path:
    """Where a run's dump waits until it is stored (one per run, so a retry finds it)."""
    return config.staging_path / f"{target}__full__{hashlib.sha1(run_id.encode()).hexdigest()[:12]}"


def dump_leftovers(target: str) -> str:
    """The glob of the target's dump staging directories, for :func:`held_staging`."""
    return f"{glob.escape(target)}__full__*"


def staged_dump(staging: Path) -> tuple[DumpResult, datetime] | None:
    """The dump an earlier attempt staged, with its snapshot time, if it is still intact (same sha256)."""
    record = staging / _RECORD
    if not record.exists():
        return None
    staged = json.loads(record.read_text())
    dump = DumpResult(**{**staged["dump"], "path": Path(staged["dump"]["path"])})
    if not dump.path.exists() or file_sha256(dump.path) != dump.sha256:
        return None
    return dump, datetime.fromisoformat(staged["taken_at"])


def keep_staged(staging: Path, dump: DumpResult, taken_at: datetime) -> None:
    """Record a finished dump in its staging directory for :func:`staged_dump`."""
    (staging / _RECORD).write_text(json.dumps({"dump": {**asdict(dump), "path": str(dump.path)},
                                               "taken_at": taken_at.isoformat()}))


@contextmanager
def held_staging(path: Path, leftovers: str) -> Iterator[Path]:
    """The staging directory ``path``, held by this process while the block runs, after removing the directories
    beside it matching the glob ``leftovers`` that runs no longer running left behind (a killed try's dump).

    Use a pattern only the same DAG makes: its ``max_active_runs=1`` means no other run of it waits for a retry.
    """
    with claimed(path):
        for gone in sweep(path.parent, leftovers):
            log.warning("removed staging directory %s: left by a run that is no longer running", gone)
        yield path


def check_staging_space(hook: DbopsPostgresHook, staging: Path, target: str) -> None:
    """Fail before dumping when staging cannot hold the dump (at most the database's size)."""
    needed = int(hook.get_first("SELECT pg_database_size(current_database())")[0])
    free = shutil.disk_usage(staging).free
    if free < needed:
        raise AirflowFailException(
            f"staging {staging} has {free / 2**20:.0f} MiB free; the dump of {target} may need up to "
            f"{needed / 2**20:.0f} MiB (its database size). Free space or set staging_dir in dbops.yaml.")
