"""scripts/demo_data.py against a real PostgreSQL: schema, data, bloat, stale rows, determinism.

Expects the session fixture ``pg_admin_dsn`` (tests/conftest.py): a libpq conninfo string for a
superuser connection to database ``postgres``. The module creates its own scratch database from
it, runs the generator twice there (CLI, connection through PG* environment variables only) and
drops the database at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "demo_data.py"
NOW = "2025-06-15"
TABLES = ("tenants", "users", "programs", "documents", "analysis_results", "reports", "user_events",
          "learning_sessions", "orders", "payments", "audit_logs", "user_sessions")
BLOATED = ("orders", "user_sessions", "user_events")
ENV_KEYS = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "user": "PGUSER",
            "password": "PGPASSWORD", "passfile": "PGPASSFILE", "dbname": "PGDATABASE",
            "sslmode": "PGSSLMODE"}


@dataclass(frozen=True)
class Snapshot:
    """What one generator run left behind."""

    stdout: str
    stderr: str
    counts: dict[str, int]
    orders_md5: str


@dataclass(frozen=True)
class DemoDb:
    conninfo: str
    password: str
    first: Snapshot
    second: Snapshot


def libpq_env(conninfo: str) -> dict[str, str]:
    """The process environment with the connection given as PG* variables only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update({ENV_KEYS[k]: str(v) for k, v in conninfo_to_dict(conninfo).items() if k in ENV_KEYS})
    return env


def snapshot(conninfo: str) -> Snapshot:
    """Run the generator once and record row counts and a checksum of orders."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--size-mb", "5", "--seed", "7", "--now", NOW],
        env=libpq_env(conninfo), capture_output=True, text=True, timeout=600, check=True)
    with psycopg.connect(conninfo) as conn:
        counts = {t: conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))).fetchone()[0]
                  for t in TABLES}
        md5 = conn.execute("SELECT md5(string_agg(o::text, E'\\n' ORDER BY o.id)) FROM orders o").fetchone()[0]
    return Snapshot(done.stdout, done.stderr, counts, md5)


@pytest.fixture(scope="module")
def demo_db(pg_admin_dsn: str) -> Iterator[DemoDb]:
    name = f"test_demo_data_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conninfo = make_conninfo(pg_admin_dsn, dbname=name)
    try:
        first = snapshot(conninfo)
        second = snapshot(conninfo)  # over the first run's objects: drop and recreate
        yield DemoDb(conninfo, conninfo_to_dict(conninfo)["password"], first, second)
    finally:
        with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def query(demo_db: DemoDb, statement: str, params: tuple | dict = ()) -> list[tuple]:
    with psycopg.connect(demo_db.conninfo) as conn:
        return conn.execute(statement, params).fetchall()


def test_summary_line_and_no_password_in_output(demo_db: DemoDb) -> None:
    lines = demo_db.second.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo_data: size_mb=")
    assert "orders=" in lines[0] and "seconds=" in lines[0]
    assert len(demo_db.password) >= 16, "the local server always has a generated password"
    assert demo_db.password not in demo_db.second.stdout + demo_db.second.stderr


def test_all_tables_exist_and_are_filled(demo_db: DemoDb) -> None:
    assert all(demo_db.second.counts[t] > 0 for t in TABLES), demo_db.second.counts


def test_learning_sessions_spread_over_partitions(demo_db: DemoDb) -> None:
    partitions = query(demo_db, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'learning_sessions'::regclass")
    assert partitions[0][0] == 16  # 12 past months, the current one, 2 ahead, DEFAULT
    used = query(demo_db, "SELECT tableoid::regclass::text, count(*) FROM learning_sessions GROUP BY 1")
    names = {name for name, _ in used}
    assert len(names) >= 6
    assert "learning_sessions_2025_06" in names and "learning_sessions_default" not in names


def test_bloated_tables_keep_dead_tuples(demo_db: DemoDb) -> None:
    rows = query(demo_db, """SELECT s.relname, s.n_dead_tup, c.reloptions FROM pg_stat_user_tables s
                              JOIN pg_class c ON c.oid = s.relid WHERE s.relname = ANY(%s)""", (list(BLOATED),))
    assert len(rows) == len(BLOATED)
    for relname, dead, options in rows:
        assert dead > 0, relname
        assert "autovacuum_enabled=false" in options, relname


def test_rows_past_retention(demo_db: DemoDb) -> None:
    (audit, sessions, events), = query(demo_db, """
        SELECT (SELECT count(*) FROM audit_logs WHERE created_at < %(now)s::date - 365),
               (SELECT count(*) FROM user_sessions WHERE created_at < %(now)s::date - 90),
               (SELECT count(*) FROM user_events WHERE created_at < %(now)s::date - 30)""", {"now": NOW})
    assert audit > 0 and sessions > 0 and events > 0


def test_foreign_keys_exist_and_hold(demo_db: DemoDb) -> None:
    fks = query(demo_db, """SELECT conrelid::regclass::text, convalidated FROM pg_constraint
                             WHERE contype = 'f' AND conparentid = 0 AND connamespace = 'public'::regnamespace""")
    assert len(fks) >= 19 and all(valid for _, valid in fks)
    assert {table for table, _ in fks} >= set(TABLES) - {"tenants", "users"}
    (orphans,), = query(demo_db, """
        SELECT (SELECT count(*) FROM payments p WHERE NOT EXISTS (SELECT FROM orders o WHERE o.id = p.order_id))
             + (SELECT count(*) FROM reports r WHERE NOT EXISTS
                   (SELECT FROM analysis_results a WHERE a.id = r.analysis_id))
             + (SELECT count(*) FROM learning_sessions s WHERE NOT EXISTS
                   (SELECT FROM users u WHERE u.id = s.user_id))""")
    assert orphans == 0


def test_same_seed_gives_same_data(demo_db: DemoDb) -> None:
    assert demo_db.first.counts == demo_db.second.counts
    assert demo_db.first.orders_md5 == demo_db.second.orders_md5
