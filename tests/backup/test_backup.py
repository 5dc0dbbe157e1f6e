"""The nightly backup on the real stack: consistency, idempotence, retention, backfills and every failure path.

The operators are run the way the task runner runs them, `execute(context)` (see conftest.py); the
DAG-level tests use `dag.test()`, which runs the real task runner.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from dbops.backup import catalog
from dbops.backup.staging import staging_dir
from dbops.core.config import load_config
from dbops.core.manifest import MANIFEST_NAME, Manifest, backup_prefix
from dbops.hooks.store import get_store
from dbops.operators.backup import DUMP_FILE, RestoreBackupOperator, TenantExportOperator
from scripts.stack.credentials import pg_password
from scripts.stack.paths import ROOT
from scripts.stack.postgres import admin_connection, conn_uri, libpq_conninfo
from tests.backup import conftest as cf
from tests.backup.conftest import (
    DAY, age_backup, backup, catalog_row, context, dag, full_backups, on_time, ops, raised, retention, store, verify,
)
from tests.conftest import free_port, smtp_connection, start_moto


def test_counts_in_the_manifest_match_the_snapshot_and_the_restore(target):
    result = backup()
    manifest = Manifest.from_json(store().read_bytes(f"{result['backup_id']}/{MANIFEST_NAME}"))
    with psycopg.connect(libpq_conninfo(target.database)) as conn:
        expected = {f"public.{t}": conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                    for t in ("customers", "orders", "events_2026_10", "events_2026_11")}
    assert manifest.tables == expected and expected["public.orders"] == 30000 - 30000 // 7
    assert any(" p " in c for c in manifest.constraints) and any(" f " in c for c in manifest.constraints)
    assert manifest.server_version.startswith("18.") and manifest.tool.startswith("pg_dump 18.")
    assert manifest.files[0].bytes == (target.tmp / "store" / result["backup_id"] / DUMP_FILE).stat().st_size
    outcome = verify(result["backup_id"])
    assert outcome["verified"] is True
    assert catalog_row(result["backup_id"]) == (True, "complete", manifest.total_rows)
    verified = Manifest.from_json(store().read_bytes(f"{result['backup_id']}/{MANIFEST_NAME}")).verification
    assert verified["ok"] and verified["checks"]["row_counts"]["mismatched"] == {}
    assert not target.staging.exists() or not any(target.staging.iterdir())


def test_writes_during_the_dump_do_not_change_what_is_counted(target):
    """Rows inserted while pg_dump runs are in neither the counts nor the dump (one snapshot)."""
    stop = threading.Event()

    def write_continuously():
        with psycopg.connect(libpq_conninfo(target.database), autocommit=True) as conn:
            n = 100_000
            while not stop.is_set():
                conn.execute("INSERT INTO orders VALUES (%s, 1, 1, now())", (n,))
                n += 1

    writer = threading.Thread(target=write_continuously)
    writer.start()
    try:
        result = backup()
    finally:
        stop.set()
        writer.join()
    assert verify(result["backup_id"])["verified"] is True


def test_retried_task_finds_its_runs_backup_and_never_overwrites_it(target):
    first = backup()
    dump_file = target.tmp / "store" / first["backup_id"] / DUMP_FILE
    before = (dump_file.stat().st_mtime_ns, dump_file.read_bytes())
    second = backup()
    assert second["backup_id"] == first["backup_id"]
    assert (dump_file.stat().st_mtime_ns, dump_file.read_bytes()) == before
    assert [p.name for p in (target.tmp / "store" / cf.NAME / "full").iterdir()] == [first["backup_id"].split("/")[-1]]


def test_folders_of_incomplete_attempts_are_removed(target):
    crashed = backup_prefix(cf.NAME, "full", DAY)
    store().put_bytes(f"{crashed}/{DUMP_FILE}", b"half a dump from a crashed attempt")
    store().put_bytes(f"{crashed}/stray.tmp", b"junk")
    result = backup()
    assert store().list_keys(cf.NAME) == [f"{result['backup_id']}/{DUMP_FILE}", f"{result['backup_id']}/{MANIFEST_NAME}"]
    assert verify(result["backup_id"])["verified"] is True


def test_two_backups_in_one_second_get_two_names(target):
    first = backup(on_time("first"))
    manifest = store().read_bytes(f"{first['backup_id']}/{MANIFEST_NAME}")
    now = datetime.now(timezone.utc)
    taken = [backup_prefix(cf.NAME, "full", now + timedelta(seconds=n)) for n in range(4)]
    for prefix in taken:  # the next seconds already name a complete backup
        store().put_bytes(f"{prefix}/{MANIFEST_NAME}", manifest)
    second = backup(on_time("second"))
    assert second["backup_id"] not in [first["backup_id"], *taken]
    assert store().exists(f"{second['backup_id']}/{DUMP_FILE}")


def test_backup_is_named_by_its_snapshot_time_and_catalogs_its_provenance(target):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    result = backup(context(logical_date=None, run_id="manual__now", run_type="manual"))
    after = datetime.now(timezone.utc)
    ((backup_id, status, taken_at, covers, run_type, storage),) = full_backups()
    assert before <= taken_at <= after
    assert result["backup_id"] == backup_id == backup_prefix(cf.NAME, "full", taken_at)
    assert (status, covers, run_type, storage) == ("complete", None, "manual", "local")
    logical_date = ops().get_first("SELECT logical_date FROM dbops.backups WHERE backup_id = %s",
                                   parameters=(backup_id,))[0]
    assert logical_date == DAY + timedelta(hours=1)  # run_after, for a run without a logical date
    manifest = Manifest.from_json(store().read_bytes(f"{backup_id}/{MANIFEST_NAME}"))
    assert (manifest.taken_at, manifest.covers, manifest.run_type, manifest.storage) == (
        taken_at.isoformat(), None, "manual", "local")


def _terminate_pg_dump_when_it_waits(database: str, found: list) -> None:
    with admin_connection() as conn:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not found:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s AND application_name = 'dbops' "
                "AND wait_event_type = 'Lock'", (database,)).fetchall()
            for (pid,) in rows:
                conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                found.append(pid)
            time.sleep(0.05)


def test_target_dies_mid_dump_then_the_retry_completes(target):
    """pg_dump's server process is terminated mid-dump (as in a crash or restart): retry, no manifest."""
    blocker = psycopg.connect(libpq_conninfo(target.database))
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # holds pg_dump at the start of its work
    found: list = []
    killer = threading.Thread(target=_terminate_pg_dump_when_it_waits, args=(target.database, found))
    killer.start()
    try:
        with pytest.raises(AirflowException) as info:
            backup()
    finally:
        killer.join()
        blocker.rollback()
        blocker.close()
    assert found, "pg_dump was never seen waiting"
    assert not isinstance(info.value, AirflowFailException), info.value
    assert "transient" in str(info.value)
    assert not [key for key in store().list_keys(cf.NAME) if key.endswith(MANIFEST_NAME)]
    retried = backup()
    assert verify(retried["backup_id"])["verified"] is True


def test_lock_held_past_the_timeout_fails_as_transient(target):
    blocker = psycopg.connect(libpq_conninfo(target.database))
    blocker.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
    try:
        with pytest.raises(AirflowException, match="lock timeout|statement timeout.*LOCK TABLE") as info:
            backup()
    finally:
        blocker.rollback()
        blocker.close()
    assert not isinstance(info.value, AirflowFailException)
    assert not store().list_keys(cf.NAME)


def test_unreachable_store_retries_and_keeps_the_staged_dump(target, monkeypatch):
    """The S3 server stops while pg_dump runs: transient failure, no manifest; the retry stores the staged dump."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AIRFLOW_CONN_AWS_BKTEST", json.dumps({
        "conn_type": "aws", "login": "testing", "password": "testing",
        "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}}))
    config = target.config_path.read_text().replace("storage: local,", "storage: s3,").replace(
        "storage:\n", "storage:\n  s3: {url: 's3://bkt/prod', aws_conn_id: aws_bktest}\n", 1)
    target.config_path.write_text(config)

    def s3_server():
        server = start_moto(port)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket="bkt")
        return server

    moto = s3_server()
    blocker = psycopg.connect(libpq_conninfo(target.database))
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here while S3 goes away
    outcome: list = []
    attempt = threading.Thread(target=lambda: outcome.append(raised(backup)))
    attempt.start()
    _wait_for_pg_dump_lock_wait(target.database)
    moto.terminate()
    moto.wait(timeout=10)
    blocker.rollback()
    blocker.close()
    attempt.join(timeout=120)
    error = outcome[0]
    assert isinstance(error, AirflowException) and not isinstance(error, AirflowFailException), error
    assert "dump stays staged" in str(error)
    staged = staging_dir(load_config(), cf.NAME, "test_run")
    staged_sha = json.loads((staged / "staged.json").read_text())["dump"]["sha256"]
    moto = s3_server()  # S3 is back, empty: nothing of the failed attempt is there
    try:
        result = backup()
        s3 = get_store(load_config().storage["s3"])
        manifest = Manifest.from_json(s3.read_bytes(f"{result['backup_id']}/{MANIFEST_NAME}"))
        assert manifest.files[0].sha256 == staged_sha, "the retry stored the staged dump, not a new one"
        assert not staged.exists()
        assert verify(result["backup_id"])["verified"] is True
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def _wait_for_pg_dump_lock_wait(database: str) -> None:
    with admin_connection() as conn:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s AND application_name = 'dbops' "
                            "AND wait_event_type = 'Lock'", (database,)).fetchone():
                return
            time.sleep(0.05)
    raise TimeoutError("pg_dump was never seen waiting for its lock")


def test_corrupted_stored_file_fails_verification_and_blocks_retention(target):
    older = backup(on_time("older"))
    verify(older["backup_id"], run_id="older")
    age_backup(older["backup_id"], 3)
    newest = backup(on_time("newest"))
    stored = target.tmp / "store" / newest["backup_id"] / DUMP_FILE
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0x01
    stored.write_bytes(data)
    with pytest.raises(AirflowFailException, match=f"FAILED: checksums: {DUMP_FILE}: sha256"):
        verify(newest["backup_id"])
    assert catalog_row(newest["backup_id"])[0] is False
    tests = ops().get_records("SELECT ok, checks->'checksums'->>'error' FROM dbops.recovery_tests "
                              "WHERE backup_id = %s", parameters=(newest["backup_id"],))
    assert len(tests) == 1 and tests[0][0] is False and DUMP_FILE in tests[0][1]
    assert retention()["deleted"] == []
    assert store().exists(f"{older['backup_id']}/{MANIFEST_NAME}")
    assert catalog_row(older["backup_id"])[1] == "complete" and catalog_row(newest["backup_id"])[1] == "complete"


def test_retention_deletes_manifest_first_and_records_last(target):
    ids = []
    for days_ago in (3, 2, 1, 0):
        run = f"r{days_ago}"
        made = backup(on_time(run))
        verify(made["backup_id"], run_id=run)
        age_backup(made["backup_id"], days_ago)
        ids.append(made["backup_id"])
    result = retention()
    assert sorted(result["deleted"]) == sorted(ids[:2])
    for gone in ids[:2]:
        assert store().list_keys(gone) == []
        assert catalog_row(gone)[1] == "deleted"
    for kept in ids[2:]:
        assert store().exists(f"{kept}/{MANIFEST_NAME}") and catalog_row(kept)[1] == "complete"


def test_manual_backup_never_deletes_the_days_scheduled_backup(target):
    target.config_path.write_text(target.config_path.read_text().replace("daily: 2", "daily: 1"))
    scheduled = backup(on_time("scheduled__tonight"))
    verify(scheduled["backup_id"], run_id="scheduled__tonight")
    manual = backup(on_time("manual__later", run_type="manual"))
    verify(manual["backup_id"], run_id="manual__later")
    assert retention()["deleted"] == []
    assert catalog_row(scheduled["backup_id"])[1] == catalog_row(manual["backup_id"])[1] == "complete"
    assert store().exists(f"{scheduled['backup_id']}/{MANIFEST_NAME}")


def test_retention_runs_one_at_a_time_per_target(target):
    from dbops.core.locks import JobBusy, job_lock

    made = backup(on_time("r1"))
    verify(made["backup_id"], run_id="r1")
    age_backup(made["backup_id"], 5)
    newer = backup(on_time("r2"))
    verify(newer["backup_id"], run_id="r2")
    target.config_path.write_text(target.config_path.read_text().replace("daily: 2", "daily: 0"))
    with job_lock("dbops_state", cf.NAME, "retention"), pytest.raises(JobBusy, match=f"retention of {cf.NAME} is already"):
        retention()
    assert catalog_row(made["backup_id"])[1] == "complete", "a skipped retention deleted nothing"
    assert retention()["deleted"] == [made["backup_id"]]


def _wait_for_ops_lock_wait(statement: str) -> None:
    """Until a backend of the test ops database waits for a lock in ``statement``."""
    with psycopg.connect(libpq_conninfo("dbops_test"), autocommit=True) as conn:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_stat_activity WHERE datname = 'dbops_test' AND wait_event_type = 'Lock' "
                            "AND query LIKE %s", (f"%{statement}%",)).fetchone():
                return
            time.sleep(0.05)
    raise TimeoutError(f"no backend was seen waiting in {statement!r}")


def test_verification_never_rewrites_the_manifest_of_a_backup_being_deleted(target):
    """Retention deletes a backup while its verification runs: the verification must not re-complete it.

    The race is made deterministic with the catalog row's lock: the test holds it FOR UPDATE, which
    pauses the verification before it records its outcome; meanwhile the test does what retention
    does, marks the row deleting and deletes the manifest and the files.
    """
    made = backup()
    backup_id = made["backup_id"]
    manifest = Manifest.from_json(store().read_bytes(f"{backup_id}/{MANIFEST_NAME}"))
    with psycopg.connect(libpq_conninfo("dbops_test")) as deleter:
        deleter.execute("SELECT 1 FROM dbops.backups WHERE backup_id = %s FOR UPDATE", (backup_id,))
        outcome: list = []
        verifying = threading.Thread(target=lambda: outcome.append(raised(lambda: verify(backup_id))))
        verifying.start()
        _wait_for_ops_lock_wait("INSERT INTO dbops.recovery_tests")  # its foreign key waits for the row
        deleter.execute("UPDATE dbops.backups SET status = 'deleting' WHERE backup_id = %s", (backup_id,))
        store().delete(f"{backup_id}/{MANIFEST_NAME}")
        for key in store().list_keys(backup_id):
            store().delete(key)
        deleter.commit()
        verifying.join(timeout=120)
    assert isinstance(outcome[0], AirflowFailException), outcome
    assert f"backup {backup_id} is deleting in the catalog; its manifest is not rewritten" in str(outcome[0])
    assert store().list_keys(backup_id) == [], "no manifest without data behind it"
    with pytest.raises(AirflowFailException, match="is not recorded as complete again"):
        with ops().transaction() as conn:
            catalog.record_backup(conn, manifest)  # nor re-recorded by a late backup task
    assert catalog_row(backup_id)[1] == "deleting"
    later = backup(context(DAY, run_id="backfill__again", run_type="backfill"))
    assert later["backup_id"] != backup_id, "a later run for its period does not take it for complete"


def test_retention_waits_for_a_manifest_being_rewritten(target):
    """A verification rewriting a manifest holds a share lock on the row; retention's deletion waits for it."""
    older = backup(on_time("older"))
    verify(older["backup_id"], run_id="older")
    age_backup(older["backup_id"], 3)
    newer = backup(on_time("newer"))
    verify(newer["backup_id"], run_id="newer")
    target.config_path.write_text(target.config_path.read_text().replace("daily: 2", "daily: 0"))
    with psycopg.connect(libpq_conninfo("dbops_test")) as verifier:
        verifier.execute("SELECT 1 FROM dbops.backups WHERE backup_id = %s FOR SHARE", (older["backup_id"],))
        outcome: list = []
        deleting = threading.Thread(target=lambda: outcome.append(retention()))
        deleting.start()
        _wait_for_ops_lock_wait("UPDATE dbops.backups SET status = 'deleting'")
        assert store().exists(f"{older['backup_id']}/{MANIFEST_NAME}"), "nothing deleted while the lock is held"
        verifier.commit()
        deleting.join(timeout=60)
    assert outcome == [{"kept": [newer["backup_id"]], "deleted": [older["backup_id"]]}]
    assert store().list_keys(older["backup_id"]) == []


def rewrite(manifest: Manifest) -> None:
    with ops().transaction() as conn:
        catalog.rewrite_manifest(conn, store(), manifest)


def test_manifest_is_never_written_when_a_file_is_missing_or_short(target):
    made = backup()
    manifest = Manifest.from_json(store().read_bytes(f"{made['backup_id']}/{MANIFEST_NAME}"))
    dump_file = target.tmp / "store" / made["backup_id"] / DUMP_FILE
    dump_file.write_bytes(dump_file.read_bytes()[:-1])
    with pytest.raises(AirflowFailException, match=f"{DUMP_FILE} is {manifest.files[0].bytes - 1} bytes in the "
                                                   "store, the manifest says"):
        rewrite(manifest)
    dump_file.unlink()
    store().delete(f"{made['backup_id']}/{MANIFEST_NAME}")
    with pytest.raises(AirflowFailException, match=f"{DUMP_FILE} is missing in the store"):
        rewrite(manifest)
    assert store().list_keys(made["backup_id"]) == []


def test_permission_denied_fails_at_once_with_what_to_fix(target, monkeypatch):
    role = f"reader_{target.database[-8:]}"
    with psycopg.connect(libpq_conninfo(target.database), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader-secret-1'")
        conn.execute(f"GRANT SELECT ON customers, orders TO {role}")  # not events
    try:
        monkeypatch.setenv(f"AIRFLOW_CONN_PG_{cf.NAME.upper()}", conn_uri(target.database).replace(
            f"postgres:{pg_password()}", f"{role}:reader-secret-1"))
        with pytest.raises(AirflowFailException, match="permission denied.*pg_read_all_data"):
            backup()
    finally:
        with psycopg.connect(libpq_conninfo(target.database), autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def restore(database: str, backup_id: str = "latest-verified", overwrite: bool = False) -> dict:
    return RestoreBackupOperator(task_id="restore", target=cf.NAME, backup_id=backup_id, database=database,
                                 overwrite=overwrite).execute(context())


def test_restore_on_demand_into_a_new_database(target, scratch_db):
    made = backup()
    verify(made["backup_id"])
    fresh = f"{target.database}_restored"
    try:
        result = restore(fresh)
        assert result["backup_id"] == made["backup_id"]
        with psycopg.connect(libpq_conninfo(fresh)) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 30000 - 30000 // 7
        with pytest.raises(AirflowFailException, match="exists; choose a new name or set overwrite"):
            restore(fresh)
        with psycopg.connect(libpq_conninfo(fresh), autocommit=True) as conn:
            conn.execute("DELETE FROM orders")
        restore(fresh, backup_id=made["backup_id"], overwrite=True)
        with psycopg.connect(libpq_conninfo(fresh)) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 30000 - 30000 // 7
    finally:
        with admin_connection() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')


def test_restore_refuses_the_targets_own_database_and_bad_names(target):
    backup()
    with pytest.raises(AirflowFailException, match="the target's own database"):
        restore(target.database, backup_id="latest", overwrite=True)
    with pytest.raises(AirflowFailException, match="1 to 63 bytes"):
        restore("x" * 64, backup_id="latest")
    with psycopg.connect(libpq_conninfo(target.database)) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 2000


def test_restore_of_a_corrupted_backup_verifies_checksums_first(target):
    made = backup()
    stored = target.tmp / "store" / made["backup_id"] / DUMP_FILE
    stored.write_bytes(stored.read_bytes()[:-10])
    fresh = f"{target.database}_bad"
    with pytest.raises(AirflowFailException, match="stored size .* differs"):
        restore(fresh, backup_id="latest")
    with psycopg.connect(libpq_conninfo("postgres")) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (fresh,)).fetchone()[0] == 0


def test_no_verified_backup_is_a_clear_error(target):
    backup()
    with pytest.raises(AirflowFailException, match="has no verified backup"):
        restore(f"{target.database}_none")


def test_backfilling_three_missed_nights_makes_one_backup_of_today(target):
    backup_dag = dag(f"pg_backup__{cf.NAME}")
    dates = [DAY - timedelta(days=n) for n in (12, 11, 10)]
    before = datetime.now(timezone.utc).replace(microsecond=0)
    for date in dates:
        run = backup_dag.test(logical_date=date)
        assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    ((backup_id, status, taken_at, covers, run_type, storage),) = full_backups()
    assert taken_at >= before, "named and catalogued by its snapshot time, today"
    assert (status, covers, run_type, storage) == ("complete", dates[0], "manual", "local")
    assert catalog_row(backup_id)[0] is True
    assert [p.name for p in (target.tmp / "store" / cf.NAME / "full").iterdir()] == [backup_id.split("/")[-1]]


def test_run_for_a_past_period_reuses_a_newer_backup_or_takes_one_now(target):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    first = backup(context(DAY - timedelta(days=2), run_id="scheduled__missed", run_type="scheduled"))
    assert "covered_period" not in first
    ((backup_id, _, taken_at, covers, run_type, _),) = full_backups()
    assert first["backup_id"] == backup_id == backup_prefix(cf.NAME, "full", taken_at) and taken_at >= before
    assert (covers, run_type) == (DAY - timedelta(days=2), "scheduled")
    again = backup(context(DAY - timedelta(days=1), run_id="backfill__next", run_type="backfill"))
    assert again["backup_id"] == backup_id and again["covered_period"] == (DAY - timedelta(days=1)).isoformat()
    assert len(full_backups()) == 1
    ops().run("UPDATE dbops.backups SET verified = false WHERE backup_id = %s", parameters=(backup_id,))
    fresh = backup(context(DAY, run_id="backfill__last", run_type="backfill"))
    assert fresh["backup_id"] != backup_id, "a backup that failed verification covers no period"
    assert len(full_backups()) == 2


def test_past_period_run_passes_over_a_catalogued_backup_gone_from_the_store(target, capsys):
    """The store is the truth: a catalogued backup whose folder is gone is not reused, the next one is."""
    import shutil

    gone = backup(on_time("scheduled__first"))["backup_id"]
    kept = backup(on_time("scheduled__second"))["backup_id"]
    shutil.rmtree(target.tmp / "store" / gone)
    reused = backup(context(DAY, run_id="backfill__late", run_type="backfill"))
    assert reused["backup_id"] == kept and reused["covered_period"] == DAY.isoformat()
    assert len(full_backups()) == 2, "nothing dumped"
    assert f"the catalog lists backup {gone} as complete but" in capsys.readouterr().out


def test_a_deleted_backups_name_is_never_reused(target):
    """Backups are named by their snapshot second: a second whose backup retention deleted is not free."""
    from dbops.backup.store_io import free_snapshot_time

    made = backup()["backup_id"]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    taken = [backup_prefix(cf.NAME, "full", now + timedelta(seconds=k)) for k in range(4)]
    for backup_id in set(taken) - {made}:  # what retention leaves: catalog rows 'deleted', nothing in the store
        ops().run("INSERT INTO dbops.backups (backup_id, target, kind, logical_date, run_id, location, bytes, tables, "
                  "total_rows, status, manifest, deleted_at) SELECT %s, target, kind, logical_date, run_id, location, "
                  "bytes, tables, total_rows, 'deleted', manifest, now() FROM dbops.backups WHERE backup_id = %s",
                  parameters=(backup_id, made))
    free = backup_prefix(cf.NAME, "full", free_snapshot_time(store(), ops(), cf.NAME))
    assert free not in taken and free > taken[-1]


def test_nightly_verification_does_not_restore_a_backup_verified_earlier(target):
    """A backfill reusing last night's verified backup does not restore it again; on demand, it does."""
    from dbops.operators.backup import VerifyBackupOperator

    made = backup()["backup_id"]
    first = VerifyBackupOperator(task_id="verify", target=cf.NAME, backup_id=made, reverify=False).execute(context())
    assert first["verified"] is True and "verified_earlier" not in first  # never verified: restored all the same
    tests_before = ops().get_first("SELECT count(*) FROM dbops.recovery_tests WHERE backup_id = %s",
                                   parameters=(made,))[0]
    result = VerifyBackupOperator(task_id="verify", target=cf.NAME, backup_id=made, reverify=False).execute(
        context(run_id="backfill__reuse"))
    assert result["verified"] is True and result["verified_earlier"] is True
    assert ops().get_first("SELECT count(*) FROM dbops.recovery_tests WHERE backup_id = %s",
                           parameters=(made,))[0] == tests_before, "no restore, no new recovery test"
    assert verify(made, run_id="on_demand")["verified"] is True
    assert ops().get_first("SELECT count(*) FROM dbops.recovery_tests WHERE backup_id = %s",
                           parameters=(made,))[0] == tests_before + 1


def test_failed_verification_notifies_by_email(target, monkeypatch, mailbox, smtp_server):
    """pg_verify_backup on a corrupted backup: the task fails at once and the notifier emails the DBA."""
    smtp_connection(monkeypatch, "smtp_bk", smtp_server.port)
    target.config_path.write_text(target.config_path.read_text().replace(
        "ops_conn_id: dbops_state\n", "ops_conn_id: dbops_state\nnotifications:\n  email: "
        "{to: [dba@example.com], from_email: dbops@example.com, smtp_conn_id: smtp_bk}\n").replace(
        "lock_wait_timeout: 2s}", "lock_wait_timeout: 2s, notify: [log, email]}"))
    made = backup()
    stored = target.tmp / "store" / made["backup_id"] / DUMP_FILE
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(data)
    run = dag(f"pg_verify_backup__{cf.NAME}").test(run_conf={"backup_id": made["backup_id"]})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"create_scratch": "success", "verify_restore": "failed", "drop_scratch": "success"}
    assert len(mailbox.messages) == 1
    message = mailbox.messages[0]
    assert message["Subject"] == f"pg_verify_backup__{cf.NAME} failed: verify_restore"
    body = message.get_body(preferencelist=("html",)).get_content()
    assert "checksums" in body and DUMP_FILE in body
    assert "safe to re-run" not in body and "do not re-run this task" in body, "a bad backup is not fixed by a re-run"
    assert catalog_row(made["backup_id"])[0] is False


def test_encrypted_backup_round_trip_and_wrong_key(target, monkeypatch):
    import base64
    import os as _os

    key = base64.b64encode(_os.urandom(32)).decode()
    monkeypatch.setenv("AIRFLOW_CONN_BK_KEY", json.dumps({"conn_type": "generic", "password": key}))
    target.config_path.write_text(target.config_path.read_text().replace(
        "lock_wait_timeout: 2s}", "lock_wait_timeout: 2s, encryption_conn_id: bk_key}"))
    made = backup()
    stored = (target.tmp / "store" / made["backup_id"] / DUMP_FILE).read_bytes()
    assert stored.startswith(b"DBOPS-AES256GCM-1\n") and b"customer 1" not in stored
    assert verify(made["backup_id"], run_id="right-key")["verified"] is True
    monkeypatch.setenv("AIRFLOW_CONN_BK_KEY", json.dumps(
        {"conn_type": "generic", "password": base64.b64encode(_os.urandom(32)).decode()}))
    with pytest.raises(AirflowFailException, match="fails authentication"):
        verify(made["backup_id"], run_id="wrong-key")


def test_encryption_key_that_is_not_32_bytes_is_refused(target, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_BK_KEY", json.dumps({"conn_type": "generic", "password": "too-short"}))
    target.config_path.write_text(target.config_path.read_text().replace(
        "lock_wait_timeout: 2s}", "lock_wait_timeout: 2s, encryption_conn_id: bk_key}"))
    with pytest.raises(AirflowFailException, match="base64-encoded 32-byte key"):
        backup()
    assert not store().list_keys(cf.NAME)


def test_too_old_pg_dump_fails_at_once(target):
    """The real server (18) and Debian's real pg_dump 15, pinned with tools.exclusive: permanent, nothing stored."""
    target.config_path.write_text(target.config_path.read_text().replace(
        "ops_conn_id: dbops_state\n",
        "ops_conn_id: dbops_state\ntools: {bin_dir: /usr/lib/postgresql/15/bin, exclusive: true}\n"))
    with pytest.raises(AirflowFailException, match=r"pg_dump must be version 18 or newer .*pg_dump is 15\."):
        backup()
    assert not store().list_keys(cf.NAME)


def test_too_little_staging_space_fails_before_dumping(target, monkeypatch):
    """FAKE: the free space is reported as 1 MiB; filling a real disk is not something a test may do."""
    import shutil as _shutil

    real = _shutil.disk_usage
    monkeypatch.setattr("shutil.disk_usage", lambda path: real(path)._replace(free=2**20))
    with pytest.raises(AirflowFailException, match="has 1 MiB free; the dump of .* may need up to"):
        backup()
    assert not store().list_keys(cf.NAME)


@pytest.fixture
def tenant_target(target):
    with psycopg.connect(libpq_conninfo(target.database)) as conn:
        conn.execute("""
            CREATE TABLE invoices (id int PRIMARY KEY, tenant_id int NOT NULL, amount numeric, note text);
            CREATE TABLE audit (id bigint, tenant_id int NOT NULL, action text);
            INSERT INTO invoices SELECT g, g % 10, g * 1.5, 'line "' || g || '", with comma' FROM generate_series(1, 5000) g;
            INSERT INTO audit SELECT g, g % 10, 'act' FROM generate_series(1, 3000) g;
        """)
    target.config_path.write_text(target.config_path.read_text().replace(
        "lock_wait_timeout: 2s}", "lock_wait_timeout: 2s, tenant_tables: [invoices, public.audit]}"))
    return target


def export(tenant_id: str) -> dict:
    return TenantExportOperator(task_id="export", target=cf.NAME, tenant_id=tenant_id).execute(context())


def test_tenant_export_holds_exactly_that_tenants_rows(tenant_target, tmp_path):
    import csv

    from dbops.core.streams import read_decompressed

    result = export("7")
    assert result["backup_id"] == f"{cf.NAME}/tenant/7/20261120T020000Z"
    manifest = Manifest.from_json(store().read_bytes(f"{result['backup_id']}/{MANIFEST_NAME}"))
    assert manifest.kind == "tenant" and manifest.tenant_id == "7"
    assert manifest.tables == {"invoices": 500, "public.audit": 300}
    for entry in manifest.files:
        raw = tmp_path / entry.name.removesuffix(".zst")
        read_decompressed(tenant_target.tmp / "store" / result["backup_id"] / entry.name, raw, entry.sha256)
        rows = list(csv.DictReader(raw.open()))
        assert len(rows) == manifest.tables[entry.name.removesuffix(".csv.zst")]
        assert {row["tenant_id"] for row in rows} == {"7"}
    assert export("7")["backup_id"] == result["backup_id"]  # same date again: kept, not rewritten


def test_tenant_export_is_catalogued_and_deleted_after_tenant_retention(tenant_target):
    old = export("7")
    kept = export("8")
    age_backup(old["backup_id"], 60)
    result = retention()  # run date DAY: exports taken before DAY - 30 days go
    assert result["deleted"] == [old["backup_id"]] and kept["backup_id"] in result["kept"]
    assert store().list_keys(old["backup_id"]) == [] and catalog_row(old["backup_id"])[1] == "deleted"
    assert store().exists(f"{kept['backup_id']}/{MANIFEST_NAME}") and catalog_row(kept["backup_id"])[1] == "complete"


def test_tenant_export_reads_back_what_was_stored(tenant_target, monkeypatch):
    """FAKE: the store flips one byte of what it is given (bit rot, a faulty proxy); no real disk does it on cue."""
    from dbops.hooks.store import LocalStore

    real_put_file = LocalStore.put_file

    def corrupting_put_file(self, path, key):
        real_put_file(self, path, key)
        stored = self._path(key)
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0x01
        stored.write_bytes(data)

    monkeypatch.setattr(LocalStore, "put_file", corrupting_put_file)
    with pytest.raises(AirflowFailException, match="stored sha256 differs from the staged file's"):
        export("7")
    assert not [key for key in store().list_keys(cf.NAME) if key.endswith(MANIFEST_NAME)]


@pytest.mark.parametrize(("tenant_id", "message"), [
    ("7' OR '1'='1", "must be 1-128 letters"),
    ("../../etc", "must be 1-128 letters"),
    ("abc", "not a valid tenant_id value"),
])
def test_hostile_or_bad_tenant_ids_change_nothing(tenant_target, tenant_id, message):
    with pytest.raises(AirflowFailException, match=message):
        export(tenant_id)
    assert store().list_keys(cf.NAME) == []


def test_directory_format_with_parallel_dump_round_trip(target):
    target.config_path.write_text(target.config_path.read_text().replace(
        "lock_wait_timeout: 2s}", "lock_wait_timeout: 2s, format: directory, dump_jobs: 2}"))
    made = backup()
    manifest = Manifest.from_json(store().read_bytes(f"{made['backup_id']}/{MANIFEST_NAME}"))
    assert [f.name for f in manifest.files] == ["dump.dir.tar.zst"]
    assert manifest.compression["archive"].startswith("pg_dump directory") and manifest.compression["dump_jobs"] == 2
    assert manifest.tables["public.orders"] == 30000 - 30000 // 7
    outcome = verify(made["backup_id"])
    assert outcome["verified"] is True
    assert not list((target.tmp / "staging").rglob("*.d"))


def summary_line(output: str, verdict: str) -> str:
    """The one log line of ``output`` that starts (after its timestamp and level) with ``verdict``."""
    (line,) = [line for line in output.splitlines() if f"] {verdict}" in line]
    return line


def test_summary_lines_put_the_verdict_first_with_human_sizes_and_the_store_url(target, capsys):
    from dbops.operators.backup import BackupReportOperator

    made = backup()
    stored = summary_line(capsys.readouterr().out, "stored OK: backup ")
    url = f"file://{target.tmp / 'store'}/{made['backup_id']}"
    assert url in stored and re.search(r"\): \d+\.\d KiB \(\d+\.\d MiB raw\)", stored) and f"bytes={made['bytes']}" in stored
    checked = verify(made["backup_id"])
    checks = capsys.readouterr().out
    verified = summary_line(checks, "verified OK: backup ")
    assert url in verified and f"bytes={made['bytes']}" in verified
    xcom = {"dump_and_store": made, "verify_restore": checked}
    BackupReportOperator(task_id="report", target=cf.NAME, backup_task_id="dump_and_store",
                         verify_task_id="verify_restore").execute(context(xcom=xcom))
    report = summary_line(capsys.readouterr().out, "verified OK: backup ")
    assert url in report and re.search(r"\d+\.\d KiB stored", report) and f"bytes={made['bytes']}" in report
    again = backup(context(DAY + timedelta(days=1), run_id="backfill__later", run_type="backfill"))
    assert again["backup_id"] == made["backup_id"]
    assert url in summary_line(capsys.readouterr().out, "complete, nothing dumped: ")
    reused = {"dump_and_store": again, "verify_restore": {**checked, "verified_earlier": True}}
    BackupReportOperator(task_id="report", target=cf.NAME, backup_task_id="dump_and_store",
                         verify_task_id="verify_restore").execute(context(xcom=reused))
    assert "taken earlier; nothing dumped" in summary_line(
        capsys.readouterr().out, "verified OK (by an earlier recovery test; not restored again): backup ")
    with pytest.raises(AirflowSkipException, match="not verified"):
        BackupReportOperator(task_id="report", target=cf.NAME, backup_task_id="dump_and_store",
                             verify_task_id="verify_restore").execute(context(xcom={"dump_and_store": made}))
    assert url in summary_line(capsys.readouterr().out, "FAILED: not verified")
    assert "PASS row_counts" in checks


def test_a_check_that_did_not_run_is_logged_as_skip_with_its_reason():
    from dbops.backup.verify import check_line

    skipped = {"ok": True, "skipped": "no pg_amcheck of version 18 or newer"}
    assert check_line("amcheck", skipped) == "SKIP amcheck: no pg_amcheck of version 18 or newer"
    assert check_line("row_counts", {"ok": False, "mismatched": {"t": 1}}).startswith("FAIL row_counts: ")


KILLED_DUMP = """
import sys
from tests.backup import conftest as cf
cf.NAME = sys.argv[1]
cf.backup(cf.context(run_id="killed_run"))
"""


def _children_of(pid: int) -> list[int]:
    """The pids of the processes whose parent is ``pid`` (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_killed_dump_leaves_no_pg_dump_and_the_next_run_removes_its_staging(target):
    """kill -9 of the task process mid-dump: its pg_dump dies with it, and the next run removes the staging
    directory (a database-sized file in production) instead of leaving it forever."""
    config = target.config_path.read_text()
    target.config_path.write_text(config.replace("lock_wait_timeout: 2s", "lock_wait_timeout: 1h"))  # pg_dump waits
    killed_staging = staging_dir(load_config(), cf.NAME, "killed_run")
    blocker = psycopg.connect(libpq_conninfo(target.database))
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # holds pg_dump mid-dump
    task = subprocess.Popen([sys.executable, "-c", KILLED_DUMP, cf.NAME], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": f"{ROOT / 'plugins'}:{ROOT}"})
    try:
        _wait_for_pg_dump_lock_wait(target.database)
        assert killed_staging.is_dir() and any(killed_staging.iterdir())
        [pg_dump] = _children_of(task.pid)
        os.kill(task.pid, signal.SIGKILL)
        task.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(pg_dump) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pg_dump), "pg_dump outlived the killed task (it would hold its snapshot on the server)"
    finally:
        blocker.rollback()
        blocker.close()
    assert killed_staging.is_dir(), "the kill left its staging directory (what the next run must clean)"

    result = backup(cf.context(run_id="next_run"))

    assert not killed_staging.exists(), "the next run removed the killed run's staging directory"
    assert not staging_dir(load_config(), cf.NAME, "next_run").exists()
    assert verify(result["backup_id"])["verified"] is True
