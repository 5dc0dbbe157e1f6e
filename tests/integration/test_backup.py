"""The nightly backup on the real stack: consistency, idempotence and every failure path of issue 3.

The operators are run the way the task runner runs them, `execute(context)`; the context is a
FAKE minimal stand-in for Airflow's (logical_date, run_id, dag_run, ti), which only a scheduler makes.
The DAG-level tests use `dag.test()`, which runs the real task runner.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.config import load_config
from dbops.hooks.ops import OpsDatabaseHook
from dbops.hooks.store import get_store
from dbops.manifest import MANIFEST_NAME, Manifest, backup_prefix
from dbops.operators.backup import DUMP_FILE, PgBackupOperator
from dbops.operators.restore import RestoreBackupOperator, ScratchDatabaseOperator, VerifyBackupOperator
from dbops.operators.retention import BackupRetentionOperator
from scripts import devstack
from tests.conftest import free_port, smtp_connection, start_moto

NAME = "set by the target fixture"
DAY = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
SCHEMA = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE);
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int NOT NULL REFERENCES customers(id), total numeric(10,2),
                     placed_at timestamptz NOT NULL);
CREATE TABLE events (id bigint, at date NOT NULL, payload jsonb) PARTITION BY RANGE (at);
CREATE TABLE events_2026_10 PARTITION OF events FOR VALUES FROM ('2026-10-01') TO ('2026-11-01');
CREATE TABLE events_2026_11 PARTITION OF events FOR VALUES FROM ('2026-11-01') TO ('2026-12-01');
INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com' FROM generate_series(1, 2000) g;
INSERT INTO orders SELECT g, 1 + g % 2000, (g % 500) * 1.25, '2026-11-01'::timestamptz + g * interval '1 minute'
  FROM generate_series(1, 30000) g;
INSERT INTO events SELECT g, '2026-10-01'::date + (g % 60), jsonb_build_object('n', g) FROM generate_series(1, 20000) g;
DELETE FROM orders WHERE id % 7 = 0;
"""


def context(logical_date: datetime | None = DAY, run_id: str = "test_run", xcom: dict | None = None) -> dict:
    """FAKE minimal Airflow context: what the operators read from it."""
    ti = SimpleNamespace(xcom_pull=lambda task_ids: (xcom or {}).get(task_ids))
    return {"logical_date": logical_date, "run_id": run_id, "ti": ti,
            "dag_run": SimpleNamespace(run_after=DAY + timedelta(hours=1))}


@pytest.fixture
def target(scratch_db, tmp_path, monkeypatch, pg_server):
    """A small target database with PK, unique, FK, partitions and dead rows; its own config and name."""
    global NAME
    database = scratch_db()
    NAME = f"bk_{database[-12:]}"
    with psycopg.connect(devstack.libpq_conninfo(database)) as conn:
        conn.execute(SCHEMA)
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{NAME.upper()}", devstack.conn_uri(database))
    config_path = tmp_path / "dbops.yaml"
    config_path.write_text(f"""
ops_conn_id: dbops_state
staging_dir: {tmp_path / 'staging'}
storage:
  local: {{url: {tmp_path / 'store'}}}
targets:
  {NAME}:
    conn_id: pg_{NAME}
    backup: {{storage: local, retention: {{daily: 2, weekly: 0, monthly: 0}}, jobs: 2, lock_wait_timeout: 2s}}
""")
    monkeypatch.setenv("DBOPS_CONFIG", str(config_path))
    return SimpleNamespace(database=database, config_path=config_path, tmp=tmp_path)


def backup(ctx=None) -> dict:
    return PgBackupOperator(task_id="dump_and_store", target=NAME).execute(ctx or context())


def verify(backup_id: str, run_id: str = "test_run") -> dict:
    ScratchDatabaseOperator(task_id="create_scratch", target=NAME).execute(context(run_id=run_id))
    try:
        return VerifyBackupOperator(task_id="verify", target=NAME, backup_id=backup_id).execute(
            context(run_id=run_id))
    finally:
        ScratchDatabaseOperator(task_id="drop_scratch", target=NAME, drop=True).execute(context(run_id=run_id))


def store():
    config = load_config()
    return get_store(config.storage["local"])


def ops() -> OpsDatabaseHook:
    return OpsDatabaseHook(postgres_conn_id="dbops_state")


def catalog_row(backup_id: str):
    return ops().get_first("SELECT verified, status, total_rows FROM dbops.backups WHERE backup_id = %s",
                           parameters=(backup_id,))


def test_counts_in_the_manifest_match_the_snapshot_and_the_restore(target):
    result = backup()
    manifest = Manifest.from_json(store().read_bytes(f"{result['backup_id']}/{MANIFEST_NAME}"))
    with psycopg.connect(devstack.libpq_conninfo(target.database)) as conn:
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
    assert not (target.tmp / "staging").exists() or not any((target.tmp / "staging").iterdir())


def test_writes_during_the_dump_do_not_change_what_is_counted(target):
    """Rows inserted while pg_dump runs are in neither the counts nor the dump (one snapshot)."""
    stop = threading.Event()

    def write_continuously():
        with psycopg.connect(devstack.libpq_conninfo(target.database), autocommit=True) as conn:
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


def test_same_logical_date_never_duplicates_or_overwrites(target):
    first = backup()
    dump_file = target.tmp / "store" / first["backup_id"] / DUMP_FILE
    before = (dump_file.stat().st_mtime_ns, dump_file.read_bytes())
    second = backup()
    assert second["backup_id"] == first["backup_id"]
    assert (dump_file.stat().st_mtime_ns, dump_file.read_bytes()) == before
    assert [p.name for p in (target.tmp / "store" / NAME / "full").iterdir()] == [first["backup_id"].split("/")[-1]]


def test_incomplete_attempt_is_replaced(target):
    prefix = backup_prefix(NAME, "full", DAY)
    store().put_bytes(f"{prefix}/{DUMP_FILE}", b"half a dump from a crashed attempt")
    store().put_bytes(f"{prefix}/stray.tmp", b"junk")
    result = backup()
    assert store().list_keys(prefix) == [f"{prefix}/{DUMP_FILE}", f"{prefix}/{MANIFEST_NAME}"]
    assert verify(result["backup_id"])["verified"] is True


def test_manual_run_without_logical_date_uses_run_after(target):
    result = backup(context(logical_date=None))
    assert result["backup_id"] == backup_prefix(NAME, "full", DAY + timedelta(hours=1))


def _terminate_pg_dump_when_it_waits(database: str, found: list) -> None:
    with psycopg.connect(devstack.libpq_conninfo("postgres"), autocommit=True) as conn:
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
    blocker = psycopg.connect(devstack.libpq_conninfo(target.database))
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
    prefix = backup_prefix(NAME, "full", DAY)
    assert not store().exists(f"{prefix}/{MANIFEST_NAME}")
    retried = backup()
    assert verify(retried["backup_id"])["verified"] is True


def test_lock_held_past_the_timeout_fails_as_transient(target):
    blocker = psycopg.connect(devstack.libpq_conninfo(target.database))
    blocker.execute("LOCK TABLE customers IN ACCESS EXCLUSIVE MODE")
    try:
        with pytest.raises(AirflowException, match="lock timeout|statement timeout.*LOCK TABLE") as info:
            backup()
    finally:
        blocker.rollback()
        blocker.close()
    assert not isinstance(info.value, AirflowFailException)
    assert not store().list_keys(NAME)


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
    blocker = psycopg.connect(devstack.libpq_conninfo(target.database))
    blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here while S3 goes away
    outcome: list = []
    attempt = threading.Thread(target=lambda: outcome.append(_raised(backup)))
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
    staged = target.tmp / "staging" / backup_prefix(NAME, "full", DAY).replace("/", "__")
    staged_sha = json.loads((staged / "staged.json").read_text())["sha256"]
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


def _raised(call) -> BaseException | None:
    try:
        call()
    except BaseException as err:  # handed to the test thread
        return err
    return None


def _wait_for_pg_dump_lock_wait(database: str) -> None:
    with psycopg.connect(devstack.libpq_conninfo("postgres"), autocommit=True) as conn:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM pg_stat_activity WHERE datname = %s AND application_name = 'dbops' "
                            "AND wait_event_type = 'Lock'", (database,)).fetchone():
                return
            time.sleep(0.05)
    raise TimeoutError("pg_dump was never seen waiting for its lock")


def test_corrupted_stored_file_fails_verification_and_blocks_retention(target):
    older = backup(context(DAY - timedelta(days=3), run_id="older"))
    verify(older["backup_id"], run_id="older")
    newest = backup()
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
    result = BackupRetentionOperator(task_id="retention", target=NAME).execute(context())
    assert result["deleted"] == []
    assert store().exists(f"{older['backup_id']}/{MANIFEST_NAME}")
    assert catalog_row(older["backup_id"])[1] == "complete" and catalog_row(newest["backup_id"])[1] == "complete"


def test_retention_deletes_manifest_first_and_records_last(target):
    ids = []
    for days_ago in (3, 2, 1, 0):
        run = f"r{days_ago}"
        made = backup(context(DAY - timedelta(days=days_ago), run_id=run))
        verify(made["backup_id"], run_id=run)
        ids.append(made["backup_id"])
    result = BackupRetentionOperator(task_id="retention", target=NAME).execute(context())
    assert sorted(result["deleted"]) == sorted(ids[:2])
    for gone in ids[:2]:
        assert store().list_keys(gone) == []
        assert catalog_row(gone)[1] == "deleted"
    for kept in ids[2:]:
        assert store().exists(f"{kept}/{MANIFEST_NAME}") and catalog_row(kept)[1] == "complete"


def test_permission_denied_fails_at_once_with_what_to_fix(target, monkeypatch):
    role = f"reader_{target.database[-8:]}"
    with psycopg.connect(devstack.libpq_conninfo(target.database), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader-secret-1'")
        conn.execute(f"GRANT SELECT ON customers, orders TO {role}")  # not events
    try:
        monkeypatch.setenv(f"AIRFLOW_CONN_PG_{NAME.upper()}", devstack.conn_uri(target.database).replace(
            f"postgres:{devstack.pg_password()}", f"{role}:reader-secret-1"))
        with pytest.raises(AirflowFailException, match="permission denied.*pg_read_all_data"):
            backup()
    finally:
        with psycopg.connect(devstack.libpq_conninfo(target.database), autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def restore(database: str, backup_id: str = "latest-verified", overwrite: bool = False) -> dict:
    return RestoreBackupOperator(task_id="restore", target=NAME, backup_id=backup_id, database=database,
                                 overwrite=overwrite).execute(context())


def test_restore_on_demand_into_a_new_database(target, scratch_db):
    made = backup()
    verify(made["backup_id"])
    fresh = f"{target.database}_restored"
    try:
        result = restore(fresh)
        assert result["backup_id"] == made["backup_id"]
        with psycopg.connect(devstack.libpq_conninfo(fresh)) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 30000 - 30000 // 7
        with pytest.raises(AirflowFailException, match="exists; choose a new name or set overwrite"):
            restore(fresh)
        with psycopg.connect(devstack.libpq_conninfo(fresh), autocommit=True) as conn:
            conn.execute("DELETE FROM orders")
        restore(fresh, backup_id=made["backup_id"], overwrite=True)
        with psycopg.connect(devstack.libpq_conninfo(fresh)) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 30000 - 30000 // 7
    finally:
        with psycopg.connect(devstack.libpq_conninfo("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{fresh}" WITH (FORCE)')


def test_restore_refuses_the_targets_own_database_and_bad_names(target):
    backup()
    with pytest.raises(AirflowFailException, match="the target's own database"):
        restore(target.database, backup_id="latest", overwrite=True)
    with pytest.raises(AirflowFailException, match="1 to 63 bytes"):
        restore("x" * 64, backup_id="latest")
    with psycopg.connect(devstack.libpq_conninfo(target.database)) as conn:
        assert conn.execute("SELECT count(*) FROM customers").fetchone()[0] == 2000


def test_restore_of_a_corrupted_backup_verifies_checksums_first(target):
    made = backup()
    stored = target.tmp / "store" / made["backup_id"] / DUMP_FILE
    stored.write_bytes(stored.read_bytes()[:-10])
    fresh = f"{target.database}_bad"
    with pytest.raises(AirflowFailException, match="stored size .* differs"):
        restore(fresh, backup_id="latest")
    with psycopg.connect(devstack.libpq_conninfo("postgres")) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (fresh,)).fetchone()[0] == 0


def test_no_verified_backup_is_a_clear_error(target):
    backup()
    with pytest.raises(AirflowFailException, match="has no verified backup"):
        restore(f"{target.database}_none")


def dag(dag_id: str):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(devstack.ROOT / "dags")).dags[dag_id]


def test_backfilling_three_dates_makes_three_backups_named_by_date(target):
    backup_dag = dag(f"pg_backup__{NAME}")
    dates = [DAY - timedelta(days=n) for n in (12, 11, 10)]
    for date in dates:
        run = backup_dag.test(logical_date=date)
        assert run.state == "success", {ti.task_id: ti.state for ti in run.get_task_instances()}
    ids = [f"{NAME}/full/{d.strftime('%Y%m%dT%H%M%SZ')}" for d in dates]
    assert [catalog_row(i)[0] for i in ids] == [True, True, True], "each date got its own verified backup"
    # retention (daily: 2) then removed the oldest of the three, files and manifest
    assert [catalog_row(i)[1] for i in ids] == ["deleted", "complete", "complete"]
    assert sorted(p.name for p in (target.tmp / "store" / NAME / "full").iterdir()) == [i[-16:] for i in ids[1:]]


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
    run = dag(f"pg_verify_backup__{NAME}").test(run_conf={"backup_id": made["backup_id"]})
    states = {ti.task_id: ti.state for ti in run.get_task_instances()}
    assert states == {"create_scratch": "success", "verify_restore": "failed", "drop_scratch": "success"}
    assert len(mailbox.messages) == 1
    message = mailbox.messages[0]
    assert message["Subject"] == f"pg_verify_backup__{NAME} failed: verify_restore"
    body = message.get_body(preferencelist=("html",)).get_content()
    assert "checksums" in body and DUMP_FILE in body
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
    assert not store().list_keys(NAME)


def test_too_old_pg_dump_fails_at_once(target, monkeypatch):
    """FAKE: the server reports version 99, because no server newer than our pg_dump runs here."""
    monkeypatch.setattr("dbops.hooks.postgres.DbopsPostgresHook.server_version_num", lambda self: 990000)
    with pytest.raises(AirflowFailException, match="pg_dump must be version 99 or newer"):
        backup()
    assert not store().list_keys(NAME)


def test_too_little_staging_space_fails_before_dumping(target, monkeypatch):
    """FAKE: the free space is reported as 1 MiB; filling a real disk is not something a test may do."""
    import shutil as _shutil

    real = _shutil.disk_usage
    monkeypatch.setattr("shutil.disk_usage", lambda path: real(path)._replace(free=2**20))
    with pytest.raises(AirflowFailException, match="has 1 MiB free; the dump of .* may need up to"):
        backup()
    assert not store().list_keys(NAME)


@pytest.fixture
def tenant_target(target):
    with psycopg.connect(devstack.libpq_conninfo(target.database)) as conn:
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
    from dbops.operators.tenant_export import TenantExportOperator

    return TenantExportOperator(task_id="export", target=NAME, tenant_id=tenant_id).execute(context())


def test_tenant_export_holds_exactly_that_tenants_rows(tenant_target, tmp_path):
    import csv

    from dbops.streams import read_decompressed

    result = export("7")
    assert result["backup_id"] == f"{NAME}/tenant/7/20261120T020000Z"
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


@pytest.mark.parametrize(("tenant_id", "message"), [
    ("7' OR '1'='1", "must be 1-128 letters"),
    ("../../etc", "must be 1-128 letters"),
    ("abc", "not a valid tenant_id value"),
])
def test_hostile_or_bad_tenant_ids_change_nothing(tenant_target, tenant_id, message):
    with pytest.raises(AirflowFailException, match=message):
        export(tenant_id)
    assert store().list_keys(NAME) == []


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
