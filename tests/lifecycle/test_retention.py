"""Retention purges and exports to the store on the real PostgreSQL 18."""

from __future__ import annotations

import json

import psycopg
import pytest
import zstandard
from airflow.sdk.exceptions import AirflowException

from dbops.core.streams import file_sha256
from tests.lifecycle.conftest import DAYS, by_table, count, day, fingerprint, ops_rows, run, write_config

ARCHIVED = day(DAYS + 365)  # archive cutoff day(DAYS)
PURGED = day(700 + 400)  # retention cutoff day(400)


def test_purge_deletes_past_retention_from_table_and_archive_once(lab):
    run(lab, "archive", day(365 + 300))  # archive cutoff day(300): rows 0..299 archived
    result = by_table(run(lab, "retention", PURGED))
    # parents 1..400 (created day 0..399) are past retention: most of 1..300 in the archive, the rest in the
    # table; the parents of young children (every 50th) stay in the table, held back
    assert count(lab.dsn, "SELECT count(*) FROM archive.parents WHERE created_at < %s", (day(400),)) == 0
    assert count(lab.dsn, "SELECT count(*) FROM parents WHERE created_at < %s", (day(400),)) == 8
    assert result["parents"]["rows_held_back"] == 8
    assert count(lab.dsn, "SELECT count(*) FROM children WHERE created_at < %s", (day(400),)) == 0
    assert count(lab.dsn, "SELECT count(*) FROM parents WHERE created_at < %s AND id %% 50 <> 0", (day(400),)) == 0
    kept = {t: fingerprint(lab.dsn, t) for t in ("parents", "children")}
    again = by_table(run(lab, "retention", PURGED, run_id="rerun"))
    assert {t: p["rows_purged"] for t, p in again.items()} == {t: 0 for t in again}
    assert {t: fingerprint(lab.dsn, t) for t in ("parents", "children")} == kept
    assert {r["status"] for r in ops_rows(lab.name) if r["job"] == "retention"} == {"done"}


def test_archive_to_store_writes_files_with_manifests_then_retention_deletes_them(lab):
    write_config(lab, """
        - {table: parents, time_column: created_at, archive_after: 365d, retention: 700d, archive_storage: store}""")
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM children")
    result = by_table(run(lab, "archive", day(365 + 700)))
    assert result["parents"]["rows_moved"] == 700
    assert count(lab.dsn, "SELECT count(*) FROM parents") == DAYS - 700
    assert count(lab.dsn, "SELECT to_regclass('archive.parents') IS NULL")  # no archive table: in the store
    files = sorted(p for p in lab.store.rglob("*.jsonl.zst"))
    assert len(files) == result["parents"]["batches"] > 1
    rows, newest = [], {}
    for path in files:
        manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
        newest[path] = manifest["newest"]
        assert manifest["table"] == "parents" and manifest["sha256"] == file_sha256(path)
        assert manifest["cutoff"] == day(700).isoformat()
        lines = zstandard.ZstdDecompressor().decompress(path.read_bytes()).decode().splitlines()
        assert manifest["rows"] == len(lines)
        rows += [json.loads(line) for line in lines]
    assert sorted(r["id"] for r in rows) == list(range(1, 701))

    purged = by_table(run(lab, "retention", day(700 + 600)))  # retention cutoff day(600): the first file's rows
    expired = {p for p in files if newest[p] < day(600).isoformat()}
    assert expired and purged["parents"]["files_deleted"] == len(expired)
    assert set(lab.store.rglob("*.jsonl.zst")) == set(files) - expired
    assert not any(p.with_name(p.name + ".manifest.json").exists() for p in expired)


def test_a_file_of_a_batch_that_never_committed_is_deleted_by_the_next_export(lab):
    """FAKE crash leftover: a file under the table's prefix that no committed batch recorded (what a worker
    killed between upload and commit leaves) is deleted before the next export writes."""
    write_config(lab, """
        - {table: parents, time_column: created_at, archive_after: 365d, export: true}""")
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM children")
    run(lab, "archive", day(365 + 10))
    committed = sorted(lab.store.rglob("*.jsonl.zst"))
    orphan = committed[0].with_name("20240101T000000Z-deadbeef0000.jsonl.zst")
    orphan.write_bytes(b"rows of a batch that rolled back")
    run(lab, "archive", day(365 + 20))
    assert not orphan.exists()
    assert set(committed) <= set(lab.store.rglob("*.jsonl.zst"))
    assert count(lab.dsn, "SELECT count(*) FROM archive.parents") == 20  # export: true keeps the archive table
    assert count(lab.dsn, "SELECT sum(rows) FROM archive.dbops_exports") == 20


def test_store_unreachable_moves_nothing(lab):
    """The export is written before the batch commits: a store that cannot be written fails the batch, and
    every row stays in the table (and none reaches the archive table)."""
    lab.store.parent.mkdir(parents=True, exist_ok=True)
    lab.store.write_text("a file where the store directory should be")
    write_config(lab, """
        - {table: parents, time_column: created_at, archive_after: 365d, export: true}""")
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM children")
    before = fingerprint(lab.dsn)
    with pytest.raises(AirflowException, match="archive of parents"):
        run(lab, "archive", day(365 + 100))
    assert fingerprint(lab.dsn) == before
    assert count(lab.dsn, "SELECT count(*) FROM parents") == DAYS
    assert [r["status"] for r in ops_rows(lab.name)] == ["failed"]
