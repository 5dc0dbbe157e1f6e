"""pg_anonymize__ and pg_anonymize_inactive__ against a real PostgreSQL target and the real ops database.

The Airflow context is a FAKE minimal stand-in (run_id, ti, dag_run, data interval), which only a
scheduler makes; everything else is real: the target, its archive schema, the ops database, the salt
connection (an Airflow connection from the environment) and a real backup taken by the backup operator.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from psycopg import sql

from dbops.core.config import load_config
from dbops.core.locks import job_lock
from dbops.operators.anonymize import AnonymizeInactiveOperator, AnonymizeUserOperator
from dbops.operators.backup import PgBackupOperator
from scripts.stack.postgres import conn_uri, libpq_conninfo
from tests.conftest import config_yaml
from tests.lifecycle.conftest import drop_role, login_role

SALT = "test-salt-Q7f9Zr2LwXk3Vb8N"
HOSTILE_TABLE, HOSTILE_USER, HOSTILE_COLUMN = 'we"ird; DROP', 'us"er', 'no"te; --'
ALICE = {"email": "alice@example.com", "name": "Alice Liddell", "phone": "+44 20 7946 0001"}
RUN_END = datetime(2026, 11, 30, 4, 0, tzinfo=timezone.utc)
SCHEMA = f"""
CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, full_name text NOT NULL, phone text,
                    last_login_at timestamptz);
CREATE TABLE orders (id int PRIMARY KEY, user_id int REFERENCES users (id), shipping_address text, total numeric);
CREATE TABLE payments (id int PRIMARY KEY, order_id int NOT NULL, card_holder text, provider_ref varchar(64));
CREATE TABLE audit_logs (id int PRIMARY KEY, user_id int, ip_address inet, details jsonb);
CREATE TABLE "{HOSTILE_TABLE.replace('"', '""')}" (id int PRIMARY KEY, "{HOSTILE_USER.replace('"', '""')}" int,
                                                  "{HOSTILE_COLUMN.replace('"', '""')}" text);
INSERT INTO users VALUES
  (1, 'alice@example.com', 'Alice Liddell', '+44 20 7946 0001', '2026-11-01'),
  (2, 'bob@example.com', 'Bob Builder', '+1 555 0100', '2026-11-20'),
  (3, 'carol@example.com', 'Carol Danvers', NULL, '2023-01-01'),
  (4, 'dave@example.com', 'Dave Lister', NULL, '2024-06-01'),
  (5, 'erin@example.com', 'Erin Brockovich', NULL, NULL);
INSERT INTO orders VALUES (10, 1, 'Alice Liddell, 1 Rabbit Hole', 12.50), (11, 1, 'Alice Liddell, 1 Rabbit Hole', 3),
                          (20, 2, 'Bob Builder, 2 Site Road', 7), (30, 3, 'Carol Danvers, Avengers Tower', 1);
INSERT INTO payments VALUES (100, 10, 'ALICE LIDDELL', 'pi_alice_10'), (101, 11, 'ALICE LIDDELL', 'pi_alice_11'),
                            (200, 20, 'BOB BUILDER', 'pi_bob_20');
INSERT INTO audit_logs VALUES (1000, 1, '203.0.113.7', '{{"old": {{"email": "alice@example.com"}}}}'),
                              (2000, 2, '198.51.100.2', '{{"old": {{"email": "bob@example.com"}}}}');
INSERT INTO "{HOSTILE_TABLE.replace('"', '""')}" VALUES (1, 1, 'call +44 20 7946 0001'), (2, 2, 'bob');
-- pg_archive__ moved alice's order 11 and its payment; the archived payments lack card_holder
CREATE SCHEMA archive;
CREATE TABLE archive.orders (LIKE orders INCLUDING ALL);
CREATE TABLE archive.payments (id int PRIMARY KEY, order_id int NOT NULL, provider_ref varchar(64));
WITH moved AS (DELETE FROM payments WHERE id = 101 RETURNING id, order_id, provider_ref)
INSERT INTO archive.payments SELECT * FROM moved;
WITH moved AS (DELETE FROM orders WHERE id = 11 RETURNING *) INSERT INTO archive.orders SELECT * FROM moved;
"""


def config_text(name: str, tmp_path) -> str:
    hostile = json.dumps({"user_column": HOSTILE_USER, "columns": {HOSTILE_COLUMN: "hash"}})
    return config_yaml(tmp_path, f"""\
  {name}:
    conn_id: pg_{name}
    backup: {{storage: local, schedule: "0 2 * * *", retention: {{daily: 2, weekly: 0, monthly: 1}}}}
    anonymize:
      salt_conn_id: salt_{name}
      users: {{table: users, key: id, last_active_column: last_login_at}}
      anonymize_after: 730d
      schedule: "0 4 * * *"
      batch_size: 2
      lock_timeout: 1s
      statement_timeout: 10s
      tables:
        users: {{user_column: id, columns: {{email: placeholder_email, full_name: {{constant: Deleted user}},
                                            phone: hash}}}}
        orders: {{user_column: user_id, columns: {{shipping_address: "null"}}}}
        payments: {{user_column: order_id, via: {{table: orders, key: id, user_column: user_id}},
                   columns: {{card_holder: "null", provider_ref: hash}}}}
        audit_logs: {{user_column: user_id, columns: {{ip_address: "null", details: {{constant: {{}}}}}}}}
        {json.dumps(HOSTILE_TABLE)}: {hostile}
""")


@pytest.fixture
def target(scratch_db, tmp_path, monkeypatch, pg_server):
    database = scratch_db()
    name = f"an_{database[-12:]}"
    with psycopg.connect(libpq_conninfo(database)) as conn:
        conn.execute(SCHEMA)
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{name.upper()}", conn_uri(database))
    monkeypatch.setenv(f"AIRFLOW_CONN_SALT_{name.upper()}", json.dumps({"conn_type": "generic", "password": SALT}))
    config_path = tmp_path / "dbops.yaml"
    config_path.write_text(config_text(name, tmp_path))
    monkeypatch.setenv("DBOPS_CONFIG", str(config_path))
    return SimpleNamespace(name=name, database=database, tmp=tmp_path)


def context(run_id: str = "manual__anonymize") -> dict:
    """FAKE minimal Airflow context: what the operators read from it."""
    return {"run_id": run_id, "ti": SimpleNamespace(), "logical_date": RUN_END, "data_interval_end": RUN_END,
            "dag_run": SimpleNamespace(run_after=RUN_END, run_type="manual")}


def request(target, user_id="1", reason="erasure request TICKET-42") -> AnonymizeUserOperator:
    return AnonymizeUserOperator(task_id="anonymize", target=target.name, user_id=user_id, reason=reason)


def snapshot(database: str) -> dict:
    """Every row of every table of the database, as text (to prove nothing changed)."""
    with psycopg.connect(libpq_conninfo(database)) as conn:
        tables = conn.execute("SELECT n.nspname, c.relname FROM pg_class c "
                              "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' "
                              "AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                              "ORDER BY 1, 2").fetchall()
        return {f"{s}.{t}": sorted(map(str, conn.execute(sql.SQL("SELECT t::text FROM {} t").format(
            sql.Identifier(s, t))).fetchall())) for s, t in tables}


def text_columns_holding(database: str, needle: str) -> list[str]:
    """Every text-like column (text, varchar, char, json, jsonb, inet) of every table holding ``needle``."""
    found = []
    with psycopg.connect(libpq_conninfo(database)) as conn:
        columns = conn.execute(
            "SELECT n.nspname, c.relname, a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND a.attnum > 0 "
            "AND NOT a.attisdropped AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND a.atttypid IN ('text'::regtype, 'varchar'::regtype, 'bpchar'::regtype, 'json'::regtype, "
            "'jsonb'::regtype, 'inet'::regtype)").fetchall()
        assert len(columns) > 10
        for schema, table, column in columns:
            hit = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}::text ILIKE %s").format(
                sql.Identifier(schema, table), sql.Identifier(column)), (f"%{needle}%",)).fetchone()[0]
            if hit:
                found.append(f"{schema}.{table}.{column}")
    return found


def ops_rows(target) -> tuple[list, list]:
    with psycopg.connect(libpq_conninfo("dbops_test")) as conn:
        users = conn.execute("SELECT user_key, source, reason FROM dbops.anonymized_users WHERE target = %s "
                             "ORDER BY user_key", (target.name,)).fetchall()
        events = conn.execute("SELECT outcome, user_keys, rows, backups::text FROM dbops.anonymization_events "
                              "WHERE target = %s ORDER BY id", (target.name,)).fetchall()
    return users, events


# --- failure paths first ---------------------------------------------------------------------------------------

def test_unknown_user_fails_and_changes_nothing(target):
    before = snapshot(target.database)
    with pytest.raises(AirflowFailException, match=r"no row of public.users .* has id = '999'; nothing was changed"):
        request(target, user_id="999").execute(context())
    assert snapshot(target.database) == before
    assert ops_rows(target) == ([], [])


@pytest.mark.parametrize(("user_id", "reason", "message"), [
    ("abc", "ticket 1", r"user_id 'abc' is not a valid value of public.users.id"),
    ("99999999999", "ticket 1", r"is not a valid value of public.users.id"),
    ("1", "   ", r"Param reason is empty"),
    ("", "ticket 1", r"Param user_id"),
    ("1", "asked by alice@example.com", r"without e-mail addresses"),
])
def test_bad_params_fail_clearly_and_change_nothing(target, user_id, reason, message):
    before = snapshot(target.database)
    with pytest.raises(AirflowFailException, match=message):
        request(target, user_id=user_id, reason=reason).execute(context())
    assert snapshot(target.database) == before


def test_lock_on_a_users_row_times_out_rolls_back_everything_and_the_retry_succeeds(target):
    before = snapshot(target.database)
    locked, release = threading.Event(), threading.Event()

    def application() -> None:  # holds alice's archived order (anonymized last) until told to stop
        with psycopg.connect(libpq_conninfo(target.database)) as conn:
            conn.execute("SELECT * FROM archive.orders WHERE id = 11 FOR UPDATE")
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=application)
    holder.start()
    try:
        assert locked.wait(10)
        timeout = r"rolled back \(nothing changed\).*lock timeout.*\(transient"
        with pytest.raises(AirflowException, match=timeout) as failure:
            request(target).execute(context())
        assert not isinstance(failure.value, AirflowFailException)
        assert snapshot(target.database) == before, "the users row was rewritten before the timeout: rolled back"
        assert ops_rows(target) == ([], [])
    finally:
        release.set()
        holder.join()
    result = request(target).execute(context())  # Airflow's retry
    assert result["outcome"] == "anonymized"
    assert text_columns_holding(target.database, ALICE["email"]) == []


def test_anonymization_lock_held_by_another_run_fails_the_try_to_be_retried_never_skips(target):
    """A skipped erasure request would end green with the user not anonymized."""
    before = snapshot(target.database)
    operators = [AnonymizeUserOperator(task_id="anonymize", target=target.name, user_id="1", reason="TICKET-42",
                                       lock_wait=0),
                 AnonymizeInactiveOperator(task_id="anonymize_inactive", target=target.name, lock_wait=0)]
    with job_lock("dbops_state", target.name, "anonymize"):  # another run of the target, on its own connection
        for operator in operators:
            with pytest.raises(AirflowException, match=rf"anonymize of {target.name} is already running in another "
                                                       r"run \(ops-database backend pid \d+.*nothing was done.*retr"
                               ) as busy:
                operator.execute(context())
            assert not isinstance(busy.value, (AirflowSkipException, AirflowFailException))
    assert snapshot(target.database) == before
    assert ops_rows(target) == ([], [])


def test_salt_is_never_in_logs_xcom_or_the_ops_database(target, capsys, caplog):
    result = request(target).execute(context())
    result |= AnonymizeInactiveOperator(task_id="inactive", target=target.name).execute(context("scheduled__x"))
    logged = capsys.readouterr()
    with psycopg.connect(libpq_conninfo("dbops_test")) as conn:
        trail = conn.execute("SELECT (SELECT json_agg(u)::text FROM dbops.anonymized_users u WHERE target = %s), "
                             "(SELECT json_agg(e)::text FROM dbops.anonymization_events e WHERE target = %s)",
                             (target.name, target.name)).fetchone()
    for text in (logged.out, logged.err, caplog.text, json.dumps(result, default=str), *trail):
        assert SALT not in text
        assert ALICE["email"] not in text and ALICE["name"] not in text
    assert "anonymized" in logged.out + caplog.text


def test_hostile_and_missing_identifiers_in_config_fail_before_anything_changes(target):
    config_path = target.tmp / "dbops.yaml"
    config_path.write_text(config_text(target.name, target.tmp).replace(
        "shipping_address: \"null\"", "'x\"; DROP TABLE users; --': \"null\""))
    before = snapshot(target.database)
    with pytest.raises(AirflowFailException, match=r'public.orders has no column x"; DROP TABLE users; --'):
        request(target).execute(context())
    assert snapshot(target.database) == before


# --- what works ------------------------------------------------------------------------------------------------

def test_user_in_base_and_archive_tables_leaves_no_personal_value_anywhere(target):
    result = request(target).execute(context())

    assert result["outcome"] == "anonymized" and result["user_key"] == "1"
    assert result["rows"] == {"public.users": 1, "public.orders": 1, "archive.orders": 1, "public.audit_logs": 1,
                              f"public.{HOSTILE_TABLE}": 1, "public.payments": 1, "archive.payments": 1}
    for value in ALICE.values():
        assert text_columns_holding(target.database, value) == [], value
    for left in ("pi_alice_10", "pi_alice_11", "203.0.113.7"):
        assert text_columns_holding(target.database, left) == [], left
    for bob in ("bob@example.com", "Bob Builder", "+1 555 0100", "pi_bob_20", "198.51.100.2"):
        assert text_columns_holding(target.database, bob), f"{bob}: another user's data was touched"
    with psycopg.connect(libpq_conninfo(target.database)) as conn:
        email, name, phone = conn.execute("SELECT email, full_name, phone FROM users WHERE id = 1").fetchone()
        hashes = conn.execute("SELECT provider_ref FROM payments WHERE id = 100 UNION ALL "
                              "SELECT provider_ref FROM archive.payments WHERE id = 101").fetchall()
    assert email.startswith("deleted-") and email.endswith("@anonymized.invalid")
    assert name == "Deleted user" and len(phone) == 64
    assert len({h for (h,) in hashes}) == 2 and all(len(h) == 64 for (h,) in hashes)
    users, events = ops_rows(target)
    assert users == [("1", "request", "erasure request TICKET-42")]
    assert [(e[0], e[1]) for e in events] == [("anonymized", ["1"])]


def test_second_request_is_a_no_op_that_says_so(target, capsys):
    request(target).execute(context())
    after_first = snapshot(target.database)
    result = request(target).execute(context("manual__again"))
    assert result["outcome"] == "already_anonymized" and result["rows"] == {}
    assert snapshot(target.database) == after_first
    assert "was already anonymized" in capsys.readouterr().out
    users, events = ops_rows(target)
    assert len(users) == 1 and [e[0] for e in events] == ["anonymized", "already_anonymized"]


def test_inactive_users_are_anonymized_in_batches_relative_to_the_data_interval_and_a_rerun_changes_nothing(target):
    # cutoff = 2026-11-30 04:00 - 730 days = 2024-11-30: carol (2023) and dave (2024-06) are inactive;
    # alice and bob are recent; erin never logged in (NULL) and is never picked.
    operator = AnonymizeInactiveOperator(task_id="inactive", target=target.name)
    result = operator.execute(context("scheduled__1"))
    assert (result["anonymized"], result["already_anonymized"]) == (2, 0)
    assert result["cutoff"] == "2024-11-30T04:00:00+00:00"
    assert result["rows"]["public.orders"] == 1
    with psycopg.connect(libpq_conninfo(target.database)) as conn:
        emails = dict(conn.execute("SELECT id, email FROM users ORDER BY id").fetchall())
    assert [i for i, e in emails.items() if e.startswith("deleted-")] == [3, 4]
    after = snapshot(target.database)
    again = operator.execute(context("scheduled__1"))
    assert (again["anonymized"], again["already_anonymized"]) == (0, 2)
    assert snapshot(target.database) == after
    users, _ = ops_rows(target)
    assert [(u[0], u[1]) for u in users] == [("3", "inactive"), ("4", "inactive")]


def test_inactive_run_without_data_interval_counts_back_from_its_logical_date_not_the_trigger_time(target):
    """A manual run for a past date (no data interval) uses that date, as every other cutoff of dbops does."""
    run = context("manual__past") | {"data_interval_end": None,
                                     "logical_date": datetime(2025, 6, 1, tzinfo=timezone.utc)}
    result = AnonymizeInactiveOperator(task_id="anonymize_inactive", target=target.name).execute(run)
    assert result["cutoff"] == "2023-06-02T00:00:00+00:00"  # 2025-06-01 - 730 days
    users, _ = ops_rows(target)
    assert [u[0] for u in users] == ["3"]  # carol (2023-01); dave (2024-06) was active after that cutoff


def test_report_names_the_real_backups_still_holding_the_data_and_when_retention_deletes_them(target):
    backup = PgBackupOperator(task_id="dump_and_store", target=target.name).execute(
        context("manual__backup") | {"logical_date": datetime.now(timezone.utc) - timedelta(minutes=1)})
    result = request(target).execute(context())
    [holding] = [b for b in result["backups_holding"] if b["backup_id"] == backup["backup_id"]]
    assert holding["kind"] == "full"
    # never verified: the first scheduled backup after it that is verified makes retention delete it
    taken = datetime.fromisoformat(holding["taken_at"])
    expected = (taken + timedelta(days=1) if taken.hour >= 2 else taken).replace(hour=2, minute=0, second=0,
                                                                                  microsecond=0)
    assert datetime.fromisoformat(holding["deleted_by"]) == expected
    _, events = ops_rows(target)
    assert backup["backup_id"] in events[-1][3]


PITR_AND_LIFECYCLE = """
    pitr: {storage: local, full_schedule: "0 1 * * 0", full_retention: 2}
    lifecycle:
      retention_schedule: "30 3 * * *"
      policies:
        - {table: orders, time_column: ordered_at, archive_after: 365d, retention: 700d, archive_storage: store}
"""


def base_backup(target, backup_id: str, kind: str, taken_at: datetime, parent: str | None = None):
    from dbops.core.manifest import Manifest

    return Manifest(backup_id, target.name, kind, taken_at.isoformat(), "scheduled__x", f"{target.name}/{kind}/x",
                    "18", "pg_basebackup", "", [], {}, [], {}, {}, taken_at=taken_at.isoformat(),
                    extra={"start_lsn": "0/2000028", "timeline": 1, "parent": parent})


def test_report_lists_pitr_backups_wal_partition_dumps_and_lifecycle_exports_with_their_deletion(target):
    from croniter import croniter

    from dbops.backup import catalog, pitr_catalog
    from dbops.hooks.store import get_store
    from dbops.lifecycle.export import Exporter
    from dbops.partitions.record import record_retirement

    target.tmp.joinpath("dbops.yaml").write_text(config_text(target.name, target.tmp) + PITR_AND_LIFECYCLE)
    config = load_config()
    before = datetime.now(timezone.utc) - timedelta(days=2)
    with psycopg.connect(libpq_conninfo("dbops_test")) as ops:  # the copies the catalog knows, recorded as dbops does
        catalog.record_backup(ops, base_backup(target, f"{target.name}-bb-full", "basebackup", before))
        catalog.record_backup(ops, base_backup(target, f"{target.name}-bb-incr", "incremental",
                                               before + timedelta(hours=1), parent=f"{target.name}-bb-full"))
        record_retirement(ops, target.name, "public.events", "public", "events_2025_01", "2025-01-01", "2025-02-01",
                          "drop", "dropped", backup_id=f"{target.name}-part", rows=3, sha256="ef", bytes=100)
        pitr_catalog.record_segment(ops, target.name, "000000010000000000000007", False, "wal/7", 10, 16, "ab")
        pitr_catalog.record_segment(ops, target.name, "000000010000000000000008", False, "wal/8", 10, 16, "cd")
    with psycopg.connect(libpq_conninfo(target.database)) as conn:  # pg_archive__ exported alice's orders
        conn.execute("ALTER TABLE orders ADD ordered_at timestamptz NOT NULL DEFAULT '2026-01-10T00:00:00Z'")
        lines = [json.dumps(r) for (r,) in conn.execute("SELECT row_to_json(o) FROM orders o WHERE user_id = 1")]
        [policy] = config.targets[target.name].lifecycle.policies
        key = Exporter(get_store(config.store_for(target.name)), target.name, policy, before).write(conn, lines)

    result = request(target).execute(context())

    holding = {b["backup_id"]: b for b in result["backups_holding"]}
    nth_sunday = croniter("0 1 * * 0", datetime.fromisoformat(result["anonymized_at"]))
    pitr_gone = [nth_sunday.get_next(datetime) for _ in range(2)][-1].isoformat()  # full_retention: 2
    wal = "WAL 000000010000000000000007..000000010000000000000008 (2 segments)"
    assert {k: (holding[k]["kind"], holding[k]["deleted_by"]) for k in
            (f"{target.name}-bb-full", f"{target.name}-bb-incr", wal)} == {
        f"{target.name}-bb-full": ("basebackup", pitr_gone), f"{target.name}-bb-incr": ("incremental", pitr_gone),
        wal: ("wal", pitr_gone)}
    dump = holding[f"{target.name}-part"]
    assert (dump["kind"], dump["deleted_by"]) == ("partition", None) and "kept for ever" in dump["note"]
    # the export's newest row (2026-01-10) + 700 days, at the next retention purge (03:30)
    assert (holding[key]["kind"], holding[key]["deleted_by"]) == ("lifecycle_export", "2027-12-11T03:30:00+00:00")
    _, events = ops_rows(target)
    assert all(name in events[-1][3] for name in (key, wal, f"{target.name}-part"))


def test_config_section_is_validated_with_file_target_and_key(target):
    from dbops.core.schema import ConfigError

    config_path = target.tmp / "dbops.yaml"
    for old, new, message in [
        ("phone: hash", "phone: scramble", "key 'anonymize.tables.users.columns.phone': unknown rule 'scramble'"),
        ("email: placeholder_email", "email: hash", "key 'anonymize.tables.users.columns': needs a column with rule"),
        ("last_active_column: last_login_at", "last_active_column: null",
         "key 'anonymize.users.last_active_column': anonymize_after needs"),
    ]:
        config_path.write_text(config_text(target.name, target.tmp).replace(old, new))
        with pytest.raises(ConfigError, match=f"target '{target.name}': {message}"):
            load_config(config_path)


@pytest.mark.parametrize("inactive", [False, True], ids=["request", "inactive"])
def test_row_level_security_hiding_rows_fails_naming_table_policy_and_what_the_role_needs(target, monkeypatch,
                                                                                          inactive):
    """Alice's order 10 (total 12.50) is hidden from the application role: without row_security off the request
    would anonymize every row but that one and say so green."""
    role = login_role(target.database, monkeypatch, f"pg_{target.name}",
                      "GRANT USAGE ON SCHEMA public, archive TO {role}; "
                      "GRANT SELECT, UPDATE ON ALL TABLES IN SCHEMA public, archive TO {role}")
    try:
        with psycopg.connect(libpq_conninfo(target.database), autocommit=True) as conn:
            conn.execute("ALTER TABLE orders ENABLE ROW LEVEL SECURITY")
            conn.execute('CREATE POLICY "small orders" ON orders USING (total < 10)')
        before = snapshot(target.database)
        operator = AnonymizeInactiveOperator(task_id="inactive", target=target.name) if inactive else request(target)
        with pytest.raises(AirflowFailException) as info:
            operator.execute(context())
        assert (f'public.orders has row-level security with policies "small orders": they would hide rows from the '
                f"anonymization, which would then miss them; role '{role}' needs BYPASSRLS (ALTER ROLE \"{role}\" "
                "BYPASSRLS, as a superuser), or connect as the table's owner; nothing was changed") in str(info.value)
        assert snapshot(target.database) == before
        assert ops_rows(target) == ([], [])
    finally:
        drop_role(target.database, role)


def test_naive_last_activity_is_utc_whatever_the_database_time_zone(target):
    """Bob was last active 2 h before the cutoff (2024-11-30 04:00 UTC) in a `timestamp without time zone`
    column, in a database set to New York time (UTC-5 then): inactive, as in UTC."""
    with psycopg.connect(libpq_conninfo(target.database), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET timezone = 'America/New_York'").format(
            sql.Identifier(target.database)))
        conn.execute("ALTER TABLE users ALTER COLUMN last_login_at TYPE timestamp "
                     "USING last_login_at AT TIME ZONE 'UTC'")
        conn.execute("UPDATE users SET last_login_at = '2024-11-30 02:00' WHERE id = 2")
    result = AnonymizeInactiveOperator(task_id="inactive", target=target.name).execute(context("scheduled__utc"))
    assert result["anonymized"] == 3
    assert [u[0] for u in ops_rows(target)[0]] == ["2", "3", "4"]
    assert text_columns_holding(target.database, "bob@example.com") == []
