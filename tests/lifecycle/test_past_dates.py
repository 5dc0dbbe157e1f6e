"""A run for a logical date long past does that period's work: pg_archive__ for 2025-03-01 (``dag.test()``)
moves exactly the rows that were due then, no more, no fewer (the DAG's start date must not swallow it)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import psycopg

from tests.lifecycle.conftest import write_config
from tests.lifecycle.test_dags import dags, states

LOGICAL_DATE = datetime(2025, 3, 1, 2, 0, tzinfo=timezone.utc)
CUTOFF = LOGICAL_DATE - timedelta(days=365)


def ids(dsn: str, query: str) -> set[int]:
    with psycopg.connect(dsn) as conn:
        return {row[0] for row in conn.execute(query, {"cutoff": CUTOFF})}


def test_archive_run_for_march_2025_moves_exactly_the_rows_due_then(lab):
    write_config(lab, """
        - {table: parents, time_column: created_at, archive_after: 365d}
        - {table: children, time_column: created_at, archive_after: 365d}""")
    due_children = ids(lab.dsn, "SELECT id FROM children WHERE created_at < %(cutoff)s")
    due_parents = ids(lab.dsn, "SELECT id FROM parents p WHERE created_at < %(cutoff)s AND NOT EXISTS "
                               "(SELECT 1 FROM children c WHERE c.parent_id = p.id AND c.created_at >= %(cutoff)s)")
    assert due_parents and due_children and len(due_parents) < 730

    run = dags()[f"pg_archive__{lab.name}"].test(logical_date=LOGICAL_DATE)

    assert states(run) == {"check_policies": "success", "archive": "success"}, "a run with task instances"
    assert ids(lab.dsn, "SELECT id FROM archive.parents") == due_parents
    assert ids(lab.dsn, "SELECT id FROM archive.children") == due_children
    assert not ids(lab.dsn, "SELECT id FROM parents WHERE id IN (SELECT id FROM archive.parents)")



def test_three_2025_months_one_after_the_other_each_move_their_months_rows(lab):
    write_config(lab, """
        - {table: parents, time_column: created_at, archive_after: 365d}""")
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM children")  # no references: every parent goes when it is due
    archive = dags()[f"pg_archive__{lab.name}"]
    archived: set[int] = set()
    for month in (1, 2, 3):
        logical_date = datetime(2025, month, 1, 2, 0, tzinfo=timezone.utc)
        cutoff = logical_date - timedelta(days=365)
        due = ids(lab.dsn, f"SELECT id FROM parents WHERE created_at < '{cutoff.isoformat()}'")
        assert due, f"the data has rows due at {cutoff}"

        run = archive.test(logical_date=logical_date)

        assert states(run) == {"check_policies": "success", "archive": "success"}
        now_archived = ids(lab.dsn, "SELECT id FROM archive.parents")
        assert now_archived - archived == due, f"the run for 2025-{month:02} moved exactly its month's rows"
        archived = now_archived
