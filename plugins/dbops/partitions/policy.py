"""The ``partitions`` section of a target: which RANGE-partitioned tables dbops keeps, and how.

```yaml
partitions:
  schedule: "30 4 * * *"          # pg_partitions__<target>; null = on demand only
  lock_timeout: 2s                 # no DDL makes application queries wait longer than this
  tables:
    learning_sessions: {interval: monthly, premake: 6, retention: 12 months, retire: drop}
```

Validation is split in two. At parse time (this module, called from ``core/config.py``) only the file is
read: intervals, counts, retention, retire modes, and that ``retire: drop`` has a backup store to dump
into. Whether a table is RANGE-partitioned on one date/timestamp column can only be seen in the target's
catalogs, and parsing never touches a database; the inspect step checks it on every run and fails that
table with an error naming the file, target, table and key (see ``tree.TableSetupError``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dbops.core.schema import Cron, Invalid, Seconds

INTERVALS = ("daily", "weekly", "monthly", "yearly")
RETIRE_MODES = ("detach", "archive_schema", "drop")
RETENTION_UNITS = {"day": "days", "days": "days", "week": "weeks", "weeks": "weeks", "month": "months",
                   "months": "months", "year": "years", "years": "years"}
_RETENTION = re.compile(r"^\s*(\d+)\s*([a-z]+)\s*$")
_NAME = re.compile(r"^[^.]{1,63}(\.[^.]{1,63})?$")


@dataclass(frozen=True)
class TablePolicy:
    """One partitioned table: its interval, how many intervals ahead exist, what happens to old ones.

    ``retention`` is ``<n> days|weeks|months|years`` (null: never retire); a partition is retired once
    its upper bound is at or before the run's logical date minus the retention.
    """

    interval: str = "monthly"
    premake: int = 6
    retention: str | None = "12 months"
    retire: str = "detach"
    dump_before_drop: bool = True
    archive_schema: str = "partition_archive"

    @property
    def retention_parts(self) -> tuple[int, str] | None:
        """``(12, "months")`` for ``12 months``; None when nothing is retired."""
        if self.retention is None:
            return None
        number, unit = _RETENTION.match(self.retention).groups()
        return int(number), RETENTION_UNITS[unit]


@dataclass(frozen=True)
class PartitionsPolicy:
    tables: dict[str, TablePolicy]
    schedule: Cron | None = "30 4 * * *"
    lock_timeout: Seconds = 2.0
    statement_timeout: Seconds = 600.0
    # A lock timeout is retried this many times inside the run (delays lock_retry_delay, doubling), then the
    # step is skipped with its reason and the run goes on with the other steps and tables.
    lock_retries: int = 4
    lock_retry_delay: Seconds = 1.0
    batch_rows: int = 5000  # rows moved out of DEFAULT per transaction
    notify: list[str] = field(default_factory=lambda: ["log"])


def split_name(name: str) -> tuple[str, str]:
    """``schema.table`` or ``table`` (schema ``public``) as ``(schema, table)``."""
    schema, _, table = name.rpartition(".")
    return schema or "public", table


def check_partitions(policy: PartitionsPolicy, key: str, has_backup: bool) -> None:
    """What the types cannot say (file only, no database): see the module docstring for the run-time half."""
    if not policy.tables:
        raise Invalid(f"{key}.tables", "list at least one partitioned table")
    for positive in ("lock_timeout", "statement_timeout", "lock_retry_delay", "batch_rows"):
        if getattr(policy, positive) <= 0:
            raise Invalid(f"{key}.{positive}", "must be greater than 0")
    if policy.lock_timeout >= policy.statement_timeout:
        raise Invalid(f"{key}.lock_timeout", "must be shorter than statement_timeout")
    if policy.lock_retries < 0:
        raise Invalid(f"{key}.lock_retries", "must not be negative")
    for name, table in policy.tables.items():
        where = f"{key}.tables.{name}"
        if not _NAME.match(name):
            raise Invalid(where, "name a table as 'table' or 'schema.table' (at most 63 bytes each)")
        if table.interval not in INTERVALS:
            raise Invalid(f"{where}.interval", f"unknown interval {table.interval!r} "
                                               f"(expected one of: {', '.join(INTERVALS)})")
        if not 1 <= table.premake <= 400:
            raise Invalid(f"{where}.premake", "must be between 1 and 400 intervals ahead")
        if table.retention is not None:
            match = _RETENTION.match(table.retention)
            if not match or match.group(2) not in RETENTION_UNITS or int(match.group(1)) < 1:
                raise Invalid(f"{where}.retention", f"expected e.g. '12 months' or '30 days', got {table.retention!r}")
        if table.retire not in RETIRE_MODES:
            raise Invalid(f"{where}.retire", f"unknown mode {table.retire!r} (expected one of: "
                                             f"{', '.join(RETIRE_MODES)})")
        if table.retire == "drop" and table.dump_before_drop and not has_backup:
            raise Invalid(f"{where}.retire", "drop dumps each partition to the backup store first: give the target "
                                             "a backup section (its storage), or use detach / archive_schema")
        if not 0 < len(table.archive_schema.encode()) <= 63:
            raise Invalid(f"{where}.archive_schema", "must be 1 to 63 bytes")
