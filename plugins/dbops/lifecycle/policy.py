"""The ``lifecycle`` section of a target: archive and retention policies, batch and time limits.

Validation is split in two, because parsing never touches a database:

* at parse time (:func:`check_lifecycle`, called when the DAG files are parsed): durations, retention
  shorter than ``archive_after``, cadence, filter operators, ``archive_storage``, a table named twice,
  exports without a store;
* at run time, in the first task of each lifecycle DAG (:func:`dbops.lifecycle.catalog.check_policies`):
  unknown table or column, a table without a primary key, an archive table whose column types differ from
  the source's (or with a NOT NULL column the source dropped), row-level security the role cannot bypass,
  user triggers the work would fire (unless ``triggers: fire``), and a time column without an index (a
  warning: each batch would scan the table).

Both name the config file, the target, the table and the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dbops.core.schema import Cron, Invalid, Seconds

CADENCES = {"monthly": 31 * 86400.0, "daily": 86400.0}  # the longest interval between two runs
OPERATORS = ("=", "!=", "<", "<=", ">", ">=", "in", "not in", "is null", "is not null")
STORAGES = ("database", "store")
TRIGGERS = ("refuse", "fire")  # user triggers the moves and purges would fire: refuse to run, or let them fire
ARCHIVE_SCHEMA = "archive"


@dataclass(frozen=True)
class Condition:
    """One row filter term: ``column op value`` (the value is always passed as a query parameter)."""

    column: str
    op: str
    value: object = None


@dataclass(frozen=True)
class LifecyclePolicy:
    """What happens to the rows of one table as they age (durations count back from the run's data interval end).

    ``archive_after``: rows older than this move to ``archive.<table>`` (null: never archived).
    ``retention``: total life, base + archive; older rows are deleted (null: kept for ever).
    ``triggers``: ``refuse`` (default) fails the check step while a user trigger would fire on the rows
    (DELETE on the table, INSERT or DELETE on the archive table); ``fire`` accepts that they fire.
    Users are anonymized after inactivity by the target's ``anonymize`` section (``anonymize_after``
    there): it is about people across tables, not about the rows of one table.
    """

    table: str
    time_column: str
    archive_after: Seconds | None = None
    retention: Seconds | None = None
    cadence: str = "monthly"
    filter: list[Condition] = field(default_factory=list)
    export: bool = False
    archive_storage: str = "database"
    triggers: str = "refuse"

    @property
    def schema_name(self) -> str:
        return self.table.split(".", 1)[0] if "." in self.table else "public"

    @property
    def table_name(self) -> str:
        return self.table.split(".", 1)[1] if "." in self.table else self.table

    @property
    def exports(self) -> bool:
        return self.export or self.archive_storage == "store"

    @property
    def cadence_seconds(self) -> float:
        return CADENCES[self.cadence]


@dataclass(frozen=True)
class LifecycleSection:
    """Schedules and limits shared by a target's policies."""

    archive_schedule: Cron | None = "0 2 1 * *"
    retention_schedule: Cron | None = "30 3 * * *"
    batch_seconds: Seconds = 0.5  # target duration of one batch; the batch size adapts to it
    pause: Seconds = 0.0  # between batches
    time_budget: Seconds = 1800.0  # per run; it stops cleanly and the next run (or a retry) continues
    lock_timeout: Seconds = 2.0
    statement_timeout: Seconds = 30.0
    lock_retries: int = 5  # a batch whose lock wait timed out is retried this often, then the task retries
    progress_every: int = 50  # a progress line every this many batches
    notify: list[str] = field(default_factory=lambda: ["log"])  # channels told when a lifecycle task fails
    policies: list[LifecyclePolicy] = field(default_factory=list)


def check_lifecycle(section: LifecycleSection, key: str, has_store: bool) -> None:
    """What the types cannot say; ``has_store``: the target has a backup store to export into."""
    for positive in ("batch_seconds", "time_budget", "lock_timeout", "statement_timeout"):
        if getattr(section, positive) <= 0:
            raise Invalid(f"{key}.{positive}", "must be greater than 0")
    if section.pause < 0:
        raise Invalid(f"{key}.pause", "must not be negative")
    if section.lock_timeout >= section.statement_timeout:
        raise Invalid(f"{key}.lock_timeout", "must be shorter than statement_timeout")
    if section.lock_retries < 0 or section.progress_every < 1:
        raise Invalid(f"{key}.lock_retries" if section.lock_retries < 0 else f"{key}.progress_every",
                      "must not be negative" if section.lock_retries < 0 else "must be at least 1")
    archive_names: dict[str, str] = {}
    for i, policy in enumerate(section.policies):
        where = f"{key}.policies[{i}]"
        _check_policy(policy, where, has_store)
        other = archive_names.setdefault(policy.table_name, policy.table)
        if other != policy.table or sum(p.table == policy.table for p in section.policies) > 1:
            raise Invalid(f"{where}.table", f"table {policy.table!r}: another policy uses the table (or the archive "
                                            f"table {ARCHIVE_SCHEMA}.{policy.table_name}); one policy per table")


def _check_policy(policy: LifecyclePolicy, where: str, has_store: bool) -> None:
    name = f"table {policy.table!r}"
    if not policy.table or policy.table.startswith(".") or policy.table.endswith("."):
        raise Invalid(f"{where}.table", "must name a table, optionally schema-qualified (schema.table)")
    if not policy.time_column:
        raise Invalid(f"{where}.time_column", f"{name}: must name the column that ages a row")
    for duration in ("archive_after", "retention"):
        value = getattr(policy, duration)
        if value is not None and value <= 0:
            raise Invalid(f"{where}.{duration}", f"{name}: must be greater than 0 (e.g. 730d) or null")
    if policy.archive_after is None and policy.retention is None:
        raise Invalid(f"{where}", f"{name}: set archive_after, retention or both")
    if policy.retention is not None and policy.archive_after is not None and policy.retention < policy.archive_after:
        raise Invalid(f"{where}.retention", f"{name}: retention ({policy.retention / 86400:g}d) is the total life, "
                                            f"base + archive: it must not be shorter than archive_after "
                                            f"({policy.archive_after / 86400:g}d)")
    if policy.cadence not in CADENCES:
        raise Invalid(f"{where}.cadence", f"{name}: unknown cadence {policy.cadence!r} "
                                          f"(expected one of: {', '.join(CADENCES)})")
    if policy.archive_storage not in STORAGES:
        raise Invalid(f"{where}.archive_storage", f"{name}: unknown archive_storage {policy.archive_storage!r} "
                                                  f"(expected one of: {', '.join(STORAGES)})")
    if policy.triggers not in TRIGGERS:
        raise Invalid(f"{where}.triggers", f"{name}: unknown triggers {policy.triggers!r} (expected one of: "
                                           f"{', '.join(TRIGGERS)})")
    if policy.exports and policy.archive_after is None:
        raise Invalid(f"{where}.archive_after", f"{name}: export and archive_storage: store need archive_after")
    if policy.exports and not has_store:
        raise Invalid(f"{where}.export", f"{name}: exports go to the target's backup store: add a backup section")
    for j, term in enumerate(policy.filter):
        _check_condition(term, f"{where}.filter[{j}]", name)


def _check_condition(term: Condition, where: str, name: str) -> None:
    if not term.column:
        raise Invalid(f"{where}.column", f"{name}: must name a column")
    if term.op not in OPERATORS:
        raise Invalid(f"{where}.op", f"{name}: unknown operator {term.op!r} (expected one of: {', '.join(OPERATORS)})")
    if term.op in ("is null", "is not null"):
        if term.value is not None:
            raise Invalid(f"{where}.value", f"{name}: {term.op!r} takes no value")
    elif term.op in ("in", "not in"):
        if not isinstance(term.value, list) or not term.value or any(isinstance(v, (list, dict)) for v in term.value):
            raise Invalid(f"{where}.value", f"{name}: {term.op!r} needs a non-empty list of plain values")
    elif term.value is None or isinstance(term.value, (list, dict)):
        raise Invalid(f"{where}.value", f"{name}: {term.op!r} needs one plain value (string, number or boolean)")


def policy_error(path: Path, target: str, index: int, policy: LifecyclePolicy, key: str, message: str) -> str:
    """A run-time problem of a policy, worded like a parse-time config error (file, target, key, table)."""
    return (f"{path}: target '{target}': key 'lifecycle.policies[{index}].{key}': table {policy.table!r}: "
            f"{message}")
