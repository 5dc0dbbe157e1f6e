"""What a policy's table looks like in the target: columns, primary key, indexes and foreign keys.

:func:`check_policies` is the run-time half of the policy validation (see :mod:`dbops.lifecycle.policy`);
:func:`fk_order` puts children before their parents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from dbops.lifecycle.policy import ARCHIVE_SCHEMA, LifecyclePolicy, policy_error
from dbops.lifecycle.session import row_security_problems


class PolicyProblem(Exception):
    """A policy does not fit its table; the message names file, target, key and table."""


@dataclass(frozen=True)
class Reference:
    """A foreign key of ``schema.table (columns)`` pointing at ``ref_columns`` of the inspected table."""

    schema: str
    table: str
    columns: tuple[str, ...]
    ref_columns: tuple[str, ...]
    on_delete: str = "a"  # pg_constraint.confdeltype: a no action, r restrict, c cascade, n set null, d set default

    @property
    def changes_rows(self) -> bool:
        """Deleting a referenced row would change or delete the referencing rows (instead of failing)."""
        return self.on_delete in ("c", "n", "d")


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    kind: str  # pg_class.relkind
    columns: dict[str, str]  # name -> format_type, in column order
    primary_key: tuple[str, ...]
    leading_index_columns: frozenset[str]  # first column of each valid index
    references: tuple[Reference, ...]  # foreign keys of other rows pointing at this table
    parents: frozenset[tuple[str, str]]  # tables this table's foreign keys point at
    oid: int
    not_null: frozenset[str]  # NOT NULL columns without a default: an INSERT must give them a value


_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull AND NOT a.atthasdef
FROM pg_attribute a WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""
_PRIMARY_KEY = """
SELECT array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o)
FROM pg_index i WHERE i.indrelid = %s AND i.indisprimary"""
_LEADING = """
SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = %s AND i.indisvalid"""
_FOREIGN_KEYS = """
SELECT n.nspname, c.relname,
       array(SELECT a.attname FROM unnest(f.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = f.conrelid AND a.attnum = k.n ORDER BY k.o),
       array(SELECT a.attname FROM unnest(f.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = f.confrelid AND a.attnum = k.n ORDER BY k.o),
       pn.nspname, p.relname, f.confdeltype
FROM pg_constraint f
JOIN pg_class c ON c.oid = f.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class p ON p.oid = f.confrelid JOIN pg_namespace pn ON pn.oid = p.relnamespace
WHERE f.contype = 'f' AND f.conparentid = 0 AND (f.confrelid = %(oid)s OR f.conrelid = %(oid)s)"""


def describe(conn: psycopg.Connection, schema: str, table: str) -> TableInfo | None:
    """The table ``schema.table`` (ordinary or partitioned), or None when there is none."""
    row = conn.execute("SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'p')",
                       (schema, table)).fetchone()
    if row is None:
        return None
    oid, kind = row
    rows = conn.execute(_COLUMNS, (oid,)).fetchall()
    columns = {name: kind for name, kind, _ in rows}
    pk = conn.execute(_PRIMARY_KEY, (oid,)).fetchone()
    leading = frozenset(r[0] for r in conn.execute(_LEADING, (oid,)).fetchall())
    references, parents = [], set()
    for ref_schema, ref_table, cols, ref_cols, parent_schema, parent_table, on_delete in conn.execute(
            _FOREIGN_KEYS, {"oid": oid}).fetchall():
        if (parent_schema, parent_table) == (schema, table):
            references.append(Reference(ref_schema, ref_table, tuple(cols), tuple(ref_cols), str(on_delete)))
        if (ref_schema, ref_table) == (schema, table):
            parents.add((parent_schema, parent_table))
    return TableInfo(schema, table, kind, columns, tuple(pk[0]) if pk else (), leading, tuple(references),
                     frozenset(parents), oid, frozenset(name for name, _, required in rows if required))


def check_policies(conn: psycopg.Connection, path: Path, target: str, policies: list[LifecyclePolicy],
                   job: str = "archive") -> tuple[dict[str, TableInfo], list[str]]:
    """Each policy's table as it is now, and warnings; raises :class:`PolicyProblem` listing every problem.

    ``job``: ``archive`` (rows deleted from the table, inserted into the archive) or ``retention`` (rows
    deleted from both): which triggers would fire."""
    infos, problems, warnings = {}, [], []
    for i, policy in enumerate(policies):
        def problem(key: str, message: str, i=i, policy=policy) -> None:
            problems.append(policy_error(path, target, i, policy, key, message))

        info = describe(conn, policy.schema_name, policy.table_name)
        if info is None:
            problem("table", f"no such table in {target} (schema {policy.schema_name!r})")
            continue
        if info.kind == "p":
            problem("table", "is partitioned: drop whole old partitions with the partitions DAG instead")
            continue
        if not info.primary_key:
            problem("table", "has no primary key: batches are chosen and archived by primary key")
        if policy.time_column not in info.columns:
            problem("time_column", f"no column {policy.time_column!r} (columns: {', '.join(info.columns)})")
        elif policy.time_column not in info.leading_index_columns:
            warnings.append(policy_error(path, target, i, policy, "time_column",
                                         f"column {policy.time_column!r} leads no index: each batch scans the "
                                         f"table; CREATE INDEX CONCURRENTLY ON it ({policy.time_column})"))
        for j, term in enumerate(policy.filter):
            if term.column not in info.columns:
                problem(f"filter[{j}].column", f"no column {term.column!r} (columns: {', '.join(info.columns)})")
        archive = describe(conn, ARCHIVE_SCHEMA, policy.table_name) if policy.archive_after else None
        if archive is not None and policy.archive_storage == "database":
            for column, kind in type_changes(info, archive):
                problem("table", f"column {column!r} is {kind} in the table but "
                                 f"{archive.columns[column]} in {ARCHIVE_SCHEMA}.{policy.table_name}: a type change "
                                 "is not applied to the archive; ALTER the archive column's type by hand, then re-run")
            for column in dropped_required(info, archive):
                problem("table", dropped_message(info, column))
        work = "the archive move" if job == "archive" else "the retention purge"
        read = [(t.schema, t.name) for t in (info, archive) if t] + [(r.schema, r.table) for r in info.references]
        for message in row_security_problems(conn, read, work):
            problem("table", message)
        if policy.triggers != "fire":
            firing = _firing(conn, info, archive if policy.archive_storage == "database" else None, job)
            if firing:
                problem("triggers", f"{'; '.join(firing)} would fire for every row of {work}. Set `triggers: fire` "
                                    "in the policy to accept that; or disable them yourself for the run (ALTER "
                                    "TABLE … DISABLE TRIGGER, which needs ownership of the table and stops them "
                                    "for the application too; dbops never disables them), then re-run")
        infos[policy.table] = info
    if problems:
        raise PolicyProblem("; ".join(problems))
    return infos, warnings


_TRIGGERS = """
SELECT format('%%s trigger %%I on %%I.%%I (%%s)', %(event)s::text, t.tgname, n.nspname, c.relname, t.tgfoid::regproc)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE t.tgrelid = %(oid)s AND NOT t.tgisinternal AND t.tgenabled IN ('O', 'A') AND t.tgtype & %(bit)s <> 0
ORDER BY t.tgname"""
_EVENT_BITS = {"INSERT": 4, "DELETE": 8}  # pg_trigger.tgtype


def triggers(conn: psycopg.Connection, table: TableInfo, event: str) -> list[str]:
    """The user triggers (enabled, not internal: foreign keys are not listed) that ``event`` fires on ``table``."""
    return [r[0] for r in conn.execute(_TRIGGERS, {"event": event, "oid": table.oid,
                                                   "bit": _EVENT_BITS[event]}).fetchall()]


def _firing(conn: psycopg.Connection, source: TableInfo, archive: TableInfo | None, job: str) -> list[str]:
    """The triggers ``job`` fires: DELETE on the table; INSERT (archive) or DELETE (retention) on the archive."""
    fired = triggers(conn, source, "DELETE")
    if archive is not None:
        fired += triggers(conn, archive, "INSERT" if job == "archive" else "DELETE")
    return fired


def dropped_required(source: TableInfo, archive: TableInfo) -> list[str]:
    """Columns NOT NULL (without a default) in the archive that the table no longer has: an archive move
    would insert NULL into them."""
    return [c for c in archive.columns if c in archive.not_null and c not in source.columns]


def dropped_message(source: TableInfo, column: str) -> str:
    """What to do about ``column``, NOT NULL in the archive but dropped from the table ``source``."""
    fix = sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(
        sql.Identifier(ARCHIVE_SCHEMA, source.name), sql.Identifier(column)).as_string()
    return (f"column {column!r} is NOT NULL in {ARCHIVE_SCHEMA}.{source.name} but the table no longer has it "
            f"(dropped?): the rows moved from now on would have no value for it. Let it be NULL in the archive "
            f"({fix}; the rows already archived keep their values), then re-run")


def type_changes(source: TableInfo, archive: TableInfo) -> list[tuple[str, str]]:
    """(column, source type) of the columns whose type differs between the table and its archive."""
    return [(c, kind) for c, kind in source.columns.items() if c in archive.columns and archive.columns[c] != kind]


def fk_order(policies: list[LifecyclePolicy], infos: dict[str, TableInfo]) -> list[LifecyclePolicy]:
    """``policies`` with every table before the tables it references (children before parents); otherwise
    in config order. Tables in a cycle keep their config order."""
    remaining = list(policies)
    ordered: list[LifecyclePolicy] = []
    while remaining:
        names = {(infos[p.table].schema, infos[p.table].name): p for p in remaining if p.table in infos}
        ready = next((p for p in remaining if p.table not in infos or not any(
            (r.schema, r.table) in names and names[(r.schema, r.table)] is not p
            for r in infos[p.table].references)), remaining[0])
        ordered.append(ready)
        remaining.remove(ready)
    return ordered
