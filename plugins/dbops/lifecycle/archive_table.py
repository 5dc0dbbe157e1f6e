"""The archive table of a policy: ``archive.<table>`` in the target's own database.

Created on first use with the source's columns, types and primary key (no defaults, identities or
foreign keys: it only receives rows). A column added to the source later is added to the archive; a
column whose type changed, or a NOT NULL archive column dropped from the source, fails before any row
moves.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from dbops.lifecycle.catalog import TableInfo, describe, dropped_message, dropped_required, type_changes
from dbops.lifecycle.policy import ARCHIVE_SCHEMA


class ArchiveDrift(Exception):
    """The archive table cannot take the source's rows as they are (a column changed its type, or a NOT NULL
    archive column is no longer in the source)."""


def ensure_archive_table(conn: psycopg.Connection, source: TableInfo, lock_timeout: float) -> list[str]:
    """Create or extend ``archive.<table>`` to match ``source``; return what was done, for the log."""
    done = []
    archive = sql.Identifier(ARCHIVE_SCHEMA, source.name)
    with conn.transaction():
        conn.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout * 1000)}ms",))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(ARCHIVE_SCHEMA)))
        existing = describe(conn, ARCHIVE_SCHEMA, source.name)
        if existing is None:
            conn.execute(sql.SQL("CREATE TABLE {} (LIKE {})").format(
                archive, sql.Identifier(source.schema, source.name)))
            conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                archive, sql.SQL(", ").join(map(sql.Identifier, source.primary_key))))
            return [f"created {ARCHIVE_SCHEMA}.{source.name}"]
        changed = type_changes(source, existing)
        if changed:
            column, kind = changed[0]
            raise ArchiveDrift(f"column {column!r} is {kind} in {source.schema}.{source.name} but "
                               f"{existing.columns[column]} in {ARCHIVE_SCHEMA}.{source.name}; nothing moved. ALTER "
                               "the archive column to the new type by hand (or rename the archive table), then re-run")
        dropped = dropped_required(source, existing)
        if dropped:
            raise ArchiveDrift(f"{source.schema}.{source.name}: {dropped_message(source, dropped[0])}; nothing moved")
        for column, kind in source.columns.items():
            if column not in existing.columns:
                conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    archive, sql.Identifier(column), sql.SQL(kind)))  # kind: format_type() of the source column
                done.append(f"added column {column} {kind} to {ARCHIVE_SCHEMA}.{source.name}")
    return done
