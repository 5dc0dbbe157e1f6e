"""Read a partitioned table as the catalogs describe it: key, owner, partitions and their bounds.

The tree comes from ``pg_inherits`` (direct partitions, with ``inhdetachpending``) and
``pg_partition_tree`` (bytes of sub-partitioned partitions); bounds from ``pg_get_expr(relpartbound)``
read in a session fixed to UTC and ISO dates — never from partition names. Rows in the DEFAULT partition
are counted per interval (they decide what has to be moved out before a partition can be added).

Every partitions session runs with ``row_security = off``: a row-level security policy that would hide rows
from a statement makes PostgreSQL raise an error instead, so no move or count ever works on a filtered view.
The inspection checks the DEFAULT partition first and names the table, its policies and what the role needs
(:func:`rls_problem`). It also lists what lies around the tree: tables dbops marked while moving rows out of
DEFAULT and never attached (a move left half done, :func:`half_done_moves`), and tables named like the
table's partitions that are not attached to anything (:func:`unattached_lookalikes`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg
from psycopg import sql

from dbops.partitions.policy import TablePolicy, split_name

MARKER = "dbops partitions: being created for "  # the comment of a table being filled from DEFAULT
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
    subpartitioned: bool = False  # itself a partitioned table (its rows are in its own partitions)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class HalfDone:
    """A table dbops created for ``[lower, upper)`` and was filling from DEFAULT when its run stopped: not
    attached, so its ``rows`` are not visible through the parent."""

    schema: str
    name: str
    lower: datetime
    upper: datetime
    rows: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Lookalike:
    """A table named like the partitions of a managed table, attached to nothing (detached by hand, say)."""

    schema: str
    name: str
    rows: int | None  # estimate; None: never analyzed
    bytes: int
    partitioned: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    def describe(self, parent: str) -> str:
        rows = "rows unknown" if self.rows is None else f"~{self.rows} rows"
        return (f"{self.qualified} is named like a partition of {parent} but is not attached ({rows}, "
                f"{self.bytes} bytes{', partitioned' if self.partitioned else ''}); its rows are not visible "
                "through the parent. dbops never drops it: attach it again, or drop it yourself once it is not "
                "needed")


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
    half_done: list[HalfDone] = field(default_factory=list)  # moves out of DEFAULT an earlier run left unfinished
    lookalikes: list[Lookalike] = field(default_factory=list)  # named like its partitions, not attached

    @property
    def default_rows(self) -> int:
        return sum(self.default_buckets.values())


def session(conn: psycopg.Connection, lock_timeout: float, statement_timeout: float) -> None:
    """Settings of every partitions connection: bounded waits, UTC and ISO dates (bounds parse the same), and
    ``row_security = off``: a statement row-level security would filter fails instead of missing rows."""
    conn.execute("SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false), "
                 "set_config('application_name', %s, false), set_config('TimeZone', 'UTC', false), "
                 "set_config('DateStyle', 'ISO, YMD', false), set_config('row_security', 'off', false)",
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
       greatest(pg_stat_get_last_analyze_time(c.oid), pg_stat_get_last_autoanalyze_time(c.oid)), c.reloptions,
       c.relkind = 'p', row_security_active(c.oid)
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
    for nsp, rel, _, _, is_default, *_, hidden in children:
        if is_default and hidden:  # before any count: with row_security off the count would fail, unexplained
            raise TableSetupError(f"{where}: {rls_problem(conn, nsp, rel)}; no row is moved out of DEFAULT "
                                  "until it can see them all")
    options_of: dict[str, list[str]] = {}
    for nsp, rel, bound, pending, is_default, tuples, size, vacuumed, analyzed, options, partitioned, hidden \
            in children:
        lower, upper = (None, None) if is_default else parse_bound(bound)
        rows = None if tuples < 0 else int(tuples)
        exact = is_default or (exact_counts and not hidden)  # a partition RLS hides rows of keeps its estimate
        if exact:
            rows = count_rows(conn, nsp, rel)
        part = Partition(nsp, rel, lower, upper, is_default, pending, rows, exact, int(size), vacuumed, analyzed,
                         partitioned)
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
    found.half_done = half_done_moves(conn, found)
    found.lookalikes = unattached_lookalikes(conn, found, policy.interval, oid)
    conn.commit()
    return found


_POLICIES = """
SELECT policyname, permissive, cmd, array_to_string(roles, ', '), qual, with_check
FROM pg_policies WHERE schemaname = %s AND tablename = %s ORDER BY policyname
"""
_RLS_ROLE = """
SELECT current_user, quote_ident(current_user), format('%%I.%%I', n.nspname, c.relname),
       pg_has_role(current_user, c.relowner, 'USAGE'), pg_get_userbyid(c.relowner), c.relforcerowsecurity
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s
"""


def rls_problem(conn: psycopg.Connection, schema: str, name: str) -> str:
    """Why row-level security hides rows of ``schema.name`` from this session's role, naming its policies, and
    what the role needs (for a table ``row_security_active`` is true for)."""
    role, quoted_role, table, owns, owner, forced = conn.execute(_RLS_ROLE, (schema, name)).fetchone()
    policies = [f"{'' if permissive == 'PERMISSIVE' else 'restrictive '}policy {pol!r} (FOR {cmd} TO {roles}"
                + (f" USING ({qual})" if qual else "") + (f" WITH CHECK ({check})" if check else "") + ")"
                for pol, permissive, cmd, roles, qual, check in conn.execute(_POLICIES, (schema, name)).fetchall()]
    shown = "; ".join(policies) if policies else "no policy, so every row is hidden"
    why = (f"the table forces row level security, so even its owner {owner} is subject to it" if owns
           else f"the role is not the table's owner ({owner})")
    needs = f"the role needs BYPASSRLS (as a superuser: ALTER ROLE {quoted_role} BYPASSRLS)"
    if owns:
        needs += f", or ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY (its owner then bypasses the policies)"
    elif not forced:
        needs += f", or to be the table's owner {owner} (the table does not force row level security)"
    return (f"row-level security on {schema}.{name} hides rows from role {role} ({why}): {shown}. dbops reads "
            f"and moves rows with row_security off and must see every row: {needs}")


_MARKED = """
SELECT n.nspname, c.relname, d.description
FROM pg_description d JOIN pg_class c ON c.oid = d.objoid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE d.classoid = 'pg_class'::regclass AND d.objsubid = 0 AND c.relkind = 'r' AND NOT c.relispartition
  AND starts_with(d.description, %s)
ORDER BY 1, 2
"""


def marker_prefix(schema: str, name: str) -> str:
    """Start of the comment of every table dbops is filling from the DEFAULT of ``schema.name``."""
    return f"{MARKER}{schema}.{name} ["


def half_done_moves(conn: psycopg.Connection, found: TableInspection) -> list[HalfDone]:
    """Tables dbops marked as being created for this parent and never attached, with the rows they hold (moved
    out of DEFAULT, invisible through the parent until attached or moved back)."""
    prefix = marker_prefix(found.schema, found.name)
    moves = []
    for nsp, rel, comment in conn.execute(_MARKED, (prefix,)).fetchall():
        try:
            lower, upper = comment[len(prefix):].removesuffix(")").split(", ")
            bounds = datetime.fromisoformat(lower), datetime.fromisoformat(upper)
        except ValueError:
            continue  # not a marker dbops wrote
        moves.append(HalfDone(nsp, rel, *bounds, count_rows(conn, nsp, rel)))
    return moves


_CANDIDATES = """
SELECT n.nspname, c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid), c.relkind = 'p',
       coalesce(starts_with(obj_description(c.oid, 'pg_class'), {marker}), false)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = ANY({schemas}) AND c.relkind IN ('r', 'p') AND NOT c.relispartition AND c.oid <> {parent}
  AND ({names})
ORDER BY 1, 2
"""


def naming_patterns(found: TableInspection, interval: str) -> list[tuple[str, re.Pattern[str]]]:
    """How this table's partitions are named, as (literal prefix, pattern): dbops's own names for the interval
    (``events_2026_04``: ``events_[0-9]{4}_[0-9]{2}``), and the names of the attached partitions with each run
    of digits after the parent's name generalized (``ev_202510``: ``ev_[0-9]{6}``)."""
    from dbops.partitions.plan import partition_name  # plan imports this module

    def pattern(name: str) -> tuple[str, re.Pattern[str]]:
        keep = len(found.name) if name.startswith(found.name) else 0  # a parent named with digits stays literal
        pieces = re.split(r"([0-9]+)", name[keep:])
        prefix = name[:keep] + pieces[0]
        rest = "".join(f"[0-9]{{{len(piece)}}}" if i % 2 else re.escape(piece) for i, piece in enumerate(pieces))
        return prefix, re.compile(re.escape(name[:keep]) + rest)

    sample = datetime(2000, 1, 1, tzinfo=timezone.utc)
    names = {partition_name(found.name, sample, interval)} | {p.name for p in found.partitions}
    return [pattern(n) for n in sorted(names) if re.search(r"[0-9]", n[len(found.name):] if n.startswith(found.name)
                                                            else n)]


def _successor(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (names compare by code point, in "C")."""
    last = ord(prefix[-1]) + 1
    if last > 0x10FFFF:
        return None
    return prefix[:-1] + chr(0xE000 if 0xD800 <= last <= 0xDFFF else last)


def unattached_lookalikes(conn: psycopg.Connection, found: TableInspection, interval: str,
                          parent_oid: int) -> list[Lookalike]:
    """Tables in the schemas of the parent and its partitions, named like its partitions, that are not a partition
    of anything (a partition detached by hand, for one): listed for the plan and the report, never touched.
    Tables dbops is filling (:func:`half_done_moves`) are left out. The names are looked up by their literal
    prefixes in pg_class's name index (a scan of all of pg_class per table was most of the inspection's time)."""
    patterns = naming_patterns(found, interval)
    if not patterns:
        return []
    ranges = []
    for prefix in sorted({prefix for prefix, _ in patterns}):
        above = _successor(prefix) if prefix else None
        ranges.append(sql.SQL("true") if not prefix else
                      sql.SQL("(c.relname >= {}::name{})").format(sql.Literal(prefix), sql.SQL("") if above is None
                                                                 else sql.SQL(" AND c.relname < {}::name").format(
                                                                     sql.Literal(above))))
    query = sql.SQL(_CANDIDATES).format(
        marker=sql.Literal(marker_prefix(found.schema, found.name)), parent=sql.Literal(parent_oid),
        schemas=sql.Literal(sorted({found.schema} | {p.schema for p in found.partitions})),
        names=sql.SQL(" OR ").join(ranges))
    return [Lookalike(nsp, rel, None if tuples < 0 else int(tuples), int(size), partitioned)
            for nsp, rel, tuples, size, partitioned, marked in conn.execute(query).fetchall()
            if not marked and any(p.fullmatch(rel) for _, p in patterns)]


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
