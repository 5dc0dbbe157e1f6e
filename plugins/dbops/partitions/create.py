"""New partitions: created as plain tables shaped like the parent, filled from DEFAULT, then attached.

A partition is created with ``CREATE TABLE … (LIKE parent …)``, given the parent's owner and grants and
the storage parameters of the newest partition (partitioned parents cannot hold storage parameters: the
newest partition is the template), and marked with a comment. Rows of its range that sit in DEFAULT are
moved by :mod:`dbops.partitions.default_moves`; then, in one short transaction, a CHECK constraint matching
the bounds is added (so ATTACH PARTITION skips its validation scan), the table is attached (the parent's
partitioned indexes are attached or built by PostgreSQL) and the CHECK and the comment are dropped. When
the attach's lock is not granted after the retries, the moved rows go back into DEFAULT before the step
is reported skipped. A run killed half-way leaves the marked table, which the next run resumes. Every statement runs under the
session's lock_timeout and statement_timeout (:func:`dbops.partitions.tree.session`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbops.partitions.default_moves import move_back, move_batches
from dbops.partitions.tree import TableInspection, literal
from dbops.partitions.locks import StepSkipped, with_lock_retries
from dbops.partitions.plan import Step
from dbops.partitions.policy import PartitionsPolicy

MARKER = "dbops partitions: being created for "
_RELOPTION = re.compile(r"^([a-z_][a-z0-9_.]*)=(.*)$")
_PRIVILEGES = {"SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "MAINTAIN"}
_GRANTS = """
SELECT a.privilege_type, a.is_grantable, CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END
FROM pg_class c, aclexplode(c.relacl) a
WHERE c.oid = %s::regclass AND a.grantee <> c.relowner
"""


@dataclass
class Created:
    rows_moved: int = 0
    batches: int = 0
    seconds: float = 0.0
    existed: bool = False


def marker(found: TableInspection, step: Step) -> str:
    return f"{MARKER}{found.schema}.{found.name} [{step.lower}, {step.upper})"


def _state(conn: psycopg.Connection, found: TableInspection, step: Step) -> str:
    """``attached`` (already a partition of the parent), ``ours`` (a marked table to resume), ``absent``,
    or ``foreign`` (a table of that name that is not ours)."""
    row = conn.execute(
        "SELECT c.relispartition, (SELECT inhparent FROM pg_inherits WHERE inhrelid = c.oid) = "
        "(SELECT p.oid FROM pg_class p JOIN pg_namespace pn ON pn.oid = p.relnamespace WHERE pn.nspname = %s "
        "AND p.relname = %s), obj_description(c.oid, 'pg_class') "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (found.schema, found.name, step.schema, step.name)).fetchone()
    if row is None:
        return "absent"
    is_partition, of_parent, comment = row
    if is_partition and of_parent:
        return "attached"
    return "ours" if comment == marker(found, step) and not is_partition else "foreign"


def create_partition(conn: psycopg.Connection, found: TableInspection, step: Step,
                     policy: PartitionsPolicy) -> Created:
    """Create, fill from DEFAULT and attach the partition of ``step`` on an autocommit connection.

    :raises StepSkipped: a table of that name that dbops did not start is in the way, or a lock was not
        granted after the retries (the marked table stays and the next run resumes it).
    """
    started = time.monotonic()
    conn.autocommit = True
    table = sql.Identifier(step.schema, step.name)
    state = _state(conn, found, step)
    if state == "attached":
        return Created(existed=True)
    if state == "foreign":
        raise StepSkipped(f"{step.label}: a table {step.schema}.{step.name} exists and is not a partition dbops "
                          "started; rename or drop it, or attach it yourself")
    if state == "absent":
        with_lock_retries(f"{step.label}: create", policy, lambda: _create_table(conn, found, step, table))
    moved, batches = move_batches(conn, found, step, table, policy)
    try:
        last = with_lock_retries(f"{step.label}: attach", policy, lambda: _attach(conn, found, step, table))
    except StepSkipped as err:
        raise StepSkipped(f"{err}; {_undo_move(conn, found, step, table, policy)}") from err
    return Created(moved + last, batches + 1, time.monotonic() - started)


def _undo_move(conn: psycopg.Connection, found: TableInspection, step: Step, table: sql.Identifier,
               policy: PartitionsPolicy) -> str:
    """The attach was skipped: put the moved rows back into DEFAULT, where the parent sees them; say what was done."""
    try:
        back = move_back(conn, found, step, table, policy)
    except StepSkipped as err:
        return (f"the rows moved out of DEFAULT could not be moved back ({err}): they stay in the unattached "
                f"table {step.schema}.{step.name}, invisible through the parent until the next run attaches it")
    return f"{back} rows moved back into DEFAULT (visible through the parent); the empty table stays for the next run"


def _create_table(conn: psycopg.Connection, found: TableInspection, step: Step, table: sql.Identifier) -> None:
    parent = sql.Identifier(found.schema, found.name)
    with conn.transaction():
        conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED "
                             "INCLUDING STORAGE INCLUDING COMPRESSION)").format(table, parent))
        options = [_RELOPTION.match(o) for o in found.reloptions]
        if any(options):
            conn.execute(sql.SQL("ALTER TABLE {} SET ({})").format(table, sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.SQL(m.group(1)), sql.Literal(m.group(2))) for m in options if m)))
        conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(table, sql.Identifier(found.owner)))
        for privilege, grantable, grantee in conn.execute(_GRANTS, (parent.as_string(conn),)).fetchall():
            if privilege not in _PRIVILEGES:
                continue
            conn.execute(sql.SQL("GRANT {} ON {} TO {}{}").format(
                sql.SQL(privilege), table, sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(table, sql.Literal(marker(found, step))))


def bound_check(found: TableInspection, step: Step) -> sql.Composed:
    """``key IS NOT NULL AND key >= lower AND key < upper``: the partition constraint of the new range."""
    lower, upper = step.bounds
    key = sql.Identifier(found.key)
    return sql.SQL("{k} IS NOT NULL AND {k} >= {lo} AND {k} < {hi}").format(
        k=key, lo=literal(lower, found.key_type), hi=literal(upper, found.key_type))


CHECK_NAME = sql.Identifier("dbops_partition_bounds")  # lives only inside the attaching transaction


def _attach(conn: psycopg.Connection, found: TableInspection, step: Step, table: sql.Identifier) -> int:
    """Move what is left in DEFAULT, add the CHECK, attach, drop the CHECK: one transaction."""
    from dbops.partitions.default_moves import move_rest

    lower, upper = step.bounds
    parent = sql.Identifier(found.schema, found.name)
    with conn.transaction():
        rows = move_rest(conn, found, step, table)
        conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
            table, CHECK_NAME, bound_check(found, step)))
        conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            parent, table, literal(lower, found.key_type), literal(upper, found.key_type)))
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, CHECK_NAME))
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(table))
    return rows
