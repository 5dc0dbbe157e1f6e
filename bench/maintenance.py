"""Weekly maintenance against the seeds' blanket ``VACUUM FULL``, on identical data, in one invocation.

A database ``bench_maint_<N>`` holds ``--tables`` tables (default 200) making about N MB: one large
unbloated application table (20 % of N), many small unbloated ones (50 %), and five heavily bloated
ones (30 %, four fifths of their rows deleted). It is built once (reused while its comment says it is
complete) and cloned, file by file, before every measured run, so both sides start from the same bytes.

Per round, in alternating order:

- blanket: ``VACUUM FULL`` of the whole database (what seeds 000 and 004 run every week);
- ours: the weekly scan + plan (``dbops.maintenance``: scan, plan, execute) and the execution of every planned action the way
  the mapped tasks run it (one connection each, lock_timeout, statement_timeout fit to size), in turn.

Meanwhile an application session runs a primary-key lookup on the large unbloated table every 20 ms;
its slowest answer is ``max_app_wait_seconds``. ``reclaimed_bytes`` is the drop in the total size
(heap, TOAST, indexes; main forks: the free-space
and visibility maps VACUUM FULL drops are rebuilt by the next VACUUM and are not counted) of the user tables. ``scan_seconds_1000_tables`` times the scan of a separate
database with 1,000 small tables. Medians over rounds; one JSON object per metric on stdout.

The policy is the config's default but ``min_bytes`` 1MB (the bloated tables are ~N/17 MB each).

    python bench/maintenance.py [--size-mb 100] [--rounds 2] [--tables 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from dbops.maintenance.policy import MaintenancePolicy  # noqa: E402
from dbops.maintenance.plan import Action, plan_weekly  # noqa: E402
from dbops.maintenance.execute import execute_action  # noqa: E402
from dbops.maintenance.scan import scan  # noqa: E402
from scripts.bench_output import emit, json_stdout, progress_printer  # noqa: E402
from scripts.stack.paths import PG_HOST  # noqa: E402
from scripts.stack.postgres import admin_connection, libpq_conninfo, start_postgres  # noqa: E402

POLICY = MaintenancePolicy(min_bytes=2**20)
BLOATED = 5
ROW_BYTES = 150  # a row of (id int, payload 96 chars) with header and line pointer, roughly
APP_TABLE = "app_orders"
BASELINE = "VACUUM FULL (every table, seeds 000/004)"


progress = progress_printer("maintenance")


def _reusable(conn: psycopg.Connection, name: str, marker: str) -> bool:
    row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                       (name,)).fetchone()
    return row is not None and row[0] == marker


def _fresh(conn: psycopg.Connection, name: str, template: str = "template0") -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
        sql.Identifier(name), sql.Identifier(template)))


def _mark(name: str, marker: str) -> None:
    with psycopg.connect(libpq_conninfo(name), autocommit=True) as conn:
        conn.execute("ANALYZE")
        conn.execute("CHECKPOINT")
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(marker)))


def _create_table(conn: psycopg.Connection, name: str, rows: int, keep_every: int = 1) -> None:
    table = sql.Identifier(name)
    conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, payload text NOT NULL) "
                         "WITH (autovacuum_enabled = false)").format(table))
    conn.execute(sql.SQL("INSERT INTO {} SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, %s) g")
                 .format(table), (rows,))
    if keep_every > 1:
        conn.execute(sql.SQL("DELETE FROM {} WHERE id %% %s <> 0").format(table), (keep_every,))


def prepare_database(size_mb: int, tables: int) -> str:
    name = f"bench_maint_{size_mb}_{tables}"
    marker = f"dbops bench data: maintenance --size-mb {size_mb} --tables {tables}, complete"
    with admin_connection() as conn:
        if _reusable(conn, name, marker):
            progress(f"reusing database {name}")
            return name
        progress(f"creating {name}: {tables} tables, about {size_mb} MB, {BLOATED} heavily bloated")
        _fresh(conn, name)
    total_rows = size_mb * 2**20 // ROW_BYTES
    small = tables - BLOATED - 1
    with psycopg.connect(libpq_conninfo(name), autocommit=True) as conn:
        _create_table(conn, APP_TABLE, int(total_rows * 0.2))
        for n in range(small):
            _create_table(conn, f"calm_{n:04d}", max(10, int(total_rows * 0.5 / small)))
        for n in range(BLOATED):
            _create_table(conn, f"bloated_{n}", int(total_rows * 0.3 / BLOATED), keep_every=5)
    _mark(name, marker)
    return name


def prepare_scan_database(tables: int = 1000) -> str:
    name = "bench_maint_scan_1000"
    marker = f"dbops bench data: maintenance scan, {tables} tables, complete"
    with admin_connection() as conn:
        if _reusable(conn, name, marker):
            return name
        progress(f"creating {name}: {tables} small tables")
        _fresh(conn, name)
    with psycopg.connect(libpq_conninfo(name), autocommit=True) as conn:
        for n in range(tables):
            table = sql.Identifier(f"t_{n:04d}")
            conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, name text, at timestamptz DEFAULT now())")
                         .format(table))
            conn.execute(sql.SQL("INSERT INTO {} (id, name) SELECT g, 'row ' || g FROM generate_series(1, 20) g")
                         .format(table))
    _mark(name, marker)
    return name


def clone(source: str, name: str) -> str:
    with admin_connection() as conn:
        _fresh(conn, name, template=source)
    return name


def user_bytes(dsn: str, forks: bool = False) -> int:
    """Bytes of the user tables' data: heap, TOAST and indexes (main forks; with ``forks`` also FSM and VM).

    The free-space and visibility maps are left out by default: VACUUM FULL drops them and the next VACUUM
    builds them again, so they are not space reclaimed (on 200 small tables they are 24 KiB each).
    """
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(
            "SELECT coalesce(sum(CASE WHEN %s THEN pg_total_relation_size(c.oid) ELSE pg_relation_size(c.oid) "
            "+ pg_indexes_size(c.oid) + coalesce(pg_relation_size(nullif(c.reltoastrelid, 0)), 0) "
            "+ coalesce(pg_indexes_size(nullif(c.reltoastrelid, 0)), 0) END), 0) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema')", (forks,)).fetchone()[0])


class AppProbe:
    """A primary-key lookup on the large unbloated table every 20 ms; remembers the slowest answer."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.slowest = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            statement = sql.SQL("SELECT payload FROM {} WHERE id = %s").format(sql.Identifier(APP_TABLE))
            n = 0
            while not self.stop.is_set():
                n += 1
                started = time.perf_counter()
                conn.execute(statement, (n % 1000 + 1,)).fetchone()
                self.slowest = max(self.slowest, time.perf_counter() - started)
                time.sleep(0.02)

    def __enter__(self) -> AppProbe:
        self.thread.start()
        time.sleep(0.1)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def blanket(dsn: str) -> tuple[float, int, float, int]:
    before, with_forks = user_bytes(dsn), user_bytes(dsn, forks=True)
    with psycopg.connect(dsn, autocommit=True) as conn, AppProbe(dsn) as probe:
        started = time.perf_counter()
        conn.execute("VACUUM FULL")
        seconds = time.perf_counter() - started
    return seconds, before - user_bytes(dsn), probe.slowest, with_forks - user_bytes(dsn, forks=True)


def ours(dsn: str) -> tuple[float, int, float, int, dict[str, int]]:
    before, with_forks = user_bytes(dsn), user_bytes(dsn, forks=True)
    with AppProbe(dsn) as probe:
        started = time.perf_counter()
        with psycopg.connect(dsn) as conn:
            measured = scan(conn, POLICY, PG_HOST)
        plan = plan_weekly(measured, POLICY)
        for item in plan.actions:
            with psycopg.connect(dsn) as conn:
                execute_action(conn, Action.from_dict(item.to_dict()), POLICY)
        seconds = time.perf_counter() - started
    counts: dict[str, int] = {}
    for item in plan.actions:
        counts[item.action] = counts.get(item.action, 0) + 1
    return seconds, before - user_bytes(dsn), probe.slowest, with_forks - user_bytes(dsn, forks=True), counts


def scan_seconds(name: str, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        with psycopg.connect(libpq_conninfo(name)) as conn:
            started = time.perf_counter()
            measured = scan(conn, POLICY, PG_HOST)
            times.append(time.perf_counter() - started)
        assert len(measured.tables) >= 1000, len(measured.tables)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tables", type=int, default=200)
    args = parser.parse_args(argv)
    out = json_stdout()
    start_postgres()
    source = prepare_database(args.size_mb, args.tables)
    work = f"{source}_work"
    results: dict[str, list] = {"blanket": [], "ours": []}
    for round_no in range(args.rounds):
        order = ("blanket", "ours") if round_no % 2 == 0 else ("ours", "blanket")
        for side in order:
            dsn = libpq_conninfo(clone(source, work))
            outcome = blanket(dsn) if side == "blanket" else ours(dsn)
            results[side].append(outcome)
            progress(f"round {round_no + 1} {side}: {outcome[0]:.2f} s, reclaimed {outcome[1] / 2**20:.1f} MiB, "
                     f"({outcome[3] / 2**20:.1f} MiB counting FSM/VM forks), slowest app query {outcome[2]:.3f} s"
                     + (f", actions {outcome[4]}" if side == "ours" else ""))
    with admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(work)))
    med = {side: [statistics.median(r[i] for r in rows) for i in range(3)] for side, rows in results.items()}
    for index, (metric, unit) in enumerate((("maintenance_seconds", "s"), ("reclaimed_bytes", "bytes"),
                                            ("max_app_wait_seconds", "s"))):
        emit(out, "maintenance", args.size_mb, metric, med["ours"][index], unit, BASELINE, med["blanket"][index])
    emit(out, "maintenance", args.size_mb, "scan_seconds_1000_tables", scan_seconds(prepare_scan_database()), "s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
