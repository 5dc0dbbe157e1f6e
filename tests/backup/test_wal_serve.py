"""The WAL archive served to ``restore_command``: the real shell command, curl, a real local store.

``restore_command`` runs here as PostgreSQL runs it (``/bin/sh -c``, ``%f``/``%p``/``%%`` replaced), so
the exit codes checked are the ones recovery acts on: 0 the file is there, 1 the archive ends, above
125 recovery aborts. The end-to-end recoveries through it are in test_pitr.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dbops.backup.wal_serve import SegmentUnusable, WalArchive, restore_command, serving
from dbops.core.streams import write_compressed
from dbops.hooks.store import LocalStore

NAMES = [f"0000000100000000000000{i:02X}" for i in range(1, 8)]


@pytest.fixture
def archive(tmp_path):
    """Seven stored segments of distinct content, as WAL shipping stores them."""
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store" / "wal").mkdir(parents=True)
    segments = {}
    for i, name in enumerate(NAMES):
        key = f"wal/{name}.zst"
        _, _, sha256 = write_compressed([bytes([i]) * 65536], tmp_path / "store" / key, 1)
        segments[name] = (False, key, sha256)
    return WalArchive(store, segments, tmp_path / "cache")


def restore(command: str, name: str, dest: Path) -> int:
    replaced = re.sub("%[fp%]", lambda m: {"%f": name, "%p": str(dest), "%%": "%"}[m.group()], command)
    return subprocess.run(["/bin/sh", "-c", replaced], check=False).returncode


@pytest.fixture
def served(archive, tmp_path):
    socket_path = tmp_path / "wal.sock"
    with serving(archive, socket_path, None):
        yield restore_command(shutil.which("curl"), socket_path, 30)


def test_each_segment_asked_for_is_served_checked_and_an_unknown_name_ends_the_archive(archive, served, tmp_path):
    dest = tmp_path / "RECOVERYXLOG"
    for i, name in enumerate(NAMES[:3]):
        assert restore(served, name, dest) == 0
        assert dest.read_bytes() == bytes([i]) * 65536
    assert restore(served, NAMES[0], dest) == 0, "a segment asked for again is served again"
    assert dest.read_bytes() == bytes([0]) * 65536
    assert restore(served, "00000002.history", dest) == 1
    assert restore(served, "000000010000000000000099", dest) == 1
    assert archive.served == [*NAMES[:3], NAMES[0]] and archive.served_bytes == 4 * 65536
    assert archive.failure is None


def test_a_corrupt_segment_aborts_recovery_and_is_named(archive, served, tmp_path):
    path = archive.store.root / archive.segments[NAMES[1]][1]
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    assert restore(served, NAMES[0], tmp_path / "x") == 0
    assert restore(served, NAMES[1], tmp_path / "x") == 126
    assert isinstance(archive.failure, SegmentUnusable) and NAMES[1] in str(archive.failure)
    assert "sha256" in str(archive.failure)


def test_a_segment_gone_from_the_store_aborts_recovery_and_is_named(archive, served, tmp_path):
    (archive.store.root / archive.segments[NAMES[4]][1]).unlink()
    assert restore(served, NAMES[4], tmp_path / "x") == 126
    assert f"WAL segment {NAMES[4]}" in str(archive.failure) and "missing from the store" in str(archive.failure)


def test_a_corrupt_segment_fetched_ahead_but_never_asked_for_is_no_failure(archive, served, tmp_path):
    path = archive.store.root / archive.segments[NAMES[2]][1]
    path.write_bytes(b"not zstd")
    assert restore(served, NAMES[0], tmp_path / "x") == 0  # fetches NAMES[1..4] ahead, NAMES[2] among them
    assert restore(served, NAMES[1], tmp_path / "x") == 0
    assert archive.failure is None


def test_without_the_task_serving_recovery_aborts_instead_of_ending_early(archive, tmp_path):
    socket_path = tmp_path / "wal.sock"
    with serving(archive, socket_path, None):
        command = restore_command(shutil.which("curl"), socket_path, 30)
    assert not socket_path.exists() and not list(archive.cache.iterdir()), "nothing fetched ahead is left"
    assert restore(command, NAMES[0], tmp_path / "x") == 126


def test_a_partial_segment_replaced_by_shipping_meanwhile_is_served_as_the_catalog_lists_it_now(tmp_path):
    """Shipping rewrites ``<segment>.partial.zst`` every run and deletes it once the segment is finished: a
    recovery that started before holds a stale entry, and must ask the catalog (here a dict) again."""
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store" / "wal").mkdir(parents=True)
    name = NAMES[0]
    partial_key, finished_key = f"wal/{name}.partial.zst", f"wal/{name}.zst"
    _, _, old_sha = write_compressed([b"a" * 1000], tmp_path / "store" / partial_key, 1)
    catalog = {name: (True, partial_key, old_sha)}
    archive = WalArchive(store, dict(catalog), tmp_path / "cache", catalog.get)
    _, _, new_sha = write_compressed([b"a" * 1000 + b"b" * 1000], tmp_path / "store" / partial_key, 1)
    catalog[name] = (True, partial_key, new_sha)  # the next shipping run replaced the partial
    socket_path = tmp_path / "wal.sock"
    with serving(archive, socket_path, None):
        command = restore_command(shutil.which("curl"), socket_path, 30)
        assert restore(command, name, tmp_path / "x") == 0
        assert (tmp_path / "x").read_bytes() == b"a" * 1000 + b"b" * 1000

        _, _, done_sha = write_compressed([b"a" * 1000 + b"b" * 1000 + b"c" * 1000], tmp_path / "store" / finished_key, 1)
        (tmp_path / "store" / partial_key).unlink()
        catalog[name] = (False, finished_key, done_sha)  # then the segment was finished
        assert restore(command, name, tmp_path / "x") == 0
        assert (tmp_path / "x").read_bytes() == b"a" * 1000 + b"b" * 1000 + b"c" * 1000
    assert archive.failure is None


def test_without_a_newer_catalog_entry_a_replaced_partial_still_fails(tmp_path):
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store" / "wal").mkdir(parents=True)
    key = f"wal/{NAMES[0]}.partial.zst"
    _, _, sha = write_compressed([b"a" * 1000], tmp_path / "store" / key, 1)
    catalog = {NAMES[0]: (True, key, sha)}
    archive = WalArchive(store, dict(catalog), tmp_path / "cache", catalog.get)
    write_compressed([b"z" * 1000], tmp_path / "store" / key, 1)  # changed, but the catalog says otherwise
    with serving(archive, tmp_path / "wal.sock", None):
        assert restore(restore_command(shutil.which("curl"), tmp_path / "wal.sock", 30), NAMES[0], tmp_path / "x") == 126
    assert isinstance(archive.failure, SegmentUnusable) and NAMES[0] in str(archive.failure)
