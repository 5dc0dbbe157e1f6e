"""Archive moves against the seed's single-statement CTE, on identical data, in one invocation.

A database ``bench_archive_<N>`` holds one table ``events`` of about N MB (id, created_at with an index,
a 200-character payload, a note), half of its rows older than the cutoff. It is built once (reused while
its comment says it is complete) and cloned before every measured run, so both sides start from the same
bytes. Per round, in alternating order:

- CTE: ``WITH archived AS (DELETE FROM events WHERE created_at < cutoff RETURNING *) INSERT INTO
  events_archive SELECT * FROM archived`` (seed 003's ``archive_old_data()``), one transaction;
- ours: :func:`dbops.lifecycle.archive.archive_policy`, batches of ``batch_seconds`` 0.5 s, each its own
  transaction with lock_timeout 2 s and statement_timeout 30 s, into ``archive.events``.

Meanwhile an application session updates a random old row (one the run will move) every 10 ms; its slowest
update is ``app_max_wait_seconds``. ``max_txn_seconds`` is the longest transaction (ours: the slowest batch;
the CTE: its whole run). Medians over rounds; one JSON object per metric on stdout.

    python bench/archive.py [--size-mb 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from dbops.lifecycle.archive import archive_policy  # noqa: E402
from dbops.lifecycle.archive_table import ensure_archive_table  # noqa: E402
from dbops.lifecycle.batches import Limits, Scope  # noqa: E402
from dbops.lifecycle.catalog import describe  # noqa: E402
from scripts.bench_output import emit, json_stdout, progress_printer  # noqa: E402
from scripts.stack.postgres import admin_connection, libpq_conninfo, start_postgres  # noqa: E402

ROW_BYTES = 330  # heap row with a 200-character payload, plus its share of two indexes, roughly
CUTOFF = datetime(2025, 1, 1, tzinfo=timezone.utc)
BASELINE = "single-statement DELETE … RETURNING into INSERT (seed 003)"
MARKER = "dbops bench archive: complete"


progress = progress_printer("archive")


def prepare_database(size_mb: int) -> tuple[str, int]:
    """The template database and its row count; built once per size."""
    name, rows = f"bench_archive_{size_mb}", max(1000, size_mb * 2**20 // ROW_BYTES)
    with admin_connection() as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (name,)).fetchone()
        if row is not None and row[0] == MARKER:
            return name, rows
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    progress(f"building {name}: {rows} rows")
    with psycopg.connect(libpq_conninfo(name), autocommit=True) as conn:
        conn.execute("CREATE TABLE events (id bigint PRIMARY KEY, created_at timestamptz NOT NULL, "
                     "payload text NOT NULL, note text)")
        # ids follow time; half of the rows are older than the cutoff
        conn.execute("INSERT INTO events SELECT g, %s::timestamptz + (g - %s) * interval '1 minute', "
                     "repeat(md5(g::text), 7)::char(200), NULL FROM generate_series(1, %s) g",
                     (CUTOFF, rows // 2, rows))
        conn.execute("CREATE INDEX events_created_at ON events (created_at)")
        conn.execute("CREATE TABLE events_archive (LIKE events)")  # the seed's <table>_archive
        conn.execute("ALTER TABLE events_archive ADD PRIMARY KEY (id)")
        conn.execute("VACUUM ANALYZE")
        conn.execute("CHECKPOINT")
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(MARKER)))
    return name, rows


def clone(source: str, work: str) -> str:
    with admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(work)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
            sql.Identifier(work), sql.Identifier(source)))
    return work


class Application(threading.Thread):
    """Updates a random old row every 10 ms; keeps the slowest update's seconds."""

    def __init__(self, dsn: str, old_rows: int):
        super().__init__(daemon=True)
        self.dsn, self.old_rows, self.stop, self.max_wait = dsn, old_rows, threading.Event(), 0.0

    def run(self) -> None:
        rng = random.Random(7)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute("UPDATE events SET note = 'touched' WHERE id = %s", (rng.randint(1, self.old_rows),))
                self.max_wait = max(self.max_wait, time.monotonic() - started)
                time.sleep(0.01)


def measured(dsn: str, old_rows: int, work) -> tuple[int, float, float, float]:
    """(rows moved, seconds, longest transaction, slowest application update) of ``work(conn)``."""
    app = Application(dsn, old_rows)
    with psycopg.connect(dsn, autocommit=True) as conn:
        prepare = getattr(work, "prepare", None)
        if prepare:
            prepare(conn)
        app.start()
        time.sleep(0.2)
        started = time.monotonic()
        moved, longest = work(conn)
        seconds = time.monotonic() - started
        time.sleep(0.2)
        app.stop.set()
        app.join()
    return moved, seconds, longest, app.max_wait


def cte(conn: psycopg.Connection) -> tuple[int, float]:
    started = time.monotonic()
    moved = conn.execute("WITH archived AS (DELETE FROM events WHERE created_at < %s RETURNING *) "
                         "INSERT INTO events_archive SELECT * FROM archived", (CUTOFF,)).rowcount
    return moved, time.monotonic() - started


def ours(conn: psycopg.Connection) -> tuple[int, float]:
    source = describe(conn, "public", "events")
    scope = Scope("public", "events", source.primary_key, "created_at", CUTOFF, (), source.references)
    limits = Limits(batch_seconds=0.5, pause=0.0, deadline=time.monotonic() + 3600, lock_timeout=2.0,
                    statement_timeout=30.0, lock_retries=5, progress_every=10**9)
    tally = archive_policy(conn, scope, source, limits, to_database=True)
    return tally.rows, tally.max_batch_seconds


ours.prepare = lambda conn: ensure_archive_table(conn, describe(conn, "public", "events"), 2.0)  # not timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    out = json_stdout()
    start_postgres()
    source, rows = prepare_database(args.size_mb)
    work = f"{source}_work"
    results: dict[str, list] = {"cte": [], "ours": []}
    for round_no in range(args.rounds):
        for side in ("cte", "ours") if round_no % 2 == 0 else ("ours", "cte"):
            dsn = libpq_conninfo(clone(source, work))
            moved, seconds, longest, wait = measured(dsn, rows // 2, cte if side == "cte" else ours)
            results[side].append((moved / seconds, longest, wait))
            progress(f"round {round_no + 1} {side}: {moved} rows in {seconds:.2f} s ({moved / seconds:.0f} rows/s), "
                     f"longest transaction {longest:.3f} s, slowest application update {wait:.3f} s")
    with admin_connection() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(work)))
    med = {side: [statistics.median(r[i] for r in runs) for i in range(3)] for side, runs in results.items()}
    for index, (metric, unit) in enumerate((("archive_rows_per_s", "rows/s"), ("max_txn_seconds", "s"),
                                            ("app_max_wait_seconds", "s"))):
        emit(out, "archive", args.size_mb, metric, med["ours"][index], unit, BASELINE, med["cte"][index])
    return 0


if __name__ == "__main__":
    sys.exit(main())
