"""The postgres_default pack on the real PostgreSQL: every query runs, and real conditions breach the right rules.

Conditions that would take too long to reach for real (a 5-minute idle transaction, a health score
below 75) are checked with the pack's own rule and a lowered threshold (``dataclasses.replace``):
the query and the operator are the pack's, only the level is not.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql

from dbops.alerting.evaluate import Evaluation, evaluate
from dbops.alerting.rules import Rule, load_pack
from scripts.stack.postgres import libpq_conninfo

PACK = load_pack("postgres_default")
TARGET_RULES = [r for r in PACK if r.database == "target"]
OPS_RULES = [r for r in PACK if r.database == "ops"]
SLOW_STATEMENT_RULES = {"slow_statements_warning", "slow_statements_critical"}
REPLICATION_RULES = {"replication_lag_warning", "replication_lag_critical"}  # no row: no replica, no recovery
# One row per replication slot of the server (e.g. dbops_wal_appdb after a demo run), none without one;
# tests/backup/test_pitr.py checks them on a slot of its own.
SLOT_RULES = {"replication_slot_retained_wal_warning", "replication_slot_retained_wal_critical",
              "replication_slot_inactive"}
NO_ROW_WHEN_FRESH = {"table_bloat_high",  # no table of 8 MB or more
                     "rollback_rate_high",  # fewer than 1000 transactions: NULL
                     "unused_indexes_warning", "unused_indexes_critical",  # statistics younger than 7 days: NULL
                     "partition_default_rows", "partition_detach_pending"}  # one row per partition: none here
T = TypeVar("T")


def lowered(name: str, threshold: float) -> Rule:
    """The pack's rule ``name`` with another threshold, named ``lowered``."""
    return replace(next(r for r in PACK if r.name == name), name="lowered", threshold=threshold)


def rules_of(query: str) -> list[Rule]:
    return [r for r in PACK if r.query == query]


def run(database: str, rules: list[Rule], **kwargs) -> Evaluation:
    """Evaluate ``rules`` on ``database`` in a fresh connection, as the DAG does; no rule may fail."""
    with psycopg.connect(libpq_conninfo(database)) as conn:
        result = evaluate(conn, rules, **kwargs)
    assert result.errors == []
    return result


def outcome(result: Evaluation, name: str) -> list[tuple[dict[str, str], float, bool]]:
    """(labels, value, breaching) of each sample of rule ``name``."""
    return [(s.labels, s.value, s.breaching) for s in result.samples if s.rule == name]


def value(result: Evaluation, name: str) -> float:
    (sample,) = [s for s in result.samples if s.rule == name]
    return sample.value


def eventually(probe: Callable[[], T], until: Callable[[T], bool], timeout: float = 15) -> T:
    """``probe()`` until ``until`` holds or ``timeout`` passed (statistics are flushed about once a second)."""
    deadline = time.monotonic() + timeout
    result = probe()
    while not until(result) and time.monotonic() < deadline:
        time.sleep(0.2)
        result = probe()
    return result


def flush_statistics(conn: psycopg.Connection) -> None:
    """Have ``conn``'s backend publish its statistics when it goes idle, not up to 10 s later."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    if not conn.autocommit:
        conn.rollback()


@pytest.fixture
def database(scratch_db) -> str:
    return scratch_db()


@pytest.fixture
def connect(database):
    """Factory of extra connections to ``database`` (other clients of the target), closed at the end."""
    conns: list[psycopg.Connection] = []

    def make(autocommit: bool = True) -> psycopg.Connection:
        conns.append(psycopg.connect(libpq_conninfo(database), autocommit=autocommit))
        return conns[-1]

    yield make
    for conn in conns:
        conn.close()


def pg_stat_statements_preloaded() -> bool:
    with psycopg.connect(libpq_conninfo("postgres")) as conn:
        available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_stat_statements'").fetchone()
        preloaded = "pg_stat_statements" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
    return bool(available) and preloaded


def walsenders() -> int:
    with psycopg.connect(libpq_conninfo("postgres")) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_replication WHERE state <> 'backup'").fetchone()[0]


def test_every_target_rule_runs_on_a_fresh_database_without_pg_stat_statements(database, connect):
    """Without the extension in the database the slow-statement rules are skipped, never an error."""
    connect().execute("SELECT pg_stat_reset()")  # statistics as young as the database, whatever the server's age
    result = run(database, TARGET_RULES)
    assert set(result.skipped) == SLOW_STATEMENT_RULES
    sampled = {s.rule for s in result.samples}
    assert sampled - REPLICATION_RULES - SLOT_RULES == {r.name for r in TARGET_RULES} - SLOW_STATEMENT_RULES \
        - NO_ROW_WHEN_FRESH - REPLICATION_RULES - SLOT_RULES
    if walsenders() == 0:  # else another test may be taking a base backup with WAL streaming
        assert not sampled & REPLICATION_RULES
    quiet = ["long_running_query_warning", "idle_in_transaction_warning", "deadlocks_detected",
             "transaction_id_age_warning", "database_size_warning"]
    assert [name for name in quiet if outcome(result, name)[0][2]] == []


def test_slow_statements_with_pg_stat_statements(database, connect):
    """With the extension, the slow-statement rules run and see the worst mean of this database only.

    Not tested: a real mean over 1 s or 5 s (11 calls of it would take a minute), so the threshold is
    lowered to 10 ms. The devstack server preloads the extension; a database without it is the test above.
    """
    assert pg_stat_statements_preloaded(), "devstack's postgresql.conf preloads pg_stat_statements"
    client = connect()
    client.execute("CREATE EXTENSION pg_stat_statements")
    fresh = run(database, TARGET_RULES)
    assert fresh.skipped == {}
    assert [outcome(fresh, name) for name in sorted(SLOW_STATEMENT_RULES)] == [[({}, 0.0, False)]] * 2

    for _ in range(11):
        client.execute("SELECT pg_sleep(0.02)")
    result = run(database, rules_of("slow_statements") + [lowered("slow_statements_warning", 10)])
    assert 20 <= value(result, "lowered") < 1000
    assert outcome(result, "lowered")[0][2] is True
    assert not any(s.breaching for s in result.samples if s.rule in SLOW_STATEMENT_RULES)


def test_idle_in_transaction_session_breaches_and_is_no_running_query(database, connect):
    idle = connect(autocommit=False)
    idle.execute("SELECT 1")  # opens a transaction, then the session idles in it
    rules = [*rules_of("idle_in_transaction"), lowered("idle_in_transaction_warning", 1),
             *rules_of("long_running_queries")]
    result = eventually(lambda: run(database, rules), lambda r: outcome(r, "lowered")[0][2])
    assert 1 < value(result, "lowered") < 300
    assert [s.rule for s in result.samples if s.breaching] == ["lowered"]
    assert value(result, "long_running_query_warning") == 0


def test_long_running_query_in_another_session_breaches(database, connect):
    sleeper = connect()
    pid = sleeper.info.backend_pid

    def sleep() -> None:
        try:
            sleeper.execute("SELECT pg_sleep(60)")
        except psycopg.errors.QueryCanceled:
            pass

    thread = threading.Thread(target=sleep)
    thread.start()
    try:
        rules = [*rules_of("long_running_queries"), lowered("long_running_query_warning", 1),
                 *rules_of("idle_in_transaction")]
        result = eventually(lambda: run(database, rules), lambda r: outcome(r, "lowered")[0][2])
    finally:
        connect().execute("SELECT pg_cancel_backend(%s)", (pid,))
        thread.join(timeout=10)
    assert 1 < value(result, "lowered") < 30
    assert [s.rule for s in result.samples if s.breaching] == ["lowered"]
    assert value(result, "idle_in_transaction_warning") == 0


def test_a_real_deadlock_increases_the_deadlock_counter(database, connect):
    setup = connect()
    setup.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int); INSERT INTO accounts VALUES (1, 0), (2, 0)")
    first, second = connect(autocommit=False), connect(autocommit=False)
    for conn in (first, second):
        conn.execute("SET deadlock_timeout = '100ms'")
    before = run(database, rules_of("deadlocks"))
    assert outcome(before, "deadlocks_detected") == [({}, 0.0, False)]

    first.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
    second.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2")
    deadlocks: list[Exception] = []

    def cross(conn: psycopg.Connection, row: int) -> None:
        try:
            conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = %s", (row,))
        except psycopg.errors.DeadlockDetected as err:
            deadlocks.append(err)
        finally:
            conn.rollback()

    thread = threading.Thread(target=cross, args=(first, 2))
    thread.start()
    eventually(lambda: setup.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND wait_event_type = 'Lock'").fetchone()[0], lambda n: n == 1)
    cross(second, 1)
    thread.join(timeout=10)
    assert len(deadlocks) == 1
    for conn in (first, second):
        flush_statistics(conn)

    previous = {m.key: m.value for m in before.metrics}
    after = eventually(lambda: run(database, rules_of("deadlocks"), previous=previous),
                       lambda r: value(r, "deadlocks_detected") > 0)
    assert outcome(after, "deadlocks_detected") == [({}, 1.0, True)]


def test_a_large_table_with_most_rows_deleted_is_bloated(database, connect):
    client = connect()
    client.execute("CREATE TABLE events (id int, payload text) WITH (autovacuum_enabled = false)")
    client.execute("INSERT INTO events SELECT g, repeat('x', 80) FROM generate_series(1, 100000) g")
    client.execute("CREATE TABLE tiny (id int) WITH (autovacuum_enabled = false)")
    client.execute("INSERT INTO tiny SELECT generate_series(1, 1000)")
    client.execute("ANALYZE")
    loaded = run(database, rules_of("table_bloat"))
    ((labels, estimate, breaching),) = outcome(loaded, "table_bloat_high")  # tiny is under 8 MB: no row
    assert labels == {"schema": "public", "table": "events"}
    assert estimate < 10 and not breaching  # a freshly loaded table is not bloated

    client.execute("DELETE FROM events WHERE id % 10 <> 0")
    client.execute("DELETE FROM tiny")
    client.execute("ANALYZE")
    ((labels, estimate, breaching),) = outcome(run(database, rules_of("table_bloat")), "table_bloat_high")
    assert labels == {"schema": "public", "table": "events"}
    assert 80 < estimate <= 90 and breaching  # 90 % of the rows are gone, their pages are still there


def min_stats_age(database: str, age: str | None) -> None:
    """Set (None: reset to the default) the unused-index rules' minimum statistics age of ``database``."""
    setting = sql.Identifier("dbops", "unused_indexes_min_stats_age")
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        if age is None:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET {}").format(sql.Identifier(database), setting))
        else:
            conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(sql.Identifier(database), setting,
                                                                         sql.Literal(age)))


def test_unused_indexes_say_nothing_while_statistics_are_young(database, connect):
    """25 never-scanned indexes: "never" means nothing until the statistics are old enough (7 days)."""
    client = connect()
    client.execute("CREATE TABLE wide (" + ", ".join(f"c{i} int" for i in range(25)) + ")")
    for i in range(25):
        client.execute(f"CREATE INDEX wide_c{i} ON wide (c{i})")
    # never reset: the statistics are as old as the server's uptime, here shorter than 100 years
    min_stats_age(database, "100 years")
    assert run(database, rules_of("unused_indexes")).samples == []
    min_stats_age(database, "0")
    assert outcome(run(database, rules_of("unused_indexes")), "unused_indexes_critical") == [({}, 25.0, True)]

    min_stats_age(database, None)
    client.execute("SELECT pg_stat_reset()")
    young = run(database, rules_of("unused_indexes"))
    assert young.metrics == [] and young.samples == [], "no value: the rules can neither fire nor resolve wrongly"


def test_unused_indexes_count_only_plain_valid_indexes_never_scanned(database, connect):
    min_stats_age(database, "0")  # statistics old enough for the rules whatever their real age
    client = connect()
    columns = ", ".join(f"c{i} int" for i in range(12))
    client.execute(f"CREATE TABLE wide (id int PRIMARY KEY, code text UNIQUE, {columns})")
    for i in range(12):
        client.execute(f"CREATE INDEX wide_c{i} ON wide (c{i})")
    client.execute("INSERT INTO wide (id, code, c0) SELECT g, 'c' || g, g FROM generate_series(1, 100) g")

    result = run(database, rules_of("unused_indexes"))
    assert outcome(result, "unused_indexes_warning") == [({}, 12.0, True)]  # primary key and unique left out
    assert outcome(result, "unused_indexes_critical") == [({}, 12.0, False)]

    client.execute("SET enable_seqscan = off")
    assert client.execute("SELECT count(*) FROM wide WHERE c0 = 7").fetchone()[0] == 1
    flush_statistics(client)
    result = eventually(lambda: run(database, rules_of("unused_indexes")),
                        lambda r: value(r, "unused_indexes_warning") < 12)
    assert outcome(result, "unused_indexes_warning") == [({}, 11.0, True)]


def test_health_score_drops_with_dead_tuples_and_rollbacks(database, connect):
    before = value(run(database, rules_of("health_score")), "health_score_warning")
    assert before > 75

    client = connect()
    client.execute("CREATE TABLE queue (id int) WITH (autovacuum_enabled = false)")
    client.execute("INSERT INTO queue SELECT generate_series(1, 10000)")
    client.execute("DELETE FROM queue")  # 100 % dead tuples: the component loses its 15 points
    client.execute("BEGIN; ROLLBACK; " * 1100)  # over 1000 transactions, nearly all rolled back: 15 more
    flush_statistics(client)
    rules = [*rules_of("health_score"), lowered("health_score_warning", before),
             *rules_of("rollback_rate")]
    result = eventually(lambda: run(database, rules), lambda r: value(r, "lowered") <= before - 30)
    assert value(result, "lowered") <= before - 30
    assert value(result, "rollback_rate_high") > 50  # the real 5 % threshold
    assert {s.rule for s in result.samples if s.breaching} >= {"lowered", "rollback_rate_high"}


# --- dbops's own rules, on the ops database ---------------------------------------------------------


@pytest.fixture
def ops_target(pg_server):
    """A target name of its own in the test ops database, and a writer; its rows are deleted at the end."""
    target = f"t_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_conninfo("dbops_test"), autocommit=True) as writer:
        yield target, writer
        for table in ("recovery_tests", "backups", "maintenance_log"):
            writer.execute(sql.SQL("DELETE FROM dbops.{} WHERE target = %s").format(sql.Identifier(table)), (target,))


def add_backup(writer: psycopg.Connection, target: str, hours_ago: float, verified: bool | None,
               kind: str = "full", status: str = "complete") -> str:
    backup_id = f"{target}/{kind}/{uuid.uuid4().hex[:8]}"
    writer.execute(
        "INSERT INTO dbops.backups (backup_id, target, kind, logical_date, run_id, location, bytes, tables, "
        "total_rows, verified, status, manifest, created_at) VALUES (%(id)s, %(target)s, %(kind)s, "
        "now() - %(hours)s * interval '1 hour', 'run', 'file:///nowhere', 1, 1, 1, %(verified)s, %(status)s, "
        "'{}', now() - %(hours)s * interval '1 hour')",
        {"id": backup_id, "target": target, "kind": kind, "hours": hours_ago, "verified": verified,
         "status": status})
    return backup_id


def add_recovery_test(writer: psycopg.Connection, target: str, backup_id: str, hours_ago: float, ok: bool) -> None:
    writer.execute(
        "INSERT INTO dbops.recovery_tests (backup_id, target, run_id, started_at, ok, checks) "
        "VALUES (%s, %s, 'run', now() - %s * interval '1 hour', %s, '{}')", (backup_id, target, hours_ago, ok))


def run_ops(target: str) -> Evaluation:
    return run("dbops_test", OPS_RULES, params={"target": target})


def test_ops_rules_on_backups_and_recovery_tests(ops_target):
    target, writer = ops_target
    never = run_ops(target)
    assert outcome(never, "verified_backup_missing_warning") == [({"newest": "never"}, 1_000_000.0, True)]
    assert outcome(never, "verified_backup_missing_critical") == [({"newest": "never"}, 1_000_000.0, True)]
    assert outcome(never, "recovery_test_failed") == []  # never tested: nothing to say

    old = add_backup(writer, target, hours_ago=30, verified=True)
    for newer in ({"verified": None}, {"verified": False}, {"verified": True, "kind": "tenant"},
                  {"verified": True, "status": "deleted"}):
        add_backup(writer, target, hours_ago=1, **newer)  # none of these is a verified full backup
    add_backup(writer, f"{target}_other", hours_ago=1, verified=True)  # another target's (deleted below)
    try:
        stale = run_ops(target)
    finally:
        writer.execute("DELETE FROM dbops.backups WHERE target = %s", (f"{target}_other",))
    assert value(stale, "verified_backup_missing_warning") == pytest.approx(30, abs=0.1)
    assert [s.rule for s in stale.samples if s.breaching] == ["verified_backup_missing_warning"]

    add_recovery_test(writer, target, old, hours_ago=30, ok=False)
    newest = add_backup(writer, target, hours_ago=2, verified=True)
    add_recovery_test(writer, target, newest, hours_ago=2, ok=True)
    fresh = run_ops(target)
    assert value(fresh, "verified_backup_missing_warning") == pytest.approx(2, abs=0.1)
    assert outcome(fresh, "recovery_test_failed") == [({}, 0.0, False)]
    assert not any(s.breaching for s in fresh.samples)

    add_recovery_test(writer, target, newest, hours_ago=0.5, ok=False)
    assert outcome(run_ops(target), "recovery_test_failed") == [({}, 1.0, True)]


def add_maintenance(writer: psycopg.Connection, target: str, kind: str, days_ago: int, table: str, status: str) -> None:
    writer.execute(
        "INSERT INTO dbops.maintenance_log (target, kind, logical_date, run_id, try_number, object_kind, schema_name, "
        "object_name, action, reason, status) VALUES (%s, %s, date_trunc('day', now()) - %s * interval '1 day', "
        "'run', 1, 'table', 'public', %s, 'vacuum_full', 'bloated', %s)", (target, kind, days_ago, table, status))


def test_maintenance_failed_counts_the_newest_run_of_each_kind(ops_target):
    target, writer = ops_target
    assert outcome(run_ops(target), "maintenance_failed") == [], "never maintained: nothing to say"
    add_maintenance(writer, target, "weekly", 7, "orders", "failed")  # an older run: not counted
    add_maintenance(writer, target, "weekly", 0, "orders", "failed")  # try 1 failed, try 2 finished it
    add_maintenance(writer, target, "weekly", 0, "orders", "done")
    add_maintenance(writer, target, "weekly", 0, "users", "failed")
    add_maintenance(writer, target, "daily", 0, "users", "skipped")  # skipped with a reason is not a failure
    assert sorted(outcome(run_ops(target), "maintenance_failed"), key=lambda o: o[0]["kind"]) == [
        ({"kind": "daily"}, 0.0, False), ({"kind": "weekly"}, 1.0, True)]
