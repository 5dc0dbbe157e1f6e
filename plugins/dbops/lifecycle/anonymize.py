"""Anonymize users in a target: every row that identifies them, in the base and the archive tables, in
one transaction per request (or per batch of inactive users), with ``lock_timeout`` and ``statement_timeout``.

Each configured column gets its rule: ``null``, a ``constant``, ``hash`` (HMAC-SHA256 of the value with
the salt, hex) or a placeholder derived from the user's key (``deleted-<hmac>``, or
``deleted-<hmac>@anonymized.invalid``). Hashes are computed here, in Python: the salt never reaches
the database server, its logs or its statistics. The users table's placeholder is the marker of an
anonymized user: the same on every run, so a second request finds it and changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from airflow.sdk.exceptions import AirflowFailException
from psycopg import sql
from psycopg.types.json import Jsonb

from dbops.lifecycle.anonymize_policy import MARKER_RULES, AnonymizePolicy, Rule
from dbops.lifecycle.session import row_security_problems

MIN_SALT_LENGTH = 16
PLACEHOLDER_HEX = 16  # 64 bits of the HMAC in a placeholder: unique among billions of users


class UnknownUser(AirflowFailException):
    """No row of the users table (base or archive) has this key."""


def load_salt(conn_id: str) -> bytes:
    """The hashing salt: the password of Airflow connection ``conn_id`` (at least 16 characters)."""
    from airflow.sdk import BaseHook

    salt = BaseHook.get_connection(conn_id).password or ""
    if len(salt) < MIN_SALT_LENGTH:
        raise AirflowFailException(f"connection {conn_id!r}: the password is the anonymization salt and must have "
                                   f"at least {MIN_SALT_LENGTH} characters (e.g. `openssl rand -base64 32`); "
                                   "never change it once used, or hashes no longer match across runs")
    return salt.encode()


class Anonymizer:
    """The anonymized value of each rule, keyed with the salt."""

    def __init__(self, salt: bytes) -> None:
        self._salt = salt

    def __repr__(self) -> str:  # never the salt
        return "Anonymizer(salt=***)"

    def _hmac(self, kind: str, value: str) -> str:
        return hmac.new(self._salt, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()

    def marker(self, user_key: str) -> str:
        return f"deleted-{self._hmac('user', user_key)[:PLACEHOLDER_HEX]}"

    def value(self, rule: Rule, user_key: str, original: str | None) -> Any:
        """The new value of a column under ``rule`` (``original`` as text; used by ``hash`` only)."""
        if rule.kind == "null":
            return None
        if rule.kind == "constant":
            return Jsonb(rule.value) if isinstance(rule.value, (dict, list)) else rule.value
        if rule.kind == "hash":
            return None if original is None else self._hmac("value", original)
        if rule.kind == "placeholder":
            return self.marker(user_key)
        return f"{self.marker(user_key)}@anonymized.invalid"  # placeholder_email


@dataclass(frozen=True)
class Relation:
    """One table holding user rows: the configured (base) table or its archive copy, with its columns."""

    table: str  # the key in anonymize.tables
    schema: str
    name: str
    columns: frozenset[str]

    @property
    def label(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)


@dataclass
class Outcome:
    """What one transaction did: users anonymized, users found already anonymized, rows per relation."""

    anonymized: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # archive tables without the user column


def _columns(conn: psycopg.Connection, schema: str, name: str) -> frozenset[str] | None:
    rows = conn.execute(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s "
        "AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped", (schema, name)).fetchall()
    return frozenset(r[0] for r in rows) if rows else None


def relations(conn: psycopg.Connection, policy: AnonymizePolicy) -> dict[str, list[Relation]]:
    """Each configured table's (and ``via`` table's) base relation and, when it exists, its archive copy.

    :raises AirflowFailException: a configured table or column is missing from the base table, or row-level
        security would hide rows of a table from the role (see :mod:`dbops.lifecycle.session`).
    """
    found: dict[str, list[Relation]] = {}
    for table, settings in policy.tables.items():
        base = _columns(conn, policy.schema, table)
        if base is None:
            raise AirflowFailException(f"anonymize.tables.{table}: table {policy.schema}.{table} does not exist; "
                                       "fix the anonymize section of dbops.yaml")
        wanted = {settings.user_column, *settings.columns}
        missing = sorted(wanted - base)
        if missing:
            raise AirflowFailException(f"anonymize.tables.{table}: {policy.schema}.{table} has no column "
                                       f"{', '.join(missing)}; fix the anonymize section of dbops.yaml")
        found[table] = [Relation(table, policy.schema, table, base)]
        archive = _columns(conn, policy.archive_schema, table)
        if archive is not None:
            found[table].append(Relation(table, policy.archive_schema, table, archive))
    for table, settings in policy.tables.items():
        via = settings.via
        if via is None or via.table in found:
            continue
        base = _columns(conn, policy.schema, via.table)
        if base is None or not {via.key, via.user_column} <= base:
            raise AirflowFailException(f"anonymize.tables.{table}.via: {policy.schema}.{via.table} does not exist "
                                       f"or lacks {via.key} or {via.user_column}; fix the anonymize section of "
                                       "dbops.yaml")
        found[via.table] = [Relation(via.table, policy.schema, via.table, base)]
        archive = _columns(conn, policy.archive_schema, via.table)
        if archive is not None:
            found[via.table].append(Relation(via.table, policy.archive_schema, via.table, archive))
    hidden = row_security_problems(conn, [(r.schema, r.name) for rs in found.values() for r in rs],
                                   "the anonymization")
    if hidden:
        raise AirflowFailException(f"{'; '.join(hidden)}; nothing was changed")
    return found


def _start(conn: psycopg.Connection, policy: AnonymizePolicy) -> None:
    conn.execute("SELECT set_config('lock_timeout', %s, true), set_config('statement_timeout', %s, true)",
                 (f"{round(policy.lock_timeout * 1000)}ms", f"{round(policy.statement_timeout * 1000)}ms"))


def find_user(conn: psycopg.Connection, policy: AnonymizePolicy, found: dict[str, list[Relation]],
              user_id: str) -> Any:
    """The user's key in its column's own type (uuid, integer, ...).

    :raises UnknownUser: no users row (base or archive) has this key.
    :raises AirflowFailException: ``user_id`` is not a value of the key column's type.
    """
    key = policy.users.key
    for relation in found[policy.users.table]:
        try:
            with conn.transaction():  # a savepoint: a bad value leaves the transaction usable for the message
                row = conn.execute(sql.SQL("SELECT {key} FROM {rel} WHERE {key} = %s").format(
                    key=sql.Identifier(key), rel=relation.ident), (user_id,)).fetchone()
        except (psycopg.errors.InvalidTextRepresentation, psycopg.errors.NumericValueOutOfRange) as err:
            raise AirflowFailException(f"user_id {user_id!r} is not a valid value of {relation.label}.{key}: "
                                       f"{err.diag.message_primary}") from None
        if row is not None:
            return row[0]
    raise UnknownUser(f"user_id {user_id!r}: no row of {policy.schema}.{policy.users.table} (nor of its archive) "
                      f"has {key} = {user_id!r}; nothing was changed")


def anonymize_users(conn: psycopg.Connection, policy: AnonymizePolicy, anonymizer: Anonymizer,
                    found: dict[str, list[Relation]], keys: Sequence[Any]) -> Outcome:
    """Anonymize the users ``keys`` (values of the users key) and every row naming them, in the caller's
    transaction. Users whose marker is already in place are left as they are.
    """
    _start(conn, policy)
    outcome = Outcome()
    pending = _not_yet_anonymized(conn, policy, anonymizer, found, keys, outcome)
    if not pending:
        return outcome
    users_first = sorted(policy.tables, key=lambda t: (t != policy.users.table, policy.tables[t].via is not None))
    for table in users_first:
        for relation in found[table]:
            count = _anonymize_relation(conn, policy, anonymizer, found, relation, pending, outcome)
            if count is not None:
                outcome.rows[relation.label] = outcome.rows.get(relation.label, 0) + count
    outcome.anonymized = [str(k) for k in pending]
    return outcome


def _not_yet_anonymized(conn: psycopg.Connection, policy: AnonymizePolicy, anonymizer: Anonymizer,
                        found: dict[str, list[Relation]], keys: Sequence[Any], outcome: Outcome) -> list[Any]:
    """Lock the users rows of ``keys`` and return the keys whose marker is not in place yet."""
    markers = [c for c, rule in policy.rules(policy.users.table).items() if rule.kind in MARKER_RULES]
    rules = policy.rules(policy.users.table)
    done: dict[Any, bool] = {}
    for relation in found[policy.users.table]:
        present = [c for c in markers if c in relation.columns]
        if policy.users.key not in relation.columns or not present:
            continue
        query = sql.SQL("SELECT {key}, {markers} FROM {rel} WHERE {key} = ANY(%s) FOR UPDATE").format(
            key=sql.Identifier(policy.users.key), rel=relation.ident,
            markers=sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in present))
        for key, *values in conn.execute(query, (list(keys),)):
            expected = [anonymizer.value(rules[c], str(key), None) for c in present]
            done[key] = done.get(key, True) and values == expected
    outcome.already = [str(k) for k, anonymized in done.items() if anonymized]
    return [k for k in keys if not done.get(k, False)]


def _anonymize_relation(conn: psycopg.Connection, policy: AnonymizePolicy, anonymizer: Anonymizer,
                        found: dict[str, list[Relation]], relation: Relation, keys: list[Any],
                        outcome: Outcome) -> int | None:
    """Lock and rewrite the rows of ``relation`` naming ``keys``; their number, or None when it cannot tell."""
    settings = policy.tables[relation.table]
    if settings.user_column not in relation.columns:
        outcome.skipped.append(f"{relation.label} has no column {settings.user_column}")
        return None
    rules = {c: r for c, r in policy.rules(relation.table).items() if c in relation.columns}
    if not rules:
        return 0
    read = [c for c, r in rules.items() if r.kind == "hash"]
    rows = conn.execute(_select_rows(policy, found, relation, read), (list(keys),)).fetchall()
    if not rows:
        return 0
    assignments = sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c)) for c in rules)
    update = sql.SQL("UPDATE {rel} SET {assignments} WHERE tableoid = %s::oid AND ctid = %s::tid").format(
        rel=relation.ident, assignments=assignments)
    params = []
    for tableoid, ctid, user_key, *originals in rows:
        values = dict(zip(read, originals))
        params.append([*(anonymizer.value(r, str(user_key), values.get(c)) for c, r in rules.items()),
                       tableoid, ctid])
    with conn.cursor() as cur:
        cur.executemany(update, params)
    return len(rows)


def _select_rows(policy: AnonymizePolicy, found: dict[str, list[Relation]], relation: Relation,
                 read: Iterable[str]) -> sql.Composed:
    """``SELECT tableoid, ctid, <user key>, <hashed columns> ... FOR UPDATE`` of the rows naming the users."""
    settings = policy.tables[relation.table]
    originals = sql.SQL("").join(sql.SQL(", t.{}::text").format(sql.Identifier(c)) for c in read)
    if settings.via is None:
        return sql.SQL("SELECT t.tableoid, t.ctid, t.{user}{originals} FROM {rel} t WHERE t.{user} = ANY(%s) "
                       "FOR UPDATE OF t").format(user=sql.Identifier(settings.user_column), originals=originals,
                                                 rel=relation.ident)
    via = settings.via
    sources = [sql.SQL("SELECT {key} AS k, {user} AS u FROM {rel}").format(
        key=sql.Identifier(via.key), user=sql.Identifier(via.user_column), rel=p.ident)
        for p in found[via.table] if {via.key, via.user_column} <= p.columns]
    return sql.SQL("SELECT t.tableoid, t.ctid, p.u{originals} FROM {rel} t JOIN ({parents}) p "
                   "ON t.{fk} = p.k WHERE p.u = ANY(%s) FOR UPDATE OF t").format(
        originals=originals, rel=relation.ident, parents=sql.SQL(" UNION ALL ").join(sources),
        fk=sql.Identifier(settings.user_column))


def inactive_users(conn: psycopg.Connection, policy: AnonymizePolicy, relation: Relation, cutoff: datetime,
                   after: Any, limit: int) -> list[Any]:
    """Keys of the users of ``relation`` last active before ``cutoff``, in key order after ``after``."""
    key, last = sql.Identifier(policy.users.key), sql.Identifier(policy.users.last_active_column)
    if after is None:
        query = sql.SQL("SELECT {key} FROM {rel} WHERE {last} < %s ORDER BY {key} LIMIT %s")
        params: tuple = (cutoff, limit)
    else:
        query = sql.SQL("SELECT {key} FROM {rel} WHERE {last} < %s AND {key} > %s ORDER BY {key} LIMIT %s")
        params = (cutoff, after, limit)
    return [r[0] for r in conn.execute(query.format(key=key, rel=relation.ident, last=last), params)]


FIXES = {
    "23502": "A column with rule null is NOT NULL: give it a constant or a placeholder in anonymize.tables.",
    "22001": "The new value does not fit the column (a hash is 64 characters): use another rule for it.",
    "23505": "A column with a unique constraint needs a rule that differs per user (hash or placeholder).",
    "42501": "Grant the connection's role SELECT and UPDATE on every configured table and its archive.",
}


def fix_for(error: BaseException) -> str:
    """What to change when a statement of the anonymization failed permanently ('' when unknown)."""
    return FIXES.get(getattr(error, "sqlstate", None) or "", "")
