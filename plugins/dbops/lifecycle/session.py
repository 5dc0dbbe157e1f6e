"""The target session of every lifecycle task (archive moves, retention purges, anonymization).

* ``TimeZone = UTC``: a ``timestamp without time zone`` column is compared with the run's cutoff (an
  instant) as UTC, whatever time zone the database or the role is set to. One rule for every capability
  (partitions do the same): naive timestamps are UTC.
* ``row_security = off``: where row-level security would hide rows from the role, a statement fails
  instead of silently skipping them (a move would otherwise end ``done`` with the hidden rows left
  behind). :func:`row_security_problems` names such tables, and what the role needs, before anything
  changes.
"""

from __future__ import annotations

from collections.abc import Iterable

import psycopg
from psycopg import sql

_SETTINGS = "SELECT set_config('TimeZone', 'UTC', false), set_config('row_security', 'off', false)"

# The tables (schemas, names: two arrays) whose row-level security applies to the current role (not a superuser,
# no BYPASSRLS, not the owner, or the owner with FORCE ROW LEVEL SECURITY), with their policies.
_HIDING = """
SELECT n.nspname, c.relname, c.relforcerowsecurity, pg_has_role(c.relowner, 'USAGE'), current_user,
       array(SELECT p.polname::text FROM pg_policy p WHERE p.polrelid = c.oid ORDER BY p.polname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
  AND c.relrowsecurity AND row_security_active(c.oid)
ORDER BY n.nspname, c.relname"""


def prepare(conn: psycopg.Connection) -> None:
    """Put the session in UTC with ``row_security`` off (committed at once on a connection in a transaction)."""
    conn.execute(_SETTINGS)
    if not conn.autocommit:
        conn.commit()


def row_security_problems(conn: psycopg.Connection, tables: Iterable[tuple[str, str]], work: str) -> list[str]:
    """One message per table of ``tables`` (schema, name) whose row-level security would hide rows from the
    connection's role: the table, its policies and what the role needs; ``work`` says what would miss them
    (e.g. ``the archive move``)."""
    tables = list(tables)
    problems = []
    for schema, name, forced, owner, role, policies in conn.execute(
            _HIDING, ([s for s, _ in tables], [n for _, n in tables])).fetchall():
        table, role_name = sql.Identifier(schema, name).as_string(conn), sql.Identifier(role).as_string(conn)
        shown = ", ".join(f'"{p}"' for p in policies) if policies else "none (every row hidden)"
        if owner:
            needs = (f"role {role!r} owns it but FORCE ROW LEVEL SECURITY applies the policies to the owner too: "
                     f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY, or ALTER ROLE "
                     f"{role_name} BYPASSRLS (as a superuser)")
        else:
            needs = (f"role {role!r} needs BYPASSRLS (ALTER ROLE {role_name} BYPASSRLS, as a superuser), or "
                     "connect as the table's owner" + (f" after ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY"
                                                       if forced else ""))
        problems.append(f"{schema}.{name} has row-level security{' (forced)' if forced else ''} with policies "
                        f"{shown}: they would hide rows from {work}, which would then miss them; {needs}")
    return problems
