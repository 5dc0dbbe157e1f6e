"""Point-in-time recovery against a real PostgreSQL 18 cluster of its own.

The module initdb's a small cluster (1 MB WAL segments, ``summarize_wal = on``, a REPLICATION role) on a
free port with the embedded binaries: the WAL slots and segment switches of these tests never touch the
shared test server. The ops database is the suite's (``dbops_state``). Each test has its own target name,
store and staging. The Airflow context is the FAKE minimal one of tests/backup/conftest.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import psutil
import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.backup import pitr_catalog
from dbops.backup.pitr import server_user
from dbops.backup.wal_ship import receive_slot_name, slot_name
from dbops.hooks.ops import OpsDatabaseHook
from dbops.hooks.tools import embedded_bin_dir
from dbops.core.config import load_config
from dbops.operators.pitr import (
    BaseBackupOperator,
    PitrRetentionOperator,
    PitrTestOperator,
    RecoveryTestFailed,
    RestorePitrOperator,
    ScratchClusterOperator,
    WalShipOperator,
    _run_dir,
    archive_gaps,
)
from scripts.stack.cluster import cluster as scratch_cluster
from scripts.stack.paths import ROOT
from tests.backup.conftest import context, on_time
from tests.conftest import free_port

BIN = embedded_bin_dir()
PASSWORD = "pitr-Test-pw-7c1"


@pytest.fixture(scope="module")
def cluster(pg_server):
    """A PostgreSQL 18 cluster for these tests only (1 MB WAL segments); stopped and deleted at the end."""
    with scratch_cluster(ROOT / "var" / f"pitr-test-{uuid.uuid4().hex[:8]}", free_port(), PASSWORD,
                         "shared_buffers = 32MB\nmax_connections = 40\nmin_wal_size = 2MB\nmax_wal_size = 64MB",
                         wal_segsize_mb=1) as made:
        yield SimpleNamespace(root=made.root, port=made.port, dsn=made.dsn())


@pytest.fixture
def site(cluster, monkeypatch):
    """A target on the cluster: its own database, slot, store, staging and config."""
    name = f"pt_{uuid.uuid4().hex[:8]}"
    home = cluster.root / name
    home.mkdir()
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(_dsn(cluster, name)) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, note text)")
    uri = f"postgresql://{{}}:{PASSWORD}@127.0.0.1:{cluster.port}/{name}"
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{name.upper()}", uri.format("postgres"))
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{name.upper()}_REPL", uri.format("dbops_repl"))
    config = home / "dbops.yaml"
    monkeypatch.setenv("DBOPS_CONFIG", str(config))
    site = SimpleNamespace(name=name, home=home, config=config, dsn=_dsn(cluster, name), store=home / "store")
    write_config(site, site.store)
    yield site
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                     "WHERE slot_name IN (%s, %s)", (slot_name(name), receive_slot_name(name)))


@pytest.fixture
def outside():
    """A directory outside the project (restores into it are allowed), the server user may enter it."""
    made = Path(tempfile.mkdtemp(prefix="dbops-pitr-test-"))
    made.chmod(0o755)
    yield made
    shutil.rmtree(made, ignore_errors=True)


def _dsn(cluster, database: str) -> str:
    return f"host=127.0.0.1 port={cluster.port} user=postgres password={PASSWORD} dbname={database}"


def write_config(site, store: Path | str, full_retention: int = 2, max_retained_wal: str = "1GB",
                 encryption: str = "") -> None:
    """The site's config; ``store`` is a directory, or an ``s3://`` URL reached through connection aws_test."""
    s3 = str(store).startswith("s3://")
    site.config.write_text(f"""
ops_conn_id: dbops_state
staging_dir: {site.home / 'staging'}
storage:
  local: {{url: {store}{', aws_conn_id: aws_test' if s3 else ''}}}
targets:
  {site.name}:
    conn_id: pg_{site.name}
    pitr: {{storage: local, replication_conn_id: pg_{site.name}_repl, compression_level: 1,
            full_retention: {full_retention}, max_retained_wal: {max_retained_wal},
            scratch_ports: [{free_port()}, 65000]{', encryption_conn_id: ' + encryption if encryption else ''}}}
""")
    os.utime(site.config, (time.time(), time.time() + 1))  # a new mtime: the config cache reloads it


def insert(site, first: int, last: int) -> None:
    with psycopg.connect(site.dsn) as conn:
        conn.execute("INSERT INTO items SELECT g, repeat('x', 200) FROM generate_series(%s::int, %s::int) g", (first, last))


def server_time(site) -> datetime:
    with psycopg.connect(site.dsn) as conn:
        return conn.execute("SELECT clock_timestamp()").fetchone()[0]


def backup(site, run_id: str, **kwargs) -> dict:
    """A base backup by a run that starts on time (a past period's run may take none)."""
    return BaseBackupOperator(task_id="basebackup", target=site.name, **kwargs).execute(on_time(run_id))


def ship(site) -> dict:
    return WalShipOperator(task_id="ship", target=site.name).execute(context(run_id="ship"))


def pitr_test(site, run_id: str, target_time: str = "") -> dict:
    ctx = context(run_id=run_id)
    try:
        return PitrTestOperator(task_id="recover", target=site.name, target_time=target_time).execute(ctx)
    finally:
        ScratchClusterOperator(task_id="drop", target=site.name, drop=True).execute(ctx)


def restart_lsn(site) -> str:
    with psycopg.connect(site.dsn) as conn:
        return conn.execute("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
                            (slot_name(site.name),)).fetchone()[0]


def ops() -> OpsDatabaseHook:
    return OpsDatabaseHook(postgres_conn_id="dbops_state")


def stored_segments(site) -> dict:
    with ops().transaction() as conn:
        return pitr_catalog.segments(conn, site.name)


def target_hook(site):
    from dbops.hooks.postgres import DbopsPostgresHook

    return DbopsPostgresHook(postgres_conn_id=f"pg_{site.name}")


def switch_wal(site, times: int) -> None:
    with psycopg.connect(site.dsn, autocommit=True) as conn:
        for i in range(times):
            conn.execute("INSERT INTO items VALUES (%s, 'switch') ON CONFLICT DO NOTHING", (-1 - i,))
            conn.execute("SELECT pg_switch_wal()")


def test_store_unreachable_leaves_the_slot_where_it_was_and_loses_nothing(site):
    ship(site)
    switch_wal(site, 3)
    before = restart_lsn(site)
    broken = site.home / "not-a-directory"
    broken.write_text("the store's root is a file: every write fails")
    write_config(site, broken)
    with pytest.raises(AirflowFailException, match="not-a-directory.*Not a directory"):  # a broken store URL
        ship(site)
    assert restart_lsn(site) == before, "nothing was stored: the slot must not move"

    write_config(site, site.store)
    result = ship(site)
    assert len(result["segments"]) >= 3
    assert result["retained_bytes"] < 1024 * 1024, "the slot moved up to what is stored (the partial segment)"
    assert archive_gaps(ops(), target_hook(site), site.name) == []
    assert all((site.store / key).is_file() for _, key, _ in stored_segments(site).values())


def test_a_running_base_backup_holds_the_slot_and_the_cap_fails_only_after_shipping(site, cluster):
    """pg_basebackup -X fetch reads its WAL from the server at its end: shipping stores everything but leaves
    the hold slot where it was while a base backup runs (a real, throttled pg_basebackup here)."""
    ship(site)
    slow = subprocess.Popen([str(BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "dbops_repl",
                             "-D", "-", "-Ft", "-X", "fetch", "--max-rate=32k", "-c", "fast"],
                            env={**os.environ, "PGPASSWORD": PASSWORD}, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not running_base_backups(site) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running_base_backups(site) == 1
        before = restart_lsn(site)
        insert(site, 1, 20000)  # several MB of WAL
        result = ship(site)
        assert result["held_for_basebackup"] and len(result["segments"]) >= 3
        assert restart_lsn(site) == before, "the slot must keep the WAL the running base backup needs"
        write_config(site, site.store, max_retained_wal="1MB")
        with pytest.raises(AirflowFailException, match="still retains .* over pitr.max_retained_wal .*pg_drop_repl"):
            ship(site)
    finally:
        slow.kill()
        slow.wait()
    deadline = time.monotonic() + 60
    while running_base_backups(site) and time.monotonic() < deadline:  # its walsender notices the client left
        time.sleep(0.2)
    result = ship(site)  # the backup is gone: shipping catches up under the cap
    assert not result["held_for_basebackup"] and restart_lsn(site) != before
    assert archive_gaps(ops(), target_hook(site), site.name) == []


def running_base_backups(site) -> int:
    with psycopg.connect(site.dsn) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_progress_basebackup").fetchone()[0]


def test_a_gap_in_the_archive_fails_shipping_naming_it(site):
    backup(site, "base")
    switch_wal(site, 4)
    ship(site)
    finished = sorted(name for name, (partial, _, _) in stored_segments(site).items() if not partial)
    lost = finished[-2]
    (site.store / stored_segments(site)[lost][1]).unlink()  # someone deleted it from the bucket
    with ops().transaction() as conn:
        conn.execute("DELETE FROM dbops.wal_segments WHERE target = %s AND segment = %s", (site.name, lost))
    with pytest.raises(AirflowFailException, match=f"has a gap: 1 segment\\(s\\) missing \\({lost}\\)"):
        ship(site)


def kill_shipping(site, cluster=None, rows: int = 60000) -> set[str]:
    """Start a shipping pass in a child process and kill -9 it (pg_receivewal too) once it stored two new
    segments of a backlog (60000 rows: about 20 segments): what it received but did not store yet is in
    staging only.

    With ``cluster``, the server asks the child's pg_receivewal for its flush position every 0.15 s (a long
    run reports it every 10 s on its own): the server learns that what is in staging was received."""
    ship(site)
    insert(site, 1, rows)
    keys_before = set(stored_segments(site))
    if cluster is not None:
        set_wal_sender_timeout(cluster, "300ms")
    try:
        child = subprocess.Popen([sys.executable, "-c", "import sys; from tests.backup.test_pitr import "
                                  "ship_in_child; ship_in_child(sys.argv[1])", site.name], cwd=ROOT,
                                 env=os.environ.copy())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(set(stored_segments(site)) - keys_before) < 2:
            time.sleep(0.02)
        tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
        for proc in tree:  # kill -9, pg_receivewal included (it runs in a session of its own)
            proc.kill()
        child.wait()
        psutil.wait_procs(tree, timeout=10)
    finally:
        if cluster is not None:
            set_wal_sender_timeout(cluster, None)
    shipped_by_killed = set(stored_segments(site)) - keys_before
    assert shipped_by_killed, "the child stored segments before it was killed"
    return shipped_by_killed


def assert_shipped_once_without_gap(site, result: dict, shipped_by_killed: set[str]) -> None:
    """The archive has no gap, the rerun stored no segment twice, and its content is continuous WAL."""
    segments = stored_segments(site)
    finished = sorted(name for name, (partial, _, _) in segments.items() if not partial)
    assert archive_gaps(ops(), target_hook(site), site.name) == []
    assert not set(result["segments"]) & {s for s in shipped_by_killed if not segments[s][0]}, "stored twice"
    # pg_waldump reads every record from the first stored segment to the last
    wal = site.home / "unpacked"
    wal.mkdir()
    from dbops.core.streams import read_decompressed

    for name in finished:
        read_decompressed(site.store / segments[name][1], wal / name, segments[name][2])
    done = subprocess.run([str(BIN / "pg_waldump"), "--quiet", "-p", str(wal), finished[0], finished[-1]],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_killed_shipping_ships_the_rest_next_run_without_gap_or_duplicate(site):
    shipped_by_killed = kill_shipping(site)
    result = ship(site)
    assert result["segments"], "the killed run left received segments for the next run to ship"
    assert_shipped_once_without_gap(site, result, shipped_by_killed)


def test_killed_shipping_rerun_on_another_worker_without_its_staging_loses_nothing(site, cluster):
    shipped_by_killed = kill_shipping(site, cluster, rows=200000)  # streaming lasts several pings
    from dbops.backup.wal_ship import segment_of_lsn

    assert segment_of_lsn(restart_lsn(site), 1, 1024 * 1024) > min(shipped_by_killed), \
        "the hold slot follows each stored segment: the killed run's progress is kept"
    staging = site.home / "staging" / f"{site.name}__wal"
    assert any(staging.iterdir()), "the killed run left received, unstored WAL in its staging"
    shutil.rmtree(staging)  # the retry runs on another worker (or the disk was lost)
    result = ship(site)
    assert result["segments"], "the rerun streamed again what the killed run received but did not store"
    assert_shipped_once_without_gap(site, result, shipped_by_killed)


def test_a_killed_runs_pg_receivewal_still_streaming_is_retried_and_moves_nothing(site, cluster):
    ship(site)
    insert(site, 1, 3000)
    before = restart_lsn(site)
    receive = receive_slot_name(site.name)
    with psycopg.connect(site.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_copy_physical_replication_slot(%s, %s)", (slot_name(site.name), receive))
    orphan_dir = site.home / "orphan"
    orphan_dir.mkdir()
    orphan = subprocess.Popen([str(BIN / "pg_receivewal"), f"--directory={orphan_dir}", f"--slot={receive}",
                               "--no-password", f"--dbname=host=127.0.0.1 port={cluster.port} user=dbops_repl "
                               f"password={PASSWORD}"], stderr=subprocess.DEVNULL)
    try:
        wait_for_slot(site, receive, active=True)
        busy = f'replication slot "{receive}" is active for PID .*\\(transient'
        with pytest.raises(AirflowException, match=busy) as raised:
            ship(site)
        assert not isinstance(raised.value, AirflowFailException)
        assert restart_lsn(site) == before, "nothing was stored: the hold slot must not move"
    finally:
        orphan.kill()
        orphan.wait()
    wait_for_slot(site, receive, active=False)  # its walsender exits once it notices
    assert ship(site)["segments"], "once the orphan is gone the next run ships the backlog"
    assert archive_gaps(ops(), target_hook(site), site.name) == []


def wait_for_slot(site, slot: str, active: bool) -> None:
    deadline = time.monotonic() + 30
    with psycopg.connect(site.dsn, autocommit=True) as conn:
        while time.monotonic() < deadline and conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)).fetchone()[0] != active:
            time.sleep(0.05)


def set_wal_sender_timeout(cluster, value: str | None) -> None:
    """Set (or reset) the cluster's wal_sender_timeout; returns once new sessions see it."""
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        if value is None:
            conn.execute("ALTER SYSTEM RESET wal_sender_timeout")
        else:
            conn.execute(psycopg.sql.SQL("ALTER SYSTEM SET wal_sender_timeout = {}").format(value))
        conn.execute("SELECT pg_reload_conf()")
    expected = value or "1min"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with psycopg.connect(cluster.dsn) as conn:
            if conn.execute("SHOW wal_sender_timeout").fetchone()[0] == expected:
                return
        time.sleep(0.05)
    raise AssertionError(f"wal_sender_timeout is not {expected} after a reload")


def ship_in_child(name: str) -> None:
    """Run one shipping pass in a child process (killed by the test)."""
    WalShipOperator(task_id="ship", target=name).execute(context(run_id="ship"))


def test_corrupt_segment_fails_the_recovery_test_naming_it(site):
    backup(site, "base")
    insert(site, 1, 20000)
    ship(site)
    segments = stored_segments(site)
    with ops().transaction() as conn:
        newest = pitr_catalog.base_backups(conn, site.name)[0]
    from dbops.backup.wal_ship import segment_of_lsn

    after_backup = segment_of_lsn(newest.manifest.extra["stop_lsn"], 1, 1024 * 1024)
    victim = min(name for name, (partial, _, _) in segments.items() if not partial and name > after_backup)
    path = site.store / segments[victim][1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(RecoveryTestFailed, match=victim):
        pitr_test(site, "corrupt")
    with ops().transaction() as conn:
        ok, error = conn.execute("SELECT ok, error FROM dbops.recovery_tests WHERE target = %s "
                                 "ORDER BY id DESC LIMIT 1", (site.name,)).fetchone()
    assert ok is False and victim in error


def test_incremental_with_a_missing_or_unverified_parent_is_refused_and_a_full_taken(site):
    first = backup(site, "b1")
    assert first["kind"] == "basebackup"
    second = backup(site, "b2")
    assert second["kind"] == "basebackup", "b1 is not verified: no incremental on it"
    pitr_test(site, "verify-b2")
    third = backup(site, "b3")
    assert (third["kind"], third["parent"]) == ("incremental", second["backup_id"])
    for key in sorted((site.store / third["backup_id"]).iterdir()):
        key.unlink()
    fourth = backup(site, "b4")
    assert fourth["kind"] == "basebackup"
    with ops().transaction() as conn:
        reason = {b.backup_id: b.manifest.extra["reason"] for b in pitr_catalog.base_backups(conn, site.name)}
    assert "not verified" in reason[second["backup_id"]]
    assert "missing" in reason[fourth["backup_id"]]


def test_an_incremental_is_refused_when_a_file_of_its_parents_chain_is_gone(site):
    """The newest verified backup's manifests are there but its chain's full lost its archive: a full is taken."""
    full = backup(site, "chain-full")
    pitr_test(site, "verify-chain-full")
    incremental = backup(site, "chain-incr")
    assert (incremental["kind"], incremental["parent"]) == ("incremental", full["backup_id"])
    pitr_test(site, "verify-chain-incr")
    (site.store / full["backup_id"] / "base.tar.zst").unlink()  # the manifests stay
    taken = backup(site, "chain-after")
    assert taken["kind"] == "basebackup"
    with ops().transaction() as conn:
        reason = {b.backup_id: b.manifest.extra["reason"] for b in pitr_catalog.base_backups(conn, site.name)}
    assert f"chain of its parent {incremental['backup_id']} cannot be recovered: {full['backup_id']}/base.tar.zst " \
           "is missing" in reason[taken["backup_id"]]


def test_encrypted_base_backups_and_wal_recover_and_need_their_key(site, monkeypatch):
    import base64

    from dbops.core.streams import GCM_MAGIC

    monkeypatch.setenv("AIRFLOW_CONN_PITR_KEY", json.dumps({"conn_type": "generic",
                                                            "password": base64.b64encode(os.urandom(32)).decode()}))
    write_config(site, site.store, encryption="pitr_key")
    full = backup(site, "enc-full")
    insert(site, 1, 3000)
    assert pitr_test(site, "enc-verify")["ok"]
    stored = [site.store / full["backup_id"] / "base.tar.zst",
              *(site.store / key for _, key, _ in stored_segments(site).values())]
    assert len(stored) > 2 and all(path.read_bytes()[:len(GCM_MAGIC)] == GCM_MAGIC for path in stored)
    with ops().transaction() as conn:
        assert pitr_catalog.base_backups(conn, site.name)[0].manifest.encryption["key_conn_id"] == "pitr_key"
    write_config(site, site.store)  # the key dropped from the config
    with pytest.raises(RecoveryTestFailed, match="is encrypted and pitr.encryption_conn_id is not set"):
        pitr_test(site, "enc-nokey")


def test_a_cluster_with_a_tablespace_is_refused_saying_why(site, cluster):
    location = cluster.root / f"{site.name}-ts"
    location.mkdir()
    if server_user():
        shutil.chown(location, server_user(), server_user())
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE {site.name}_ts LOCATION '{location}'")
    try:
        with pytest.raises(AirflowFailException, match=f"has tablespaces \\({site.name}_ts\\).*pg_default"):
            backup(site, "with-tablespace")
    finally:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(f"DROP TABLESPACE {site.name}_ts")
    with ops().transaction() as conn:
        assert pitr_catalog.base_backups(conn, site.name) == []


def test_a_retry_records_the_base_backup_its_killed_attempt_stored_but_never_recorded(site):
    taken = backup(site, "stored-unrecorded")
    with ops().transaction() as conn:  # as if the attempt was killed between storing and recording
        conn.execute("DELETE FROM dbops.backups WHERE backup_id = %s", (taken["backup_id"],))
    retried = backup(site, "stored-unrecorded")
    assert retried["backup_id"] == taken["backup_id"]
    assert [p.name for p in (site.store / site.name / "basebackup").iterdir()] == [taken["backup_id"].rsplit("/", 1)[1]]
    with ops().transaction() as conn:
        assert [b.backup_id for b in pitr_catalog.base_backups(conn, site.name)] == [taken["backup_id"]]


def test_a_backfilled_run_takes_nothing_when_a_newer_base_backup_exists(site):
    taken = backup(site, "now")
    ctx = context(run_id="backfill__2026-11-20", run_type="backfill")  # logical date 2026-11-20, long past
    covered = BaseBackupOperator(task_id="basebackup", target=site.name).execute(ctx)
    assert covered["backup_id"] == taken["backup_id"] and covered["covered_period"].startswith("2026-11-20")
    with ops().transaction() as conn:
        assert len(pitr_catalog.base_backups(conn, site.name)) == 1


def test_recovers_full_plus_incremental_to_the_noted_time(site, cluster, monkeypatch):
    with psycopg.connect(site.dsn) as conn:  # recovery empties unlogged tables: they are not counted
        conn.execute("CREATE UNLOGGED TABLE scratch_cache AS SELECT g AS id FROM generate_series(1, 50) g")
    backup(site, "full")
    leftover = _run_dir(load_config(site.config), site.name, "pitr", "verify-full")  # an earlier try's
    (leftover / "data").mkdir(parents=True)
    (leftover / "data" / "PG_VERSION").write_text("18")
    (leftover / "socket_dir").write_text(str(cluster.root / "gone"))
    first = PitrTestOperator(task_id="recover", target=site.name).execute(context(run_id="verify-full"))
    ScratchClusterOperator(task_id="drop", target=site.name, drop=True).execute(context(run_id="verify-full"))
    assert first["ok"] and first["wal_replayed_bytes"] > 0
    incremental = backup(site, "incr")
    assert incremental["kind"] == "incremental"
    insert(site, 1, 500)
    noted = server_time(site)
    time.sleep(0.05)
    insert(site, 501, 1000)
    ship(site)

    data = Path(tempfile.mkdtemp(prefix="dbops-pitr-test-")) / "restored"  # outside the project
    data.parent.chmod(0o755)
    # the source is down (its connection points at a closed port): a restore needs only the store and catalog
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{site.name.upper()}", f"postgresql://postgres:x@127.0.0.1:{free_port()}/{site.name}")
    result = RestorePitrOperator(task_id="restore", target=site.name, target_time=noted.isoformat(),
                                 data_directory=str(data)).execute(context(run_id="restore"))
    assert result["chain"][-1] == incremental["backup_id"] and len(result["chain"]) == 2
    auto_conf = (data / "postgresql.auto.conf").read_text()
    assert "restore_command" not in auto_conf and auto_conf.rstrip().endswith("archive_mode = 'off'")
    port = free_port()
    user = {"user": server_user()} if server_user() else {}
    subprocess.run([str(BIN / "pg_ctl"), "-D", str(data), "-l", str(cluster.root / f"{site.name}.log"), "-w",
                    "-o", f"-p {port} -c unix_socket_directories={cluster.root}", "start"], check=True,
                   stdout=subprocess.DEVNULL, **user)
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres password={PASSWORD} "
                             f"dbname={site.name}") as conn:
            ids = [row[0] for row in conn.execute("SELECT id FROM items WHERE id > 0 ORDER BY id")]
        # the restored copy (promoted: timeline 2) takes the source's place, as after a failover
        for role in ("", "_REPL"):
            user_name = "dbops_repl" if role else "postgres"
            monkeypatch.setenv(f"AIRFLOW_CONN_PG_{site.name.upper()}{role}",
                               f"postgresql://{user_name}:{PASSWORD}@127.0.0.1:{port}/{site.name}")
        ship(site)  # the new primary's WAL, and its timeline's history file
        assert "00000002.history" in stored_segments(site)
        with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres password={PASSWORD} "
                             f"dbname={site.name}") as conn:
            conn.execute("INSERT INTO items SELECT g, 'timeline 2' FROM generate_series(2001, 2100) g")
        # markers written on timeline 2, recovered from the timeline-1 chain across the switch
        switched = pitr_test(site, "after-switch")
        assert switched["ok"] and switched["chain"] == result["chain"]
        history = stored_segments(site)["00000002.history"]
        (site.store / history[1]).unlink()  # as if shipped before history files were
        with ops().transaction() as conn:
            conn.execute("DELETE FROM dbops.wal_segments WHERE target = %s AND segment = '00000002.history'",
                         (site.name,))
        with pytest.raises(RecoveryTestFailed, match="recovery ended before configured recovery target was reached "
                                                     "-- the WAL archive switches from timeline 1 .* to timeline 2 at "
                                                     "segment 00000002.* and the timeline history file "
                                                     "00000002.history is not in the store.*full=true"):
            pitr_test(site, "no-history", switched["target_time"])
    finally:
        subprocess.run([str(BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], check=False,
                       stdout=subprocess.DEVNULL, **user)
        shutil.rmtree(data.parent, ignore_errors=True)
    assert ids == list(range(1, 501))
    on_demand = pitr_test(site, "on-demand", noted.isoformat())
    assert on_demand["chain"] == result["chain"] and "recovery stopping before commit" in on_demand["stopped"]
    with ops().transaction() as conn:
        tests = conn.execute("SELECT ok, checks FROM dbops.recovery_tests WHERE target = %s ORDER BY id",
                             (site.name,)).fetchall()
    # the marker test after the full, the one across the switch, the one without its history, the on-demand one
    assert [ok for ok, _ in tests] == [True, True, False, True]
    assert tests[0][1]["markers"] == tests[1][1]["markers"] == {"ok": True, "before_present": True,
                                                                 "after_absent": True}
    assert tests[0][1]["recovery"]["wal_replayed_bytes"] > 0 and tests[3][1]["target"]["ok"]


def test_slot_rules_see_the_wal_a_stopped_shipper_makes_the_server_keep(site):
    from dbops.core.config import QUERIES_DIR

    ship(site)
    insert(site, 1, 20000)
    with psycopg.connect(site.dsn) as conn:
        retained = {row[0]: row for row in conn.execute((QUERIES_DIR / "replication_slot_retained_wal.sql").read_text())}
        inactive = {row[0]: row for row in conn.execute((QUERIES_DIR / "replication_slot_inactive.sql").read_text())}
    slot = slot_name(site.name)
    assert retained[slot][2] == "no" and retained[slot][3] > 1  # MB written since the last shipping run
    assert inactive[slot][2] >= 0
    assert receive_slot_name(site.name) not in retained | inactive, "no idle receive slot between runs"


def test_retention_keeps_the_newest_verified_chain_and_deletes_older_backups_and_wal(site):
    write_config(site, site.store, full_retention=1)
    first = backup(site, "r1")
    pitr_test(site, "verify-r1")
    insert(site, 1, 5000)
    ship(site)
    second = backup(site, "r2", full=True)
    retention = PitrRetentionOperator(task_id="retention", target=site.name)
    killed = _run_dir(load_config(site.config), site.name, "pitr", "killed-test")  # a killed recovery test's
    (killed / "data").mkdir(parents=True)
    (killed / ".lock").touch()
    kept = retention.execute(context(run_id="ret1"))
    assert not killed.exists()
    assert kept["deleted"] == [] and first["backup_id"] in kept["kept"], "r1 is the newest verified recovery"

    pitr_test(site, "verify-r2")
    from dbops.backup.wal_ship import wal_key

    orphan = site.store / wal_key(site.name, min(stored_segments(site)), partial=True)
    orphan.write_bytes(b"a partial a killed run stored the finished segment of, but did not delete")
    done = retention.execute(context(run_id="ret2"))
    assert not orphan.exists()
    assert done["deleted"] == [first["backup_id"]] and done["wal_deleted"] > 0
    assert not (site.store / first["backup_id"]).exists()
    assert (site.store / second["backup_id"] / "manifest.json").is_file()
    from dbops.backup.wal_ship import segment_of_lsn

    start = segment_of_lsn(second["start_lsn"], 1, 1024 * 1024)
    remaining = stored_segments(site)
    assert min(remaining) == start and all((site.store / key).is_file() for _, key, _ in remaining.values())
    assert not [p for p in (site.store / site.name / "wal").iterdir() if p.name[:24] < start]
    with ops().transaction() as conn:
        status = conn.execute("SELECT status FROM dbops.backups WHERE backup_id = %s", (first["backup_id"],)).fetchone()
    assert status == ("deleted",)


def test_base_backup_wal_and_recovery_test_through_s3(site, s3_endpoint, monkeypatch):
    import boto3

    from tests.backup.test_store import aws_connection

    aws_connection(monkeypatch, "aws_test", s3_endpoint)
    bucket = f"pitr-{site.name.replace('_', '-')}"
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket=bucket)
    write_config(site, f"s3://{bucket}/prod")
    full = backup(site, "s3-full")
    insert(site, 1, 3000)
    result = pitr_test(site, "s3-verify")
    assert result["ok"] and result["chain"] == [full["backup_id"]] and result["wal_fetched_bytes"] > 0
    assert backup(site, "s3-incr")["kind"] == "incremental"

    insert(site, 3001, 6000)
    ship(site)
    victim = max(name for name, (partial, _, _) in stored_segments(site).items() if not partial)
    s3.delete_object(Bucket=bucket, Key=f"prod/{stored_segments(site)[victim][1]}")
    with pytest.raises(RecoveryTestFailed, match=f"WAL segment {victim} .* is missing from the store"):
        pitr_test(site, "s3-missing")


def test_recovery_fetches_only_the_wal_up_to_its_target(site):
    """restore_command reads the store lazily: a corrupt segment far past the target is never fetched."""
    backup(site, "base")
    insert(site, 1, 500)
    noted = server_time(site)
    time.sleep(0.05)
    for first in range(501, 60000, 2000):  # many commits: recovery stops at the first one after the target
        insert(site, first, first + 1999)
    ship(site)
    stored = stored_segments(site)
    with ops().transaction() as conn:
        start = pitr_catalog.base_backups(conn, site.name)[0].start_lsn
    from dbops.backup.wal_ship import segment_of_lsn

    after_start = sorted(name for name in stored if name >= segment_of_lsn(start, 1, 1024 * 1024))
    assert len(after_start) > 10, "the test needs WAL well past its target"
    path = site.store / stored[after_start[-2]][1]
    path.write_bytes(path.read_bytes()[:100])

    result = pitr_test(site, "early", noted.isoformat())
    assert "recovery stopping before commit" in result["stopped"]
    assert 0 < result["wal_segments_fetched"] < len(after_start) - 2
    with pytest.raises(RecoveryTestFailed, match=after_start[-2]):
        pitr_test(site, "late", server_time(site).isoformat())


def test_recovery_uses_server_binaries_of_the_clusters_major_version(tmp_path):
    """A PostgreSQL 16 server cannot run here: ``tools.bin_dir`` holds a FAKE ``postgres`` that only answers
    ``--version`` as 16.4 would; the embedded wheel's server is the real 18."""
    from dbops.backup.pitr import RecoveryFailed
    from dbops.operators.pitr import recovery_bin_dir

    fake = tmp_path / "pg16"
    fake.mkdir()
    (fake / "postgres").write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 16.4'\n")
    (fake / "postgres").chmod(0o755)
    config = SimpleNamespace(tools=SimpleNamespace(bin_dir=str(fake), exclusive=False))
    assert recovery_bin_dir(config, "16.4") == fake
    assert recovery_bin_dir(config, "18.1") == BIN
    with pytest.raises(RecoveryFailed, match=f"PostgreSQL 17 server binaries .*{fake} has PostgreSQL 16; .* has "
                                             "PostgreSQL 18. Install them and set tools.bin_dir"):
        recovery_bin_dir(config, "17.2")


@pytest.mark.parametrize(("target_time", "data_directory", "expected"), [
    ("yesterday", "/tmp/dbops-restore-x", "is not an ISO 8601 time with a zone"),
    ("2026-11-30T16:05:00", "/tmp/dbops-restore-x", "is not an ISO 8601 time with a zone"),
    ("2999-01-01T00:00:00+00:00", "/tmp/dbops-restore-x", "is in the future"),
    ("2026-11-30T16:05:00+00:00", "relative/dir", "must be an absolute path"),
])
def test_restore_refuses_bad_params_before_touching_anything(site, target_time, data_directory, expected):
    with pytest.raises(AirflowFailException, match=expected):
        RestorePitrOperator(task_id="restore", target=site.name, target_time=target_time,
                            data_directory=data_directory).execute(context(run_id="bad-params"))
    assert not Path(data_directory).exists()


def restore(site, data_directory, run_id: str, target_time: str = "2026-11-30T16:05:00+00:00") -> dict:
    return RestorePitrOperator(task_id="restore", target=site.name, target_time=target_time,
                               data_directory=str(data_directory)).execute(context(run_id=run_id))


@pytest.mark.parametrize(("where", "expected"), [
    ("source/copy", "is inside the source's data directory"),
    ("link/copy", "is inside the source's data directory"),  # a symlink into it, resolved first
    ("store/copy", "is inside the backup store"),
    ("staging/copy", "is inside staging_dir"),
    ("project", "is inside the dbops project"),
    ("/etc/dbops-restore", "is inside a system directory /etc"),
    ("/var/lib/postgresql/18/main", "is inside a system directory /var/lib/postgresql"),
    ("/", "is above a system directory"),
])
def test_restore_refuses_a_data_directory_inside_or_above_what_lives_elsewhere(site, cluster, outside, where,
                                                                                expected):
    (outside / "link").symlink_to(cluster.root / "data")
    places = {"source": cluster.root / "data", "link": outside / "link", "store": site.store,
              "staging": site.home / "staging", "project": site.home / "restored"}
    head, _, rest = where.partition("/")
    data = places[head] / rest if head in places else Path(where)
    with pytest.raises(AirflowFailException, match=f"data_directory {data}.* {expected}.*nothing was changed"):
        restore(site, data, "unsafe")
    assert not data.exists() or where == "/"
    assert not (site.home / "staging").exists() or not any((site.home / "staging").iterdir()), "nothing fetched"


def test_restore_with_the_source_down_checks_the_data_directory_its_base_backups_recorded(site, cluster, monkeypatch):
    backup(site, "recorded")
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{site.name.upper()}", f"postgresql://postgres:x@127.0.0.1:{free_port()}/x")
    inside = cluster.root / "data" / "copy"
    with pytest.raises(AirflowFailException, match="is inside the source's data directory"):
        restore(site, inside, "source-down")
    assert not inside.exists()


def test_a_failed_restore_of_a_directory_it_never_made_does_not_say_it_was_removed(site, outside):
    never = outside / "never"
    with pytest.raises(AirflowFailException, match=f"no base backup .*; nothing was written to {never}$") as raised:
        restore(site, never, "no-backup")
    assert "was removed" not in str(raised.value) and not never.exists()


def restore_in_child(name: str, data: str, run_id: str, target_time: str) -> None:
    """Run a restore in a child process (killed by the test)."""
    RestorePitrOperator(task_id="restore", target=name, target_time=target_time,
                        data_directory=data).execute(context(run_id=run_id))


def test_a_killed_restores_leftovers_are_named_and_removed_by_the_next_run(site, outside):
    """kill -9 of a restore while its server recovers leaves its work directory, its socket directory under
    /tmp, the server and a half-made data directory; the next run stops and removes them all, then restores."""
    backup(site, "kill-base")
    insert(site, 1, 3000)
    target = server_time(site).isoformat()
    time.sleep(0.05)
    ship(site)
    config = load_config(site.config)
    dead_staging = _run_dir(config, site.name, "basebackup", "killed-backup")  # a killed base backup's
    dead_staging.mkdir(parents=True)
    (dead_staging / ".lock").touch()
    (dead_staging / "base.tar.zst").write_bytes(b"x" * 1000)
    data = outside / "restored"
    child = subprocess.Popen([sys.executable, "-c", "import sys; from tests.backup.test_pitr import restore_in_child; "
                              "restore_in_child(*sys.argv[1:])", site.name, str(data), "killed", target],
                             cwd=ROOT, env=os.environ.copy())
    deadline = time.monotonic() + 120
    while not (data / "postmaster.pid").exists() and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.01)
    child.kill()
    child.wait()
    work = _run_dir(config, site.name, "restore_pitr", "killed")
    assert (data / "dbops_restore.json").exists() and work.is_dir(), "the killed run left its directories"
    assert (data / "postmaster.pid").exists(), "and its server"
    socket_dir = Path((work / "socket_dir").read_text())
    assert socket_dir.is_dir()

    restored = restore(site, data, "after-kill", target)
    assert restored["chain"] and not (data / "dbops_restore.json").exists() and (data / "PG_VERSION").exists()
    assert not work.exists() and not socket_dir.exists() and not dead_staging.exists()
    assert not [p for p in (site.home / "staging").iterdir() if "restore_pitr" in p.name]
    running = [p for p in psutil.process_iter(["cmdline"]) if str(data) in " ".join(p.info["cmdline"] or [])]
    assert running == [], "the killed run's server was stopped"


def test_a_marked_data_directory_is_removed_only_once_the_restore_that_made_it_is_gone(site, outside):
    from dbops.core.scratch import claimed

    data, owner = outside / "marked", outside / "owner"
    data.mkdir()
    (data / "PG_VERSION").write_text("18")
    (data / "dbops_restore.json").write_text(json.dumps({"target": site.name, "run_id": "other-run",
                                                         "root": str(owner), "started_at": "2026-12-01T00:00:00"}))
    with claimed(owner):  # the run that makes it still works
        with pytest.raises(AirflowFailException, match="is being restored by pg_restore_pitr__.* run other-run .*still "
                                                       "running"):
            restore(site, data, "while-running")
    assert (data / "PG_VERSION").exists()
    with pytest.raises(AirflowFailException, match="no base backup"):  # the leftover removed, then nothing to restore
        restore(site, data, "after-it-died")
    assert not data.exists()


def test_restore_into_a_directory_with_content_refuses_and_keeps_every_file(site, outside):
    occupied = outside / "occupied"
    occupied.mkdir()
    (occupied / "PG_VERSION").write_text("someone else's cluster")
    with pytest.raises(AirflowFailException, match="exists and is not empty, and no dbops restore made it .*name a "
                                                   "new directory"):
        RestorePitrOperator(task_id="restore", target=site.name, target_time="2026-11-30T16:05:00+00:00",
                            data_directory=str(occupied)).execute(context(run_id="occupied"))
    assert (occupied / "PG_VERSION").read_text() == "someone else's cluster"


def test_a_time_no_base_backup_can_reach_names_the_earliest_reachable_time(site):
    with pytest.raises(RecoveryTestFailed, match=f"no base backup of {site.name} with a complete chain .* take one "
                                                 f"\\(trigger pg_basebackup__{site.name}\\)"):
        pitr_test(site, "none-yet", "2026-11-30T16:05:00+00:00")
    backup(site, "only")
    with ops().transaction() as conn:
        only = pitr_catalog.base_backups(conn, site.name)[0]
    end = only.manifest.extra["stop_time"]
    with pytest.raises(RecoveryTestFailed, match=f"is before the oldest base backup kept \\({only.backup_id}; .*"
                                                 f"retention.* earliest time reachable is {re.escape(end)} .*cannot "
                                                 "reach an earlier time"):
        pitr_test(site, "before-all", "2026-11-30T16:05:00+00:00")
    with pytest.raises(RecoveryTestFailed, match=f"is inside base backup {only.backup_id}'s own span .* earliest time "
                                                 f"reachable is {re.escape(end)}"):
        pitr_test(site, "inside", only.taken_at.isoformat())


def test_latest_recovers_everything_shipped(site, outside):
    backup(site, "latest-base")
    insert(site, 1, 3000)
    ship(site)
    result = pitr_test(site, "latest", "latest")
    assert result["ok"] and result["target_time"].startswith("latest") and result["last_transaction_at"]
    with ops().transaction() as conn:
        checks = conn.execute("SELECT checks FROM dbops.recovery_tests WHERE target = %s ORDER BY id DESC LIMIT 1",
                              (site.name,)).fetchone()[0]
    assert checks["target"]["ok"] and checks["target"]["newest_stored_segment"] == max(stored_segments(site))
    restored = restore(site, outside / "latest", "restore-latest", target_time="latest")
    assert restored["target_time"].startswith("latest") and (outside / "latest" / "PG_VERSION").exists()


def test_a_source_wal_compression_the_recovery_build_lacks_fails_before_fetching(site):
    """The embedded PostgreSQL 18 is built without lz4 and zstd: a source cannot use them here, so the base
    backup's record says it does."""
    from dbops.backup.pitr import RecoveryFailed, check_wal_compression

    check_wal_compression(BIN, {"pglz", "on", "off"})
    with pytest.raises(RecoveryFailed, match="wal_compression = lz4, .* built without lz4 .*Available values: "
                                             "pglz, on, off.*Set tools.bin_dir"):
        check_wal_compression(BIN, {"lz4"})
    taken = backup(site, "lz4-source")
    with ops().transaction() as conn:
        conn.execute("UPDATE dbops.backups SET manifest = jsonb_set(manifest, '{extra,wal_compression}', '\"zstd\"') "
                     "WHERE backup_id = %s", (taken["backup_id"],))
    with pytest.raises(RecoveryTestFailed, match="wal_compression = zstd, .* built without zstd"):
        pitr_test(site, "zstd", "latest")
    assert not list((site.home / "staging").glob("*/parts")), "nothing fetched"


def test_a_quiet_database_recovers_to_a_time_after_its_last_write(site):
    """Recovery to a time stops at the first commit after it: shipping commits one every run, so a time
    after the last application write is reachable once a shipping run came after it."""
    backup(site, "quiet")
    insert(site, 1, 100)
    quiet_since = server_time(site)
    time.sleep(0.2)
    ship(site)
    result = pitr_test(site, "quiet-recover", quiet_since.isoformat())
    assert result["ok"] and "recovery stopping before commit" in result["stopped"]
