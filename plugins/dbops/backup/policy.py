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
    # Where the verification restore goes: a throwaway cluster on the worker by default; the server of
    # ``verify_conn_id`` when set; the target's own server only with ``verify_on_target``.
    verify_conn_id: str | None = None
    verify_on_target: bool = False
    # The worker needs (1 + this) x the dump's uncompressed size free in staging_dir to verify it: the fetched
    # archive, and the restored copy with its indexes and WAL (the throwaway cluster only).
    verify_space_factor: float = 2.0
    encryption_conn_id: str | None = None
    notify: list[str] = field(default_factory=lambda: ["log"])
    tenant_tables: list[str] = field(default_factory=list)
    # Tenant exports hold personal data: the retention task deletes them once older than this.
    tenant_retention: Seconds = 30 * 86400.0


def check_backup(policy: BackupPolicy, key: str, storage: dict) -> None:
    """What the types cannot say: the store exists, the format is known, verify_conn_id names a connection and
    is not combined with verify_on_target, the space factor and tenant retention are in range."""
    if policy.storage not in storage:
        raise Invalid(f"{key}.storage", f"unknown storage {policy.storage!r} (defined: {', '.join(storage) or 'none'})")
    if policy.format not in DUMP_FORMATS:
        raise Invalid(f"{key}.format", f"unknown format {policy.format!r} (expected one of: {', '.join(DUMP_FORMATS)})")
    if policy.verify_conn_id is not None and not policy.verify_conn_id.strip():
        raise Invalid(f"{key}.verify_conn_id", "must name an Airflow connection (or be left out: the target's own "
                                               "server)")
    if policy.verify_on_target and policy.verify_conn_id:
        raise Invalid(f"{key}.verify_on_target", "set either verify_conn_id (restore on that server) or "
                                                 "verify_on_target (restore on the target's own server), not both")
    if policy.verify_space_factor < 0:
        raise Invalid(f"{key}.verify_space_factor", "must be 0 or more (default 2: the restored copy may take "
                                                    "twice the dump's uncompressed size)")
    if policy.tenant_retention <= 0:
        raise Invalid(f"{key}.tenant_retention", "must be greater than 0 (e.g. 30d)")
