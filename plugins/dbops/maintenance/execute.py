"""Execution of one planned maintenance action on a target, with bounded locks.

Every statement runs with ``lock_timeout`` from the policy and a ``statement_timeout`` fit to the
object's size; identifiers go through :class:`psycopg.sql.Identifier`, values as parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbops.maintenance.plan import (
    ANALYZE,
    DROP_LEFTOVER,
    DUPLICATES_ADVICE,
    REINDEX,
    VACUUM_ANALYZE,
    VACUUM_FULL,
    Action,
)
from dbops.core.units import human_bytes
from dbops.maintenance.policy import MaintenancePolicy
from dbops.maintenance.scan import duplicate_keys, set_timeouts

LOCK_NOT_AVAILABLE = "55P03"
QUERY_CANCELED = "57014"
UNIQUE_VIOLATION = "23505"


@dataclass
class Outcome:
    """What one executed action did. ``status``: done or skipped (``reason`` says why)."""

    status: str
    bytes_before: int | None = None
    bytes_after: int | None = None
    seconds: float = 0.0
    reason: str = ""


def _relation(conn: psycopg.Connection, schema: str, name: str) -> int | None:
    row = conn.execute("SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s", (schema, name)).fetchone()
    return None if row is None else int(row[0])


def _size(conn: psycopg.Connection, oid: int, object_kind: str) -> int:
    function = "pg_total_relation_size" if object_kind == "table" else "pg_relation_size"
    return int(conn.execute(sql.SQL("SELECT {}(%s::oid)").format(sql.Identifier(function)), (oid,)).fetchone()[0])


def _qualified(action: Action) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(action.schema_name), sql.Identifier(action.name))


STATEMENTS = {
    VACUUM_FULL: "VACUUM (FULL, ANALYZE) {}",  # the ANALYZE runs after the exclusive lock is released
    VACUUM_ANALYZE: "VACUUM (ANALYZE) {}",
    ANALYZE: "ANALYZE {}",
    REINDEX: "REINDEX INDEX CONCURRENTLY {}",
    DROP_LEFTOVER: "DROP INDEX CONCURRENTLY IF EXISTS {}",
}


def execute_action(conn: psycopg.Connection, action: Action, policy: MaintenancePolicy) -> Outcome:
    """Run one planned action on an autocommit connection; measure the object before and after.

    Raises :class:`psycopg.Error` as the server reported it (the caller classifies); a failed REINDEX
    CONCURRENTLY has its invalid ``_ccnew`` / ``_ccold`` leftovers dropped before the error propagates.
    """
    conn.autocommit = True
    set_timeouts(conn, policy.lock_timeout, action.statement_timeout)
    try:  # a worker killed mid-statement (execution_timeout) must not leave VACUUM FULL running and locking
        conn.execute("SET client_connection_check_interval = '5s'")
    except psycopg.Error:
        pass  # not supported on the server's platform: statement_timeout still bounds the statement
    oid = _relation(conn, action.schema_name, action.name)
    if oid is None:
        return Outcome("skipped", reason=f"{action.schema_name}.{action.name} no longer exists")
    if action.action == DROP_LEFTOVER and _is_valid_index(conn, oid):
        return Outcome("skipped", reason="the index is valid now (its REINDEX finished): left alone")
    before = _size(conn, oid, action.object_kind)
    started = time.monotonic()
    statement = sql.SQL(STATEMENTS[action.action]).format(_qualified(action))
    if action.action == REINDEX:
        table_oid = _index_table(conn, oid)
        drop_reindex_leftovers(conn, table_oid, action.name, policy)
        try:
            conn.execute(statement)
        except psycopg.Error:
            if not conn.closed and not conn.broken:
                drop_reindex_leftovers(conn, table_oid, action.name, policy)
            raise
    else:
        conn.execute(statement)
    seconds = time.monotonic() - started
    # REINDEX CONCURRENTLY swaps in a new index under the same name: measure by name, not by the old OID.
    now = None if action.action == DROP_LEFTOVER else _relation(conn, action.schema_name, action.name)
    after = 0 if now is None else _size(conn, now, action.object_kind)
    return Outcome("done", before, after, seconds)


def _is_valid_index(conn: psycopg.Connection, oid: int) -> bool:
    row = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = %s", (oid,)).fetchone()
    return bool(row and row[0])


def _index_table(conn: psycopg.Connection, oid: int) -> int:
    return int(conn.execute("SELECT indrelid FROM pg_index WHERE indexrelid = %s", (oid,)).fetchone()[0])


def drop_reindex_leftovers(conn: psycopg.Connection, table_oid: int, index_name: str,
                           policy: MaintenancePolicy, attempts: int = 3) -> list[str]:
    """Drop the invalid ``<index>_ccnew[N]`` / ``<index>_ccold[N]`` an interrupted REINDEX CONCURRENTLY left.

    Each DROP INDEX CONCURRENTLY waits at most lock_timeout; tried ``attempts`` times. Returns the names
    dropped; raises :class:`LeftoverError` if one is still there.
    """
    rows = conn.execute(
        "SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.indrelid = %s AND NOT i.indisvalid AND c.relname ~ '_cc(new|old)[0-9]*$' "
        "AND starts_with(%s, regexp_replace(c.relname, '_cc(new|old)[0-9]*$', ''))",
        (table_oid, index_name)).fetchall()
    dropped = []
    for schema, name in rows:
        statement = sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(sql.Identifier(schema),
                                                                              sql.Identifier(name))
        for attempt in range(attempts):
            try:
                set_timeouts(conn, policy.lock_timeout, max(MIN_DROP_TIMEOUT, policy.lock_timeout * 2))
                conn.execute(statement)
                dropped.append(name)
                break
            except psycopg.Error as err:
                if err.sqlstate != LOCK_NOT_AVAILABLE or attempt == attempts - 1:
                    raise LeftoverError(f"the invalid index {schema}.{name} left by an interrupted REINDEX "
                                        f"CONCURRENTLY could not be dropped ({err.sqlstate}: "
                                        f"{' '.join(str(err).split())}); the next attempt drops it") from err
                time.sleep(policy.lock_timeout)
    return dropped


MIN_DROP_TIMEOUT = 60.0


class LeftoverError(Exception):
    """An invalid index of an interrupted REINDEX CONCURRENTLY is still there (transient: retried)."""

    transient = True


def duplicates_found(conn: psycopg.Connection, action: Action) -> str:
    """The duplicated keys that made REINDEX of a unique index fail (see :func:`duplicate_keys`)."""
    try:
        oid = _relation(conn, action.schema_name, action.name)
        found = duplicate_keys(conn, oid) if oid is not None else None
    except psycopg.Error:
        found = None
    return f"the table has {found}" if found else "rows of the table share a key the unique index forbids"


def lock_holders(conn: psycopg.Connection, schema: str, name: str) -> str:
    """Who holds a lock on the object now (for the skip reason), or an explanation when nobody does."""
    try:  # no query text: it may hold personal data or secrets; pid, user and application identify the session
        rows = conn.execute(
            "SELECT a.pid, a.state, round(extract(epoch FROM now() - a.xact_start)), "
            "format('user %%I, application %%L', a.usename, a.application_name) "
            "FROM pg_stat_activity a WHERE a.pid <> pg_backend_pid() AND a.pid IN ("
            "SELECT l.pid FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE l.granted AND n.nspname = %s "
            "AND (c.relname = %s OR c.oid = (SELECT i.indrelid FROM pg_index i JOIN pg_class x "
            "ON x.oid = i.indexrelid WHERE x.relnamespace = n.oid AND x.relname = %s))) ORDER BY a.xact_start",
            (schema, name, name)).fetchall()
    except psycopg.Error:
        return "lock holders unknown (the target did not answer)"
    if not rows:
        return "no session holds a lock on it now (it waited for older transactions to finish)"
    return "; ".join(f"pid {pid} ({who}, {state}, in transaction {secs} s)" for pid, state, secs, who in rows[:3])


def failure_reason(conn: psycopg.Connection | None, err: psycopg.Error, action: Action,
                   policy: MaintenancePolicy) -> str | None:
    """Why the action failed and what to do, for the errors maintenance knows (a lock not granted, duplicate
    keys under a unique index, the statement timeout); None for any other error."""
    message = " ".join(str(err).split())
    if err.sqlstate == LOCK_NOT_AVAILABLE:
        holders = lock_holders(conn, action.schema_name, action.name) if conn and not conn.broken else ""
        return f"lock not granted within lock_timeout {policy.lock_timeout:g} s ({message}); held by: {holders}"
    if err.sqlstate == UNIQUE_VIOLATION and action.action == REINDEX and conn is not None:
        return f"{message}; {duplicates_found(conn, action)}: {DUPLICATES_ADVICE}"
    if err.sqlstate == QUERY_CANCELED:
        return (f"statement_timeout {action.statement_timeout:.0f} s (fit to {human_bytes(action.bytes)}) was "
                f"reached: {message}. Lower maintenance.rewrite_rate or raise statement_timeout")
    return None
