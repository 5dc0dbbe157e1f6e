"""Versioned SQL migrations of the ops database.

Files are ``include/sql/ops/NNN_name.sql``, applied in ascending NNN, each in its own transaction
together with its record (version, name, sha256 checksum, applied_at, duration). Re-running applies
only what is new. A file changed after it was applied, a file missing for a recorded version, or two
files with one version number is a :class:`MigrationError`: history is never rewritten silently.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from dbops.core.config import PROJECT_ROOT

MIGRATIONS_DIR = PROJECT_ROOT / "include" / "sql" / "ops"
_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# Serializes concurrent migrators (two schedulers starting at once); any constant will do.
_ADVISORY_LOCK_KEY = 0x6462_6F70  # "dbop"

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS dbops;
CREATE TABLE IF NOT EXISTS dbops.schema_migrations (
    version     integer PRIMARY KEY,
    name        text        NOT NULL,
    checksum    text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    duration_ms integer     NOT NULL
)
"""


class MigrationError(Exception):
    """The migration files and the database's record disagree."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path
    checksum: str


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files in ``directory``, in version order."""
    found: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path}: migration files must be named NNN_lowercase_name.sql")
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"{path}: version {version} is already used by {found[version].path.name}")
        checksum = hashlib.sha256(path.read_bytes()).hexdigest()
        found[version] = Migration(version, match.group(2), path, checksum)
    return [found[v] for v in sorted(found)]


def _recorded(conn: psycopg.Connection) -> dict[int, tuple[str, str]]:
    exists = conn.execute("SELECT to_regclass('dbops.schema_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return {}
    rows = conn.execute("SELECT version, name, checksum FROM dbops.schema_migrations").fetchall()
    return {version: (name, checksum) for version, name, checksum in rows}


def pending(conn: psycopg.Connection, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Migrations not yet applied; raises :class:`MigrationError` if the history does not match."""
    migrations = discover(directory)
    recorded = _recorded(conn)
    by_version = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(recorded.items()):
        migration = by_version.get(version)
        if migration is None:
            raise MigrationError(
                f"ops database records migration {version:03d}_{name}.sql but {directory} has no such file: "
                "the code is older than the database"
            )
        if migration.checksum != checksum:
            raise MigrationError(
                f"{migration.path}: changed after it was applied (recorded sha256 {checksum[:12]}…, file "
                f"{migration.checksum[:12]}…). Never edit an applied migration: restore it and add a new file."
            )
    return [m for m in migrations if m.version not in recorded]


def apply_migrations(conn: psycopg.Connection, directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Apply every pending migration, each in its own transaction with its record. Return those applied."""
    conn.autocommit = True
    conn.execute("SELECT pg_advisory_lock(%s)", (_ADVISORY_LOCK_KEY,))
    try:
        conn.execute(_BOOTSTRAP)
        todo = pending(conn, directory)
        for migration in todo:
            _apply_one(conn, migration)
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_ADVISORY_LOCK_KEY,))
    return todo


def _apply_one(conn: psycopg.Connection, migration: Migration) -> None:
    started = time.monotonic()
    try:
        with conn.transaction():
            conn.execute(migration.path.read_text())
            conn.execute(
                "INSERT INTO dbops.schema_migrations (version, name, checksum, duration_ms) VALUES (%s, %s, %s, %s)",
                (migration.version, migration.name, migration.checksum, round((time.monotonic() - started) * 1000)),
            )
    except psycopg.Error as err:
        raise MigrationError(f"{migration.path}: failed and was rolled back: {err}") from err
