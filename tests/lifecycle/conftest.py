"""A lifecycle target on the real PostgreSQL 18: a scratch database with parents, children and a table with
hostile names, its own dbops.yaml, and helpers to run the operators and to fingerprint every row.

Operators run the way the task runner runs them, ``execute(context)`` with a FAKE minimal context
(logical_date, data_interval_end, run_id, ti with try_number, dag_run).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import psycopg
import pytest
from psycopg import sql

from dbops.operators.lifecycle import LifecycleCheckOperator, LifecycleOperator
from scripts.stack.paths import PG_HOST, PG_PORT
from scripts.stack.postgres import conn_uri, libpq_conninfo

HOSTILE_TABLE = 'we"ird; DROP TABLE parents; --'
HOSTILE_KEY = 'Key "Col"'
HOSTILE_TIME = 'time; col'
APP_PASSWORD = "app-Pa55-word-1"  # of the application roles of login_role()
START = datetime(2023, 1, 1, tzinfo=timezone.utc)
DAYS = 730  # one parent and one child per day from START; hostile rows too
SCHEMA = sql.SQL("""
CREATE TABLE parents (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, note text NOT NULL);
CREATE INDEX ON parents (created_at);
CREATE TABLE children (id bigint PRIMARY KEY, parent_id bigint REFERENCES parents (id), created_at timestamptz NOT NULL,
                       kind text NOT NULL, payload text);
CREATE INDEX ON children (created_at);
CREATE INDEX ON children (parent_id);
CREATE TABLE {hostile} ({key} int PRIMARY KEY, {time} timestamptz NOT NULL, "sel""ect" text);
CREATE INDEX ON {hostile} ({time});
INSERT INTO parents SELECT g, %(start)s::timestamptz + (g - 1) * interval '1 day', 'parent ' || g
  FROM generate_series(1, %(days)s) g;
-- child g belongs to parent g and is one day younger; every 50th child is young (it stays), so its parent
-- is referenced by a row that stays and is held back
INSERT INTO children SELECT g, g, %(start)s::timestamptz + g * interval '1 day', CASE WHEN g %% 3 = 0 THEN 'closed'
  ELSE 'open' END, repeat('x', 20) FROM generate_series(1, %(days)s) g;
UPDATE children SET created_at = %(start)s::timestamptz + interval '5 years' WHERE id %% 50 = 0;
INSERT INTO {hostile} SELECT g, %(start)s::timestamptz + (g - 1) * interval '1 day', 'v' || g
  FROM generate_series(1, %(days)s) g;
""").format(hostile=sql.Identifier(HOSTILE_TABLE), key=sql.Identifier(HOSTILE_KEY), time=sql.Identifier(HOSTILE_TIME))


def yaml_policies(extra: str = "") -> str:
    return f"""
        - {{table: parents, time_column: created_at, archive_after: 365d, retention: 700d}}
        - {{table: children, time_column: created_at, archive_after: 365d, retention: 700d}}
        - table: '{HOSTILE_TABLE}'
          time_column: '{HOSTILE_TIME}'
          archive_after: 365d
          retention: 700d
{extra}"""


def write_config(lab, policies: str, **settings) -> None:
    limits = {"batch_seconds": "0.2s", "lock_timeout": "500ms", "statement_timeout": "10s", "time_budget": "10min",
              "progress_every": 5, **settings}
    lines = "\n".join(f"      {k}: {v}" for k, v in limits.items())
    lab.config.write_text(f"""
ops_conn_id: dbops_state
storage:
  local: {{url: {lab.store}}}
targets:
  {lab.name}:
    conn_id: pg_{lab.name}
    backup: {{storage: local}}
    lifecycle:
{lines}
      policies:{policies}
""")


@pytest.fixture
def lab(scratch_db, tmp_path, monkeypatch, pg_server):
    """A target database with parents, children (FK) and a hostile table, and its config."""
    database = scratch_db()
    name = f"lc_{database[-12:]}"
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        psycopg.ClientCursor(conn).execute(SCHEMA, {"start": START, "days": DAYS})  # several statements
    monkeypatch.setenv(f"AIRFLOW_CONN_PG_{name.upper()}", conn_uri(database))
    config = tmp_path / "dbops.yaml"
    monkeypatch.setenv("DBOPS_CONFIG", str(config))
    lab = SimpleNamespace(name=name, database=database, dsn=libpq_conninfo(database), config=config,
                          store=tmp_path / "store", conn_uri=conn_uri(database))
    write_config(lab, yaml_policies())
    return lab


def login_role(database: str, monkeypatch, connection: str, grants: str) -> str:
    """A login role without BYPASSRLS (nor superuser) given ``grants`` (SQL, ``{role}`` and ``{database}`` for
    its and the database's identifiers) in ``database``; Airflow connection ``connection`` is switched to it.
    The caller drops it with :func:`drop_role`."""
    role, password = f"lc_app_{database[-10:]}", APP_PASSWORD
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS PASSWORD {}").format(
            sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL(grants).format(role=sql.Identifier(role), database=sql.Identifier(database)))
    monkeypatch.setenv(f"AIRFLOW_CONN_{connection.upper()}",
                       f"postgresql://{role}:{password}@{PG_HOST}:{PG_PORT}/{database}?connect_timeout=5")
    return role


def drop_role(database: str, role: str) -> None:
    with psycopg.connect(libpq_conninfo(database), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {role}; DROP ROLE {role}").format(role=sql.Identifier(role)))


@pytest.fixture
def app_role(lab, monkeypatch):
    """The lab target's connection as an application role: every privilege the lifecycle work needs on the
    tables and the archive schema, owner of none of them, no BYPASSRLS."""
    role = login_role(lab.database, monkeypatch, f"pg_{lab.name}",
                      "GRANT CREATE ON DATABASE {database} TO {role}; GRANT ALL ON SCHEMA public TO {role}; "
                      "GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}")
    yield role
    drop_role(lab.database, role)


def context(end: datetime, run_id: str = "test_run", try_number: int = 1) -> dict:
    """FAKE minimal Airflow context: what the lifecycle operators read from it."""
    ti = SimpleNamespace(try_number=try_number, max_tries=2)
    return {"logical_date": end, "data_interval_end": end, "run_id": run_id, "ti": ti,
            "dag_run": SimpleNamespace(run_after=end)}


def run(lab, job: str, end: datetime, cadence: str | None = None, **kwargs) -> dict:
    operator = LifecycleOperator(task_id=job, target=lab.name, job=job, cadence=cadence)
    return operator.execute(context(end, **kwargs))


def check(lab, job: str = "archive", end: datetime = START) -> dict:
    return LifecycleCheckOperator(task_id="check_policies", target=lab.name, job=job).execute(context(end))


def by_table(result: dict) -> dict[str, dict]:
    return {p["table"]: p for p in result["policies"]}


def fingerprint(dsn: str, table: str = "parents", key: str = "id") -> tuple[int, int, str]:
    """(rows in table + archive, distinct keys, md5 of the sorted keys): every row exactly once?"""
    with psycopg.connect(dsn) as conn:
        archive = conn.execute("SELECT to_regclass(%s)", (f"archive.{table}",)).fetchone()[0]
        union = sql.SQL("SELECT {k} FROM {t}").format(k=sql.Identifier(key), t=sql.Identifier(table))
        if archive:
            union = sql.SQL("{} UNION ALL SELECT {k} FROM {a}").format(
                union, k=sql.Identifier(key), a=sql.Identifier("archive", table))
        return conn.execute(sql.SQL("SELECT count(*), count(DISTINCT k), md5(string_agg(k::text, ',' ORDER BY k)) "
                                    "FROM ({}) u(k)").format(union)).fetchone()


def count(dsn: str, query: str, params: tuple = ()) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute(query, params or None).fetchone()[0]


def ops_rows(target: str) -> list[dict]:
    from psycopg.rows import dict_row

    with psycopg.connect(libpq_conninfo("dbops_test"), row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM dbops.lifecycle_runs WHERE target = %s ORDER BY id", (target,)).fetchall()


def day(n: int) -> datetime:
    return START + timedelta(days=n)
