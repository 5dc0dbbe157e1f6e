"""Ops-database migrations on the real PostgreSQL: fresh, re-run, tampered, failing, missing."""

from __future__ import annotations

import shutil

import psycopg
import pytest

from dbops.migrations import MIGRATIONS_DIR, MigrationError, apply_migrations, discover, pending
from scripts import devstack


@pytest.fixture
def ops_db(scratch_db):
    with psycopg.connect(devstack.libpq_conninfo(scratch_db())) as conn:
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
