"""Scratch directories whose owner is gone: a real child process holds the lock and is killed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbops.core import scratch
from dbops.core.scratch import LOCK, ScratchBusy, claimed, empty, is_abandoned, sweep

PLUGINS = str(Path(scratch.__file__).parents[2])

HOLD = """
import sys, time
sys.path.insert(0, sys.argv[2])
from pathlib import Path
from dbops.core.scratch import claimed
with claimed(Path(sys.argv[1])):
    (Path(sys.argv[1]) / "ready").touch()
    time.sleep(600)
"""


def hold_in_child(path: Path) -> subprocess.Popen:
    """A child process that claims ``path`` and sleeps."""
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path), PLUGINS])
    deadline = time.monotonic() + 30
    while not (path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return child


def test_sweep_removes_only_the_directories_of_processes_that_are_gone(tmp_path):
    alive, dead, foreign = tmp_path / "t__a", tmp_path / "t__b", tmp_path / "t__c"
    running = hold_in_child(alive)
    killed = hold_in_child(dead)
    foreign.mkdir()  # not made by claimed(): never touched
    (foreign / "data").write_text("someone's")
    try:
        killed.kill()
        killed.wait()
        assert not is_abandoned(alive) and is_abandoned(dead) and not is_abandoned(foreign)
        with pytest.raises(ScratchBusy, match="in use by a running process"):
            with claimed(alive):
                pass
        assert sweep(tmp_path, "t__*") == [dead]
        assert alive.is_dir() and not dead.exists() and (foreign / "data").exists()
    finally:
        running.kill()
        running.wait()
    seen = []

    def stop_then_delete(path: Path) -> None:
        seen.append(path)
        shutil.rmtree(path)

    assert sweep(tmp_path, "t__*", remove=stop_then_delete) == [alive] and seen == [alive]


def test_a_claimed_directory_is_not_swept_by_the_same_process_and_is_reused_after(tmp_path):
    work = tmp_path / "run"
    with claimed(work):
        (work / "file").write_text("x")
        assert sweep(tmp_path) == [] and (work / "file").exists()
    assert (work / LOCK).exists() and is_abandoned(work)
    with claimed(work):  # a retry of the run takes over its own directory
        assert (work / "file").exists()
        empty(work)
        assert [p.name for p in work.iterdir()] == [LOCK] and not is_abandoned(work)
