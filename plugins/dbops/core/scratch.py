"""Scratch directories that outlive a killed run are found and removed by a later one.

The process that works in a scratch directory holds an exclusive ``flock`` on ``<dir>/.lock`` while it
works (:func:`claimed`). The kernel releases the lock when that process dies, kill -9 included, and
never hands it to the children it starts (Python opens files non-inheritable). So a directory whose
``.lock`` nobody holds belongs to a run that is no longer running: :func:`sweep` removes those under a
parent directory. A directory without a ``.lock`` was not made this way and is never touched.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK = ".lock"


class ScratchBusy(Exception):
    """Another running process holds the scratch directory."""


def _lock(path: Path) -> int | None:
    """An open descriptor holding ``path/.lock`` exclusively, or None when another process holds it."""
    fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextmanager
def claimed(path: Path) -> Iterator[Path]:
    """Create ``path`` (and its parents) if missing and hold its lock while the block runs; the directory is
    left in place (remove it in the block when done).

    :raises ScratchBusy: a running process holds it (e.g. another try of the same run still working).
    """
    path.mkdir(parents=True, exist_ok=True)
    fd = _lock(path)
    if fd is None:
        raise ScratchBusy(f"scratch directory {path} is in use by a running process")
    try:
        yield path
    finally:
        os.close(fd)


def empty(path: Path) -> None:
    """Remove everything in ``path`` but its ``.lock`` (a claimed directory made fresh for a new try)."""
    for child in path.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def is_abandoned(path: Path) -> bool:
    """True when ``path`` has a ``.lock`` that no running process holds (its owner is gone)."""
    if not (path / LOCK).is_file():
        return False
    fd = _lock(path)
    if fd is None:
        return False
    os.close(fd)
    return True


def sweep(parent: Path, pattern: str = "*", remove: Callable[[Path], None] | None = None) -> list[Path]:
    """Remove the directories under ``parent`` matching ``pattern`` whose owner is gone; return them.

    Each is locked while it is removed, so two sweepers never remove one directory twice and a directory
    claimed meanwhile is skipped. ``remove`` does the removal (default: delete the tree), e.g. to stop a
    server first; it must delete the directory.
    """
    removed = []
    for path in sorted(parent.glob(pattern)) if parent.is_dir() else []:
        if not path.is_dir() or path.is_symlink() or not (path / LOCK).is_file():
            continue
        fd = _lock(path)
        if fd is None:
            continue
        try:
            (remove or _rmtree)(path)
        finally:
            os.close(fd)
        removed.append(path)
    return removed


def _rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
