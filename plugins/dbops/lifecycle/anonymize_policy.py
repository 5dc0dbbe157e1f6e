"""The ``anonymize`` section of a target: where users live, which tables identify them, and how each
personal column is anonymized (``null``, a ``constant``, a salted ``hash`` or a ``placeholder``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dbops.core.schema import Cron, Invalid, Seconds

# Rule names a column may take; a mapping {constant: value} sets a fixed value instead.
RULES = ("null", "hash", "placeholder", "placeholder_email")
# Rules whose value is derived from the user's key: the same on every run, unique per user. The users
# table needs one: it is how an anonymized user is recognized (a second request is then a no-op).
MARKER_RULES = ("placeholder", "placeholder_email")


@dataclass(frozen=True)
class Rule:
    """How one column is anonymized: ``kind`` is one of :data:`RULES` or ``constant`` (with ``value``)."""

    kind: str
    value: Any = None


@dataclass(frozen=True)
class UsersTable:
    """The table with one row per user.

    :param table: its name (a key of ``tables``, which says how its columns are anonymized).
    :param key: the column identifying a user (the ``user_id`` Param is a value of it).
    :param last_active_column: when the user was last active (needed by ``anonymize_after``).
    """

    table: str
    key: str = "id"
    last_active_column: str | None = None


@dataclass(frozen=True)
class Via:
    """Rows that name their user through another table (payments -> orders -> user).

    :param table: the table whose rows name the user (its archive copy is searched too).
    :param key: its column that this table's ``user_column`` references.
    :param user_column: its column holding the user's key.
    """

    table: str
    key: str = "id"
    user_column: str = "user_id"


@dataclass(frozen=True)
class AnonymizedTable:
    """A table whose rows identify a user: the column naming the user and the rule of each personal column.

    ``user_column`` holds the user's key, or with ``via`` the key of the other table's row. ``columns`` maps
    a column to ``null``, ``hash``, ``placeholder``, ``placeholder_email`` or ``{constant: v}``.
    """

    user_column: str
    columns: dict[str, object]
    via: Via | None = None


@dataclass(frozen=True)
class AnonymizePolicy:
    """pg_anonymize__<target> (on demand) and pg_anonymize_inactive__<target> (``anonymize_after``)."""

    salt_conn_id: str
    users: UsersTable
    tables: dict[str, AnonymizedTable]
    anonymize_after: Seconds | None = None
    schedule: Cron | None = None
    schema: str = "public"
    archive_schema: str = "archive"  # rows moved by pg_archive__ are anonymized there too
    batch_size: int = 100  # users per transaction of the inactive-user policy
    lock_timeout: Seconds = 5.0
    statement_timeout: Seconds = 60.0
    notify: list[str] = field(default_factory=lambda: ["log"])

    def rules(self, table: str) -> dict[str, Rule]:
        """The parsed rule of each column of ``table``."""
        return {column: parse_rule(value, column) for column, value in self.tables[table].columns.items()}


def parse_rule(value: object, key: str) -> Rule:
    """A column's rule from its YAML value (``null`` may be written bare or quoted)."""
    if value is None or value in RULES:
        return Rule("null" if value is None else str(value))
    if isinstance(value, dict) and list(value) == ["constant"]:
        return Rule("constant", value["constant"])
    raise Invalid(key, f"unknown rule {value!r} (expected one of: {', '.join(RULES)}, or {{constant: <value>}})")


def check_anonymize(policy: AnonymizePolicy, key: str) -> None:
    """What the types cannot say: every rule is known, the users table is configured and carries
    a placeholder (how an anonymized user is recognized), the policy has what ``anonymize_after`` needs."""
    if not policy.salt_conn_id:
        raise Invalid(f"{key}.salt_conn_id", "must name an Airflow connection (its password is the hashing salt)")
    for name, table in policy.tables.items():
        where = f"{key}.tables.{name}"
        if not table.columns:
            raise Invalid(f"{where}.columns", "must name at least one column to anonymize")
        for column in table.columns:
            parse_rule(table.columns[column], f"{where}.columns.{column}")
        if table.user_column in table.columns:
            raise Invalid(f"{where}.columns.{table.user_column}", "the user column itself cannot be anonymized")
        if table.via is not None and table.via.table == name:
            raise Invalid(f"{where}.via.table", "must be another table")
    users = policy.tables.get(policy.users.table)
    if users is None:
        raise Invalid(f"{key}.users.table", f"{policy.users.table!r} must also be in {key}.tables")
    if users.user_column != policy.users.key or users.via is not None:
        raise Invalid(f"{key}.tables.{policy.users.table}.user_column", f"must be the users key {policy.users.key!r}")
    if not any(rule.kind in MARKER_RULES for rule in policy.rules(policy.users.table).values()):
        raise Invalid(f"{key}.tables.{policy.users.table}.columns",
                      f"needs a column with rule {' or '.join(MARKER_RULES)} (e.g. the e-mail): it is how an "
                      "anonymized user is recognized")
    if policy.anonymize_after is not None:
        if policy.anonymize_after <= 0:
            raise Invalid(f"{key}.anonymize_after", "must be greater than 0 (e.g. 730d), or null")
        if not policy.users.last_active_column:
            raise Invalid(f"{key}.users.last_active_column", "anonymize_after needs the column of last activity")
    if policy.schedule and policy.anonymize_after is None:
        raise Invalid(f"{key}.schedule", "a schedule needs anonymize_after (who is inactive for too long)")
    if policy.batch_size < 1:
        raise Invalid(f"{key}.batch_size", "must be at least 1")
    if not 0 < policy.lock_timeout < policy.statement_timeout:
        raise Invalid(f"{key}.lock_timeout", "must be greater than 0 and shorter than statement_timeout")
