"""Read a partitioned table as the catalogs describe it: key, owner, partitions and their bounds.

The tree comes from ``pg_inherits`` (direct partitions, with ``inhdetachpending``) and
``pg_partition_tree`` (bytes of sub-partitioned partitions); bounds from ``pg_get_expr(relpartbound)``
read in a session fixed to UTC and ISO dates — never from partition names. Rows in the DEFAULT partition
are counted per interval (they decide what has to be moved out before a partition can be added).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from dbops.partitions.policy import TablePolicy, split_name

KEY_TYPES = ("date", "timestamp without time zone", "timestamp with time zone")
TRUNC_UNITS = {"daily": "day", "weekly": "week", "monthly": "month", "yearly": "year"}
_BOUND = re.compile(r"^FOR VALUES FROM \((.+)\) TO \((.+)\)$")
APPLICATION_NAME = "dbops partitions"


class TableSetupError(Exception):
    """The configured table is not what dbops can manage (not RANGE-partitioned on one date/timestamp column)."""


@dataclass(frozen=True)
class Partition:
    """One direct partition. ``lower`` / ``upper`` are UTC; None is MINVALUE / MAXVALUE (or a DEFAULT)."""

    schema: str
    name: str
    lower: datetime | None
    upper: datetime | None
    is_default: bool = False
    detach_pending: bool = False
    rows: int | None = None  # estimate (reltuples) unless counted exactly
    rows_exact: bool = False
    bytes: int = 0
    last_vacuum: datetime | None = None
    last_analyze: datetime | None = None

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class TableInspection:
    """What the catalogs say about one configured table."""

    table: str  # the config key
    schema: str
    name: str
    key: str
    key_type: str
    owner: str
    partitions: list[Partition] = field(default_factory=list)  # without the DEFAULT, ordered by lower bound
    default: Partition | None = None
    default_buckets: dict[datetime | None, int] = field(default_factory=dict)  # interval start -> rows in DEFAULT
    reloptions: list[str] = field(default_factory=list)  # of the newest partition: the template for new ones
    columns: list[str] = field(default_factory=list)  # stored columns, in order (generated ones left out)

    @property
    def default_rows(self) -> int:
        return sum(self.default_buckets.values())


def session(conn: psycopg.Connection, lock_timeout: float, statement_timeout: float) -> None:
    """Settings of every partitions connection: bounded waits, UTC and ISO dates (bounds parse the same)."""
    conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false), "
                 "set_config('application_name', %s, false), set_config('TimeZone', 'UTC', false), "
                 "set_config('DateStyle', 'ISO, YMD', false)",
                 (f"{int(lock_timeout * 1000)}ms", f"{int(statement_timeout * 1000)}ms", APPLICATION_NAME))
    conn.commit()


_PARENT = """
SELECT c.oid, c.relkind, pg_get_userbyid(c.relowner), p.partstrat, p.partnatts, p.partattrs[0] AS keynum,
       a.attname, format_type(a.atttypid, NULL), p.partdefid
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_partitioned_table p ON p.partrelid = c.oid
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0]
WHERE n.nspname = %s AND c.relname = %s
"""
_CHILDREN = """
SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid), i.inhdetachpending, c.oid = %(default)s,
       c.reltuples::bigint, (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0) FROM pg_partition_tree(c.oid) t),
       greatest(pg_stat_get_last_vacuum_time(c.oid), pg_stat_get_last_autovacuum_time(c.oid)),
       greatest(pg_stat_get_last_analyze_time(c.oid), pg_stat_get_last_autoanalyze_time(c.oid)), c.reloptions
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE i.inhparent = %(parent)s
"""
_COLUMNS = """
SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
ORDER BY attnum
"""


def inspect_table(conn: psycopg.Connection, table: str, policy: TablePolicy, where: str,
                  exact_counts: bool = False) -> TableInspection:
    """Inspect the configured ``table`` (``schema.table`` or ``table``).

    :param where: how errors name the configuration, e.g. ``/path/dbops.yaml: target 'appdb': partitions.tables.x``.
    :raises TableSetupError: missing, not RANGE-partitioned, or not on one date/timestamp column.
    """
    schema, name = split_name(table)
    row = conn.execute(_PARENT, (schema, name)).fetchone()
    if row is None:
        raise TableSetupError(f"{where}: table {schema}.{name} does not exist in the target database")
    oid, relkind, owner, strategy, nkeys, keynum, key, key_type, default_oid = row
    if relkind != "p" or strategy != "r":
        raise TableSetupError(f"{where}: table {schema}.{name} must be RANGE-partitioned "
                              f"({'not partitioned' if relkind != 'p' else 'its strategy is not RANGE'})")
    if nkeys != 1 or not keynum:
        raise TableSetupError(f"{where}: key: table {schema}.{name} must be partitioned on one column, not "
                              f"{'an expression' if nkeys == 1 else f'{nkeys} columns'}")
    if key_type not in KEY_TYPES:
        raise TableSetupError(f"{where}: key: table {schema}.{name} is partitioned on {key} ({key_type}); "
                              "it must be a date, timestamp or timestamptz column")
    found = TableInspection(table, schema, name, key, key_type, owner,
                            columns=[r[0] for r in conn.execute(_COLUMNS, (oid,)).fetchall()])
    children = conn.execute(_CHILDREN, {"parent": oid, "default": default_oid or 0}).fetchall()
    options_of: dict[str, list[str]] = {}
    for nsp, rel, bound, pending, is_default, tuples, size, vacuumed, analyzed, options in children:
        lower, upper = (None, None) if is_default else parse_bound(bound)
        rows = None if tuples < 0 else int(tuples)
        if exact_counts or is_default:
            rows = count_rows(conn, nsp, rel)
        part = Partition(nsp, rel, lower, upper, is_default, pending, rows, exact_counts or is_default, int(size),
                         vacuumed, analyzed)
        if is_default:
            found.default = part
        else:
            found.partitions.append(part)
            options_of[part.qualified] = list(options or [])
    found.partitions.sort(key=lambda p: (p.lower is not None, p.lower or datetime.min.replace(tzinfo=timezone.utc)))
    if found.partitions:  # the newest partition is the template of storage parameters for new ones
        found.reloptions = options_of[found.partitions[-1].qualified]
    if found.default is not None and found.default.rows:
        found.default_buckets = default_buckets(conn, found, policy.interval)
    conn.commit()
    return found


def count_rows(conn: psycopg.Connection, schema: str, name: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name))).fetchone()[0]


def utc_key(key: str, key_type: str) -> sql.Composable:
    """The partition key as a UTC ``timestamp`` expression (date_trunc then works on UTC intervals)."""
    column = sql.Identifier(key)
    if key_type == "timestamp with time zone":
        return sql.SQL("({} AT TIME ZONE 'UTC')").format(column)
    return sql.SQL("{}::timestamp").format(column)


def default_buckets(conn: psycopg.Connection, found: TableInspection, interval: str) -> dict[datetime | None, int]:
    """Rows of the DEFAULT partition per interval start (None: NULL keys, which belong to no range)."""
    rows = conn.execute(sql.SQL("SELECT date_trunc({unit}, {key}) AS b, count(*) FROM {default} GROUP BY b").format(
        unit=sql.Literal(TRUNC_UNITS[interval]), key=utc_key(found.key, found.key_type),
        default=sql.Identifier(found.default.schema, found.default.name))).fetchall()
    return {(b.replace(tzinfo=timezone.utc) if b else None): n for b, n in rows}


def parse_bound(expr: str) -> tuple[datetime | None, datetime | None]:
    """``FOR VALUES FROM ('2026-01-01 00:00:00+00') TO (MAXVALUE)`` -> UTC datetimes (None: MIN/MAXVALUE)."""
    match = _BOUND.match(expr)
    if not match:
        raise TableSetupError(f"unexpected partition bound {expr!r}")
    return _value(match.group(1)), _value(match.group(2))


def _value(text: str) -> datetime | None:
    if not text.startswith("'") or text.strip("'") in ("infinity", "-infinity"):
        return None  # MINVALUE / MAXVALUE / +-infinity: open ended
    value = datetime.fromisoformat(text.strip("'"))
    return value.astimezone(timezone.utc) if value.tzinfo else value.replace(tzinfo=timezone.utc)


def literal(value: datetime, key_type: str) -> sql.Composable:
    """A bound as a SQL literal of the key's type (the session is in UTC)."""
    if key_type == "date":
        return sql.Literal(value.date().isoformat())
    if key_type == "timestamp without time zone":
        return sql.Literal(value.replace(tzinfo=None).isoformat(sep=" "))
    return sql.Literal(value.isoformat(sep=" "))


def as_dict(part: Partition) -> dict[str, Any]:
    """A partition for the report and the ops database."""
    return {"partition": part.qualified, "default": part.is_default, "detach_pending": part.detach_pending,
            "lower": part.lower.isoformat() if part.lower else None,
            "upper": part.upper.isoformat() if part.upper else None, "rows": part.rows, "rows_exact": part.rows_exact,
            "bytes": part.bytes, "last_vacuum": part.last_vacuum.isoformat() if part.last_vacuum else None,
            "last_analyze": part.last_analyze.isoformat() if part.last_analyze else None}
