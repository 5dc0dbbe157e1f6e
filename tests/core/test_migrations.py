"""Ops-database migrations on the real PostgreSQL: fresh, re-run, tampered, failing, missing."""

from __future__ import annotations

import shutil

import psycopg
import pytest

from dbops.core.migrations import MIGRATIONS_DIR, MigrationError, apply_migrations, discover, pending
from scripts.stack.postgres import libpq_conninfo


@pytest.fixture
def ops_db(scratch_db):
    with psycopg.connect(libpq_conninfo(scratch_db())) as conn:
        yield conn


@pytest.fixture
def migrations_dir(tmp_path):
    target = tmp_path / "ops"
    shutil.copytree(MIGRATIONS_DIR, target)
    return target


def recorded(conn):
    return conn.execute("SELECT version, checksum, applied_at, duration_ms FROM dbops.schema_migrations "
                        "ORDER BY version").fetchall()


def test_fresh_database_gets_every_migration_recorded(ops_db):
    applied = apply_migrations(ops_db)
    files = discover()
    assert [m.version for m in applied] == [m.version for m in files] and files
    rows = recorded(ops_db)
    assert [(r[0], r[1]) for r in rows] == [(m.version, m.checksum) for m in files]
    assert all(r[2] is not None and r[3] >= 0 for r in rows)
    assert ops_db.execute("SELECT to_regclass('dbops.preflight_results') IS NOT NULL").fetchone()[0]


def test_rerun_applies_nothing_and_changes_nothing(ops_db):
    apply_migrations(ops_db)
    before = recorded(ops_db)
    assert apply_migrations(ops_db) == []
    assert recorded(ops_db) == before
    assert pending(ops_db) == []


def test_new_file_is_applied_on_top(ops_db, migrations_dir):
    apply_migrations(ops_db, migrations_dir)
    (migrations_dir / "900_extra.sql").write_text("CREATE TABLE dbops.extra (id int);")
    assert [m.name for m in pending(ops_db, migrations_dir)] == ["extra"]
    assert [m.version for m in apply_migrations(ops_db, migrations_dir)] == [900]
    assert ops_db.execute("SELECT to_regclass('dbops.extra') IS NOT NULL").fetchone()[0]


def test_tampered_applied_file_is_a_clear_error(ops_db, migrations_dir):
    apply_migrations(ops_db, migrations_dir)
    first = sorted(migrations_dir.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited later\n")
    with pytest.raises(MigrationError, match=rf"{first.name}: changed after it was applied"):
        apply_migrations(ops_db, migrations_dir)


def test_failing_migration_rolls_back_and_names_the_file(ops_db, migrations_dir):
    apply_migrations(ops_db, migrations_dir)
    bad = migrations_dir / "901_broken.sql"
    bad.write_text("CREATE TABLE dbops.half_done (id int);\nSELECT * FROM no_such_table;")
    with pytest.raises(MigrationError, match="901_broken.sql: failed and was rolled back"):
        apply_migrations(ops_db, migrations_dir)
    assert ops_db.execute("SELECT to_regclass('dbops.half_done') IS NULL").fetchone()[0]
    assert 901 not in [r[0] for r in recorded(ops_db)]


def test_database_ahead_of_code_is_reported(ops_db, migrations_dir):
    (migrations_dir / "902_later.sql").write_text("SELECT 1;")
    apply_migrations(ops_db, migrations_dir)
    (migrations_dir / "902_later.sql").unlink()
    with pytest.raises(MigrationError, match="902_later.sql but .* has no such file"):
        pending(ops_db, migrations_dir)


def test_bad_file_names_and_duplicate_versions_are_rejected(migrations_dir):
    (migrations_dir / "7_oops.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="NNN_lowercase_name.sql"):
        discover(migrations_dir)
    (migrations_dir / "7_oops.sql").unlink()
    (migrations_dir / "001_again.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="version 1 is already used"):
        discover(migrations_dir)


def test_backup_provenance_is_filled_in_for_backups_catalogued_before(ops_db, migrations_dir, tmp_path):
    later = tmp_path / "later"
    later.mkdir()
    for path in migrations_dir.glob("*.sql"):
        if int(path.name[:3]) >= 5:
            path.rename(later / path.name)
    apply_migrations(ops_db, migrations_dir)
    ops_db.execute("""
        INSERT INTO dbops.backups (backup_id, target, kind, logical_date, run_id, location, bytes, tables, total_rows,
                                   manifest, created_at)
        VALUES ('a/full/1', 'a', 'full', '2026-11-10 02:00Z', 'backfill__2026-11-10T02:00:00+00:00', 'file:///x', 1, 1,
                1, '{"extra": {"created_at": "2026-11-30T12:10:00+00:00"},
                     "timings": {"dump_seconds": 540, "upload_seconds": 60}}', '2026-11-30 12:11Z'),
               ('a/full/2', 'a', 'full', '2026-11-11 02:00Z', 'by hand', 'file:///x', 1, 1, 1, '{}',
                '2026-11-11 02:30Z')""")
    for path in later.iterdir():
        path.rename(migrations_dir / path.name)
    apply_migrations(ops_db, migrations_dir)
    rows = ops_db.execute("SELECT backup_id, taken_at, covers, run_type, storage FROM dbops.backups "
                          "ORDER BY backup_id").fetchall()
    assert [(r[0], r[1].isoformat(), r[2].isoformat(), r[3], r[4]) for r in rows] == [
        ("a/full/1", "2026-11-30T12:00:00+00:00", "2026-11-10T02:00:00+00:00", "backfill", None),
        ("a/full/2", "2026-11-11T02:30:00+00:00", "2026-11-11T02:00:00+00:00", None, None)]
    indexes = ops_db.execute("SELECT indexdef FROM pg_indexes WHERE schemaname = 'dbops' "
                             "AND tablename = 'recovery_tests'").fetchall()
    assert any("(target, started_at DESC)" in row[0] for row in indexes)
