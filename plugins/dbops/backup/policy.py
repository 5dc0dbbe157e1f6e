"""The ``backup`` section of a target: schedule, store, retention, dump and verification settings."""

from __future__ import annotations

from dataclasses import dataclass, field

from dbops.core.schema import Cron, Invalid, Seconds

DUMP_FORMATS = ("custom", "directory")


@dataclass(frozen=True)
class Retention:
    daily: int = 7
    weekly: int = 4
    monthly: int = 12


@dataclass(frozen=True)
class BackupPolicy:
    storage: str
    schedule: Cron | None = "0 2 * * *"
    retention: Retention = field(default_factory=Retention)
    jobs: int = 2
    format: str = "custom"
    dump_jobs: int = 1
    compression_level: int = 2
    lock_wait_timeout: Seconds = 300.0
    verify_conn_id: str | None = None
    encryption_conn_id: str | None = None
    notify: list[str] = field(default_factory=lambda: ["log"])
    tenant_tables: list[str] = field(default_factory=list)
    # Tenant exports hold personal data: the retention task deletes them once older than this.
    tenant_retention: Seconds = 30 * 86400.0


def check_backup(policy: BackupPolicy, key: str, storage: dict) -> None:
    """What the types cannot say: the store exists, the format is known, verify_conn_id names a connection,
    tenant retention is positive."""
    if policy.storage not in storage:
        raise Invalid(f"{key}.storage", f"unknown storage {policy.storage!r} (defined: {', '.join(storage) or 'none'})")
    if policy.format not in DUMP_FORMATS:
        raise Invalid(f"{key}.format", f"unknown format {policy.format!r} (expected one of: {', '.join(DUMP_FORMATS)})")
    if policy.verify_conn_id is not None and not policy.verify_conn_id.strip():
        raise Invalid(f"{key}.verify_conn_id", "must name an Airflow connection (or be left out: the target's own "
                                               "server)")
    if policy.tenant_retention <= 0:
        raise Invalid(f"{key}.tenant_retention", "must be greater than 0 (e.g. 30d)")
