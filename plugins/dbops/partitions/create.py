"""New partitions: created as plain tables shaped like the parent, filled from DEFAULT, then attached.

A partition is created with ``CREATE TABLE … (LIKE parent …)``, given the parent's owner and grants and
the storage parameters of the newest partition (partitioned parents cannot hold storage parameters: the
newest partition is the template), and marked with a comment. Rows of its range that sit in DEFAULT are
moved by :mod:`dbops.partitions.default_moves` in short batches; then, in one transaction, the parent is
locked as ATTACH locks it and DEFAULT in ACCESS EXCLUSIVE mode (no new row can land there any more), the rows
that reached DEFAULT since the last batch are moved, a CHECK constraint matching the bounds is added (so
ATTACH PARTITION skips its validation scan of the new table), the table is attached (the parent's
partitioned indexes are attached or built by PostgreSQL) and the CHECK and the comment are dropped.

Visibility: from the first batch until that transaction commits, the rows already moved are in a table that
is not attached, so queries through the parent do not see them (seconds for a small DEFAULT; about the time
the batches take). On *any* failure after the first batch (a lock not granted, the attach refused, an error,
an interrupt) the moved rows are put back into DEFAULT and the empty table is dropped (:func:`undo_move`).
When even that cannot be done (the connection was lost, the process killed), the marked table stays and the
next run finishes the move, or moves the rows back, before anything else (``apply.recover_moves``). Every
statement runs under the session's lock_timeout and statement_timeout (:func:`dbops.partitions.tree.session`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from dbops.partitions.default_moves import move_back, move_batches, move_rest
from dbops.partitions.tree import MARKER, TableInspection, count_rows, literal
from dbops.partitions.locks import StepSkipped, with_lock_retries
from dbops.partitions.plan import Step
from dbops.partitions.policy import PartitionsPolicy

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
    resumed: int = 0  # rows an earlier run had moved into the table before it stopped


class MoveFailed(Exception):
    """A move out of DEFAULT or its attach failed; the message says what became of the rows moved so far."""

    step = "create"


def marker(found: TableInspection, step: Step) -> str:
    return f"{MARKER}{found.schema}.{found.name} [{step.lower}, {step.upper})"


def _text(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


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
    """Create, fill from DEFAULT and attach the partition of ``step`` on an autocommit connection; a marked
    table an earlier run left is resumed.

    :raises StepSkipped: a table of that name that dbops did not start is in the way, or a lock was not
        granted after the retries (the moved rows were put back, see the message).
    :raises MoveFailed: anything else failed after the table was created (the message says where the rows are).
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
    resumed = count_rows(conn, step.schema, step.name) if state == "ours" else 0
    if state == "absent":
        with_lock_retries(f"{step.label}: create", policy, lambda: _create_table(conn, found, step, table))
    try:
        moved, batches = move_batches(conn, found, step, table, policy)
        with_lock_retries(f"{step.label}: check the bounds", policy, lambda: _bounds_check(conn, found, step, table))
        last = with_lock_retries(f"{step.label}: attach", policy, lambda: _attach(conn, found, step, table))
    except BaseException as err:  # any failure: the rows moved so far go back where the parent sees them
        undone = undo_move(conn, found, step, policy)
        if isinstance(err, StepSkipped):
            raise StepSkipped(f"{err}; {undone}") from err
        if isinstance(err, Exception):
            raise MoveFailed(f"{step.label}: {_text(err)}; {undone}") from err
        raise
    return Created(moved + last, batches + 1, time.monotonic() - started, resumed=resumed)


def undo_move(conn: psycopg.Connection, found: TableInspection, step: Step, policy: PartitionsPolicy) -> str:
    """After a failed move or attach: put the rows of the step's unattached table back into DEFAULT and drop the
    table; never raises, says what became of the rows."""
    name = f"{step.schema}.{step.name}"
    stays = (f"they stay in the unattached table {name}, NOT visible through the parent, until the next run "
             "finishes the move or moves them back (first thing)")
    if conn.closed or conn.broken:
        return (f"the connection was lost: the rows moved out of DEFAULT so far are in the unattached table {name}, "
                "NOT visible through the parent, until they are moved back on a new connection (right after this "
                "step) or by the next run (first thing)")
    try:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
        conn.autocommit = True
        back, dropped = put_back(conn, found, step, policy)
    except Exception as err:
        return f"the rows moved out of DEFAULT could not be put back ({_text(err)}): {stays}"
    return (f"{back} rows moved back into DEFAULT (visible through the parent again); "
            + ("the empty table was dropped" if dropped else f"the empty table {name} stays (the next run resumes it)"))


def put_back(conn: psycopg.Connection, found: TableInspection, step: Step, policy: PartitionsPolicy
             ) -> tuple[int, bool]:
    """Move every row of the step's marked, unattached table back into DEFAULT (in batches), then drop the table
    if it is still empty and still ours; return (rows moved back, dropped). Autocommit connection.

    :raises StepSkipped: a lock was not granted after the retries.
    :raises MoveFailed: there is no DEFAULT partition to put rows back into.
    """
    table = sql.Identifier(step.schema, step.name)
    if found.default is None and count_rows(conn, step.schema, step.name):
        raise MoveFailed(f"{step.label}: {found.schema}.{found.name} has no DEFAULT partition to put the rows of "
                         f"{step.schema}.{step.name} back into")
    back = move_back(conn, found, step, table, policy)

    def drop() -> bool:
        with conn.transaction():
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
            if _state(conn, found, step) != "ours" or count_rows(conn, step.schema, step.name):
                return False  # attached meanwhile, no longer marked, or written to: not ours to drop
            conn.execute(sql.SQL("DROP TABLE {}").format(table))
            return True

    try:
        dropped = with_lock_retries(f"{step.label}: drop the emptied table", policy, drop)
    except StepSkipped:
        dropped = False  # empty and marked: the next run resumes or drops it
    return back, dropped


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


CHECK_NAME = "dbops_partition_bounds"  # on the new table from its last batch until it is attached


def _bounds_check(conn: psycopg.Connection, found: TableInspection, step: Step, table: sql.Identifier) -> None:
    """Add the CHECK of the new range to the unattached table in a transaction of its own: its validating scan
    holds no lock the application waits for, and the ATTACH then skips that scan (rows moved later are checked
    as they are inserted). A CHECK an earlier try added stays."""
    with conn.transaction():
        if conn.execute("SELECT 1 FROM pg_constraint WHERE conrelid = %s::regclass AND conname = %s",
                        (table.as_string(conn), CHECK_NAME)).fetchone() is None:
            conn.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})").format(
                table, sql.Identifier(CHECK_NAME), bound_check(found, step)))


def _attach(conn: psycopg.Connection, found: TableInspection, step: Step, table: sql.Identifier) -> int:
    """One transaction: lock the parent (as ATTACH does) and DEFAULT (ACCESS EXCLUSIVE, which ATTACH takes
    anyway: from here on no row can land in DEFAULT), move what reached DEFAULT since the last batch, attach
    (the CHECK spares its scan of the new table), drop the CHECK. Return the rows moved."""
    lower, upper = step.bounds
    parent = sql.Identifier(found.schema, found.name)
    rows = 0
    with conn.transaction():
        if found.default is not None:
            conn.execute(sql.SQL("LOCK TABLE ONLY {} IN SHARE UPDATE EXCLUSIVE MODE").format(parent))
            conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(found.default.schema, found.default.name)))
            rows = move_rest(conn, found, step, table)
        conn.execute(sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
            parent, table, literal(lower, found.key_type), literal(upper, found.key_type)))
        conn.execute(sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, sql.Identifier(CHECK_NAME)))
        conn.execute(sql.SQL("COMMENT ON TABLE {} IS NULL").format(table))
    return rows
