"""The backup-age rules on the real ops database: the age of the newest verified backup's data."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest

from dbops.alerting.evaluate import evaluate
from dbops.alerting.rules import load_pack
from scripts.stack.postgres import libpq_conninfo

RULES = {r.name: r for r in load_pack("postgres_default") if r.query == "backup_age"}


@pytest.fixture
def ops_target(pg_server):
    """A target name of its own in the test ops database, and a writer; its rows are deleted at the end."""
    target = f"age_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(libpq_conninfo("dbops_test"), autocommit=True) as writer:
        yield target, writer
        writer.execute("DELETE FROM dbops.backups WHERE target = %s", (target,))


def add_verified_backup(writer: psycopg.Connection, target: str, taken_at: datetime, recorded: datetime) -> None:
    writer.execute(
        "INSERT INTO dbops.backups (backup_id, target, kind, logical_date, run_id, location, bytes, tables, "
        "total_rows, verified, manifest, created_at, taken_at, covers, run_type, storage) VALUES (%(id)s, %(target)s, "
        "'full', %(covers)s, 'backfill__x', 'file:///nowhere', 1, 1, 1, true, '{}', %(recorded)s, %(taken_at)s, "
        "%(covers)s, 'backfill', 'local')",
        {"id": f"{target}/full/{uuid.uuid4().hex[:8]}", "target": target, "taken_at": taken_at,
         "recorded": recorded, "covers": taken_at - timedelta(days=3)})


def evaluated(target: str) -> dict[str, tuple[dict[str, str], float, bool, str]]:
    """Rule name -> (labels, value, breaching, rendered summary)."""
    with psycopg.connect(libpq_conninfo("dbops_test")) as conn:
        result = evaluate(conn, list(RULES.values()), params={"target": target})
    assert result.errors == []
    return {s.rule: (s.labels, s.value, s.breaching, RULES[s.rule].render(s.value, s.labels)) for s in result.samples}


def test_never_backed_up_says_never_not_a_sentinel(ops_target):
    target, _ = ops_target
    result = evaluated(target)
    for name in RULES:
        labels, value, breaching, summary = result[name]
        assert labels == {"newest": "never"} and breaching
        assert value == 1_000_000.0  # compared with the threshold, never shown
        assert summary.endswith("(newest verified backup taken: never)") and "e+06" not in summary
        assert "1000000" not in summary


def test_age_counts_from_the_snapshot_not_from_when_it_was_recorded(ops_target):
    """A backup recorded an hour ago whose data is 30 hours old is 30 hours old (a backfill must not silence it)."""
    target, writer = ops_target
    now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
    add_verified_backup(writer, target, taken_at=now - timedelta(hours=30), recorded=now - timedelta(hours=1))
    result = evaluated(target)
    labels, value, breaching, summary = result["verified_backup_missing_warning"]
    assert value == pytest.approx(30, abs=0.1) and breaching
    snapshot = (now - timedelta(hours=30)).strftime("%Y-%m-%d %H:%M UTC")
    assert labels == {"newest": snapshot}
    assert summary == f"no verified backup in the last 26 h (newest verified backup taken: {snapshot})"
    assert not result["verified_backup_missing_critical"][2]
