"""Removing a scratch server's leftovers after a kill -9: only what is really its own is signalled or deleted."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from dbops.backup.pitr import remove_scratch, server_user
from dbops.hooks.tools import embedded_bin_dir
from scripts.stack.paths import ROOT


def test_a_stale_pid_file_never_signals_the_process_that_now_has_its_pid():
    """After a kill -9 the postmaster.pid stays; its pid may belong to another process of the server's user by
    now. (Under var/, which the server's system user can enter when the tests run as root.)"""
    root = ROOT / "var" / "test-staging" / f"stale_{uuid.uuid4().hex[:8]}"
    data = root / "data"
    data.mkdir(parents=True)
    (data / "PG_VERSION").write_text("18\n")
    bystander = subprocess.Popen(["sleep", "60"], user=server_user())  # a process pg_ctl could signal
    try:
        (data / "postmaster.pid").write_text(f"{bystander.pid}\n{data}\n")
        user = server_user()
        for path in (root, data, data / "PG_VERSION", data / "postmaster.pid"):
            if user:
                shutil.chown(path, user, user)

        assert remove_scratch(root, embedded_bin_dir()) is True

        assert bystander.poll() is None, "the process that now has the dead server's pid was signalled"
        assert not root.exists()
    finally:
        bystander.kill()
        bystander.wait()
        shutil.rmtree(root, ignore_errors=True)


def test_a_socket_directory_record_naming_another_directory_never_deletes_it(tmp_path):
    """The record of the private socket directory is in a directory the server's system user may write: a record
    rewritten to name anything else is not followed."""
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("not a socket directory")
    ours = Path(tempfile.mkdtemp(prefix="dbops-pitr-"))
    for record in (precious, ours):
        root = tmp_path / f"scratch-{record.name}"
        root.mkdir()
        (root / "socket_dir").write_text(str(record))
        remove_scratch(root, embedded_bin_dir())
        assert not root.exists()
    assert (precious / "keep.txt").exists()
    assert not ours.exists()



def test_a_recovery_server_of_an_older_major_version_accepts_its_settings():
    """A PostgreSQL 15 server (Debian's, on this machine kind) reads the recovery settings dbops writes into a
    cluster of its version without error: none that only newer servers know (summarize_wal is 17+)."""
    from dbops.backup.pitr import ScratchServer, free_port
    from tests.preflight.test_preflight import DEBIAN_15_BIN

    root = ROOT / "var" / "test-staging" / f"pg15_{uuid.uuid4().hex[:8]}"
    server = ScratchServer(root, Path(DEBIAN_15_BIN), free_port(56500, 56599))
    server.data.mkdir(parents=True)
    if server_user():
        shutil.chown(root, server_user(), server_user())
        shutil.chown(server.data, server_user(), server_user())
    try:
        subprocess.run([f"{DEBIAN_15_BIN}/initdb", "-D", str(server.data), "-U", "postgres", "--no-sync"],
                       user=server_user(), check=True, capture_output=True)
        server.configure(None, timeout=30)
        read = subprocess.run([f"{DEBIAN_15_BIN}/postgres", "-D", str(server.data), "-C", "recovery_target_timeline"],
                              user=server_user(), capture_output=True, text=True)
        assert (read.returncode, read.stdout.strip()) == (0, "latest"), read.stderr
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
