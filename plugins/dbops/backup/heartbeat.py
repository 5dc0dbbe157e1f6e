"""The heartbeat table dbops owns in a target database (as pt-heartbeat does): marker rows written around
a recovery target time prove that point-in-time recovery stops exactly there."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg import sql

from dbops.backup.dump import count_rows

TABLE = sql.Identifier("public", "dbops_pitr_heartbeat")
_CREATE = sql.SQL("CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, run_id text NOT NULL, "
                  "position text NOT NULL CHECK (position IN ('before', 'after')), "
                  "written_at timestamptz NOT NULL DEFAULT clock_timestamp())").format(TABLE)


@dataclass(frozen=True)
class Markers:
    """A marker row committed before ``target_time`` and one after; the row counts as of ``target_time``, and
    the tables whose count changed by the time the ``after`` marker was committed (written meanwhile)."""

    before: int
    after: int
    target_time: datetime
    rows: dict[str, int]
    changing: frozenset[str] = frozenset()


def write_markers(conn: psycopg.Connection, run_id: str) -> Markers:
    """Commit the ``before`` marker, read every logged table's rows and the target time in one snapshot taken
    after it, then commit the ``after`` marker (its commit time is later than the target time). Unlogged
    tables are left out: recovery empties them.

    The rows are counted once more after the ``after`` marker: a table written meanwhile may hold a commit
    timed before the target that the snapshot did not see yet (it was being committed), so only tables
    whose count held still are compared after recovery."""
    conn.autocommit = True
    conn.execute(_CREATE)
    insert = sql.SQL("INSERT INTO {} (run_id, position) VALUES (%s, %s) RETURNING id").format(TABLE)
    before = conn.execute(insert, (run_id, "before")).fetchone()[0]
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        target_time = conn.execute("SELECT clock_timestamp()").fetchone()[0]  # takes the snapshot too
        rows = count_rows(conn, logged_only=True)
    after = conn.execute(insert, (run_id, "after")).fetchone()[0]
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        settled = count_rows(conn, logged_only=True)
    changing = frozenset(table for table in rows if settled.get(table) != rows[table])
    return Markers(before, after, target_time, rows, changing)


def check_markers(conn: psycopg.Connection, markers: Markers) -> dict:
    """In the recovered database: the ``before`` marker is there, the ``after`` one is not, rows as counted."""
    found = {row[0] for row in conn.execute(sql.SQL("SELECT id FROM {} WHERE id IN (%s, %s)").format(TABLE),
                                            (markers.before, markers.after))}
    restored = count_rows(conn, logged_only=True)
    mismatched = {table: {"expected": markers.rows.get(table), "recovered": restored.get(table)}
                  for table in sorted(set(markers.rows) | set(restored))
                  if table not in markers.changing and markers.rows.get(table) != restored.get(table)}
    return {
        "markers": {"ok": markers.before in found and markers.after not in found,
                    "before_present": markers.before in found, "after_absent": markers.after not in found},
        "row_counts": {"ok": not mismatched, "tables": len(restored), "rows": sum(restored.values()),
                       "mismatched": mismatched, "written_during_the_test": sorted(markers.changing)},
    }
