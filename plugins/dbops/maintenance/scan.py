"""The scan of a target for maintenance: every table and index measured, read only, with bounded locks.

Sizes and statistics come from the named queries in include/sql/queries/ (``maintenance_*.sql``);
bloat of the likely candidates is measured with ``pgstattuple_approx`` when installed. Every
statement runs with ``lock_timeout`` from the policy; identifiers go through
:class:`psycopg.sql.Identifier`, values as parameters.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from dbops.core.config import QUERIES_DIR
from dbops.maintenance.plan import LEFTOVER_NAME, IndexStats, Scan, TableStats, is_candidate
from dbops.maintenance.policy import MaintenancePolicy

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


def query(name: str) -> str:
    """The text of include/sql/queries/<name>.sql."""
    return (QUERIES_DIR / f"{name}.sql").read_text()


APPLICATION_NAME = "dbops maintenance"


def set_timeouts(conn: psycopg.Connection, lock_timeout: float, statement_timeout: float) -> None:
    """Session settings of every maintenance connection (seen in pg_stat_activity as dbops maintenance)."""
    conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false), "
                 "set_config('application_name', %s, false)",
                 (f"{int(lock_timeout * 1000)}ms", f"{int(statement_timeout * 1000)}ms", APPLICATION_NAME))


def scan(conn: psycopg.Connection, policy: MaintenancePolicy, host: str | None = None) -> Scan:
    """Measure every table and index of the connected database (read only, bounded by lock_timeout).

    :param host: the connection's host; free disk is measured only when the server runs on this machine.
    """
    started = time.monotonic()
    set_timeouts(conn, policy.lock_timeout, max(60.0, policy.lock_timeout * 4))
    with conn.cursor(row_factory=dict_row) as cur:
        if cur.execute("SELECT pg_is_in_recovery() AS standby").fetchone()["standby"]:
            raise StandbyError("the target is a standby (in recovery): maintenance runs on the primary only")
        tables = [TableStats(**row) for row in cur.execute(query("maintenance_tables")).fetchall()]
        tables = measure_candidates(conn, tables, policy)
        indexes = [IndexStats(**row) for row in cur.execute(query("maintenance_indexes")).fetchall()]
        indexes = check_duplicate_keys(conn, indexes)
        blockers = [row["kind"] + ": " + row["detail"] for row in cur.execute(
            query("maintenance_blockers"),
            {"long_seconds": policy.long_transaction, "lag_seconds": policy.max_replication_lag}).fetchall()]
        duplicates = cur.execute(query("maintenance_duplicate_indexes")).fetchall()
        facts = cur.execute("SELECT now() AS now, (SELECT stats_reset FROM pg_stat_database "
                            "WHERE datname = current_database()) AS stats_reset").fetchone()
    conn.commit()
    free, total = _disk(conn, host)
    return Scan(tables=tables, indexes=indexes, scanned_at=facts["now"], blockers=blockers, free_bytes=free,
                disk_bytes=total, duplicate_indexes=[_plain(d) for d in duplicates],
                stats_reset=facts["stats_reset"], seconds=time.monotonic() - started)


MAX_EXACT = 50  # pgstattuple_approx reads the pages not all-visible: only this many candidates per scan


def measure_candidates(conn: psycopg.Connection, tables: list[TableStats],
                       policy: MaintenancePolicy) -> list[TableStats]:
    """Replace the estimate by ``pgstattuple_approx`` (free space + dead tuples beyond the fillfactor's
    reserve, TOAST taken as not bloated) for the candidates, when the extension is installed and allowed."""
    row = conn.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
                       "WHERE e.extname = 'pgstattuple'").fetchone()
    if row is None:
        return tables
    function = sql.SQL("SELECT table_len, approx_free_space, dead_tuple_len FROM {}.pgstattuple_approx(%s::oid)"
                       ).format(sql.Identifier(row[0]))
    candidates = sorted((t for t in tables if is_candidate(t, policy)), key=lambda t: -(t.bloat_bytes or 0))
    exact = {}
    for table in candidates[:MAX_EXACT]:
        try:
            with conn.transaction():  # a savepoint: one refused table does not end the scan
                length, free, dead = conn.execute(function, (table.oid,)).fetchone()
        except psycopg.Error:
            continue
        bloat = max(0, int(free + dead - length * (100 - table.fillfactor) / 100))
        exact[table.oid] = replace(table, heap_bytes=int(length),
                                   expected_bytes=int(length) + table.toast_bytes - bloat,
                                   bloat_source="pgstattuple_approx")
    return [exact.get(t.oid, t) for t in tables]


def check_duplicate_keys(conn: psycopg.Connection, indexes: list[IndexStats]) -> list[IndexStats]:
    """Fill ``duplicate_keys`` of the invalid unique indexes (REINDEX cannot rebuild them while rows share a
    key). A check the scan's statement_timeout cancels leaves the index as it was: REINDEX reports them then."""
    checked = []
    for index in indexes:
        if index.is_unique and not index.is_valid and not LEFTOVER_NAME.search(index.index_name):
            try:
                with conn.transaction():  # a savepoint: a cancelled check does not end the scan
                    index = replace(index, duplicate_keys=duplicate_keys(conn, index.oid))
            except psycopg.Error:
                pass
        checked.append(index)
    return checked


MAX_KEYS_SHOWN = 3  # key values may be personal data: the count and only the first few, cut short
KEY_CHARS = 40


def duplicate_keys(conn: psycopg.Connection, index_oid: int) -> str | None:
    """The keys of a unique index that rows of its table share, e.g. ``2 duplicated keys: (a@x.com) 3 rows,
    (b@y.com) 2 rows``, or None when there are none. One aggregate over the table (ONLY: the index does not
    cover inheritance children), honouring the index's predicate and NULLS [NOT] DISTINCT."""
    schema, table, nulls_not_distinct, predicate, columns = conn.execute(
        "SELECT n.nspname, t.relname, i.indnullsnotdistinct, pg_get_expr(i.indpred, i.indrelid), "
        "array(SELECT pg_get_indexdef(i.indexrelid, k, false) FROM generate_series(1, i.indnkeyatts) k ORDER BY k) "
        "FROM pg_index i JOIN pg_class t ON t.oid = i.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace "
        "WHERE i.indexrelid = %s", (index_oid,)).fetchone()
    # Key columns and the predicate as the server deparses them from its catalog (identifiers quoted).
    keys = [sql.SQL(column) for column in columns]
    conditions = [] if nulls_not_distinct else [sql.SQL("({}) IS NOT NULL").format(key) for key in keys]
    if predicate:
        conditions.append(sql.SQL("({})").format(sql.SQL(predicate)))
    rows = conn.execute(sql.SQL(
        "SELECT count(*) OVER (), key, n FROM (SELECT left(ROW({keys})::text, {chars}) AS key, count(*) AS n "
        "FROM ONLY {table} WHERE {where} GROUP BY {keys} HAVING count(*) > 1) d ORDER BY n DESC, key LIMIT {limit}"
    ).format(keys=sql.SQL(", ").join(keys), table=sql.Identifier(schema, table), chars=sql.Literal(KEY_CHARS),
             where=sql.SQL(" AND ").join(conditions) if conditions else sql.SQL("true"),
             limit=sql.Literal(MAX_KEYS_SHOWN))).fetchall()  # no parameters: a '%' in the predicate stays as is
    if not rows:
        return None
    shown = ", ".join(f"{key} {n} rows" for _, key, n in rows)
    return f"{rows[0][0]} duplicated key{'s' if rows[0][0] != 1 else ''}: {shown}" + (
        ", ..." if rows[0][0] > len(rows) else "")


class StandbyError(Exception):
    """The target is a standby: nothing to maintain there."""


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in row.items()}


def _disk(conn: psycopg.Connection, host: str | None) -> tuple[int | None, int | None]:
    """Free and total bytes of the data directory's volume, when the server is local and tells its path."""
    if host is None or not (host in LOCAL_HOSTS or host.startswith("/")):
        return None, None
    try:
        path = conn.execute("SHOW data_directory").fetchone()[0]
        conn.commit()
        usage = shutil.disk_usage(Path(path))
    except (psycopg.Error, OSError):
        conn.rollback()
        return None, None
    return usage.free, usage.total
