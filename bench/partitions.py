#!/usr/bin/env python3
"""Partition management benchmarks on the local PostgreSQL.

    python bench/partitions.py [--size-mb 10] [--hold-seconds 10] [--tables 200] [--partitions 36]

(a) Retirement under load: a long query holds the parent; a loop of short application queries runs; one
partition is retired with a plain ``ALTER TABLE … DETACH PARTITION`` (baseline) and with ours
(``dbops.partitions.retire.detach``: CONCURRENTLY with lock_timeout, retried). ``app_max_wait_seconds``: the
longest application query while the retirement ran. (b) Scale: ``--tables`` partitioned tables with
``--partitions`` partitions each, inspect-and-plan seconds (``plan_seconds``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from dbops.partitions.tree import inspect_table, session  # noqa: E402
from dbops.partitions.plan import RETIRE, Step, plan_table  # noqa: E402
from dbops.partitions.policy import PartitionsPolicy, TablePolicy  # noqa: E402
from dbops.partitions.retire import detach  # noqa: E402
from scripts.bench_output import emit, json_stdout, progress_printer  # noqa: E402
from scripts.stack.postgres import admin_connection, libpq_conninfo, start_postgres  # noqa: E402

DATABASE = "dbops_bench_partitions"
POLICY = PartitionsPolicy(tables={}, lock_timeout=0.5, statement_timeout=120, lock_retries=8, lock_retry_delay=0.5)
TABLE = TablePolicy(interval="monthly", premake=6, retention="12 months")
LOGICAL_DATE = datetime(2026, 12, 1, tzinfo=timezone.utc)


progress = progress_printer("partitions")


def fresh_database() -> str:
    with admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))
    return libpq_conninfo(DATABASE)


def make_table(conn: psycopg.Connection, name: str, months: int, rows_per_month: int = 0) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} (id bigint, at timestamptz NOT NULL, v text) PARTITION BY RANGE (at)").format(
        sql.Identifier(name)))
    for i in range(months):
        lower = datetime(2024 + (i // 12), 1 + i % 12, 1, tzinfo=timezone.utc)
        upper = datetime(2024 + ((i + 1) // 12), 1 + (i + 1) % 12, 1, tzinfo=timezone.utc)
        conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(f"{name}_{i:02d}"), sql.Identifier(name), sql.Literal(lower), sql.Literal(upper)))
    if rows_per_month:
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, timestamptz '2024-01-01' + (g %% (%s * 28)) * interval '1 day', "
                             "md5(g::text) FROM generate_series(1, %s) g").format(sql.Identifier(name)),
                     (months, rows_per_month * months))


def under_load(dsn: str, hold: float, retire) -> float:
    """Longest application query (s) while ``retire`` runs and a ``hold``-second query reads the parent."""
    def long_query() -> None:
        with psycopg.connect(dsn) as conn:
            conn.execute("SELECT count(*), pg_sleep(%s) FROM events", (hold,))

    waits: list[float] = []
    stop = threading.Event()

    def application() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM events WHERE at >= '2025-06-01'")
                waits.append(time.monotonic() - started)
                time.sleep(0.02)

    holder = threading.Thread(target=long_query)
    holder.start()
    time.sleep(0.5)
    app = threading.Thread(target=application)
    app.start()
    time.sleep(0.3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        retire(conn)
    time.sleep(0.3)
    stop.set()
    app.join()
    holder.join()
    return max(waits)


def bench_retirement(dsn: str, hold: float, rows: int) -> tuple[float, float]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_table(conn, "events", 24, rows)

    def plain(conn: psycopg.Connection) -> None:
        conn.execute("ALTER TABLE events DETACH PARTITION events_00")

    def ours(conn: psycopg.Connection) -> None:
        session(conn, POLICY.lock_timeout, POLICY.statement_timeout)
        found = inspect_table(conn, "events", TABLE, "bench")
        part = next(p for p in found.partitions if p.name == "events_01")
        detach(conn, found, Step(RETIRE, "events", part.schema, part.name, part.lower.isoformat(),
                                 part.upper.isoformat(), expired=True), POLICY)

    baseline = under_load(dsn, hold, plain)
    progress(f"plain DETACH: application waited up to {baseline:.2f} s")
    mine = under_load(dsn, hold, ours)
    progress(f"ours: application waited up to {mine:.2f} s")
    return mine, baseline


def bench_plan(dsn: str, tables: int, partitions: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for t in range(tables):
            make_table(conn, f"scale_{t:03d}", partitions)
    with psycopg.connect(dsn) as conn:
        session(conn, POLICY.lock_timeout, POLICY.statement_timeout)
        started = time.monotonic()
        for t in range(tables):
            plan_table(inspect_table(conn, f"scale_{t:03d}", TABLE, "bench"), TABLE, LOGICAL_DATE)
        return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=10)
    parser.add_argument("--hold-seconds", type=float, default=10.0)
    parser.add_argument("--tables", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=36)
    args = parser.parse_args(argv)
    out = json_stdout()
    start_postgres()
    dsn = fresh_database()
    try:
        mine, baseline = bench_retirement(dsn, args.hold_seconds, rows=max(1, args.size_mb * 4000 // 24))
        emit(out, "partitions", args.size_mb, "app_max_wait_seconds", mine, "s", "plain ALTER TABLE … DETACH PARTITION",
             baseline)
        seconds = bench_plan(dsn, args.tables, args.partitions)
        emit(out, "partitions", args.size_mb, "plan_seconds", seconds, "s")
    finally:
        with admin_connection() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(DATABASE)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
