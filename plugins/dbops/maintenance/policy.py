"""The ``maintenance`` section of a target: schedules, bloat thresholds, lock and statement limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from dbops.core.schema import ByteSize, Cron, Invalid, Seconds


@dataclass(frozen=True)
class MaintenancePolicy:
    """When and what pg_maintenance_weekly / pg_maintenance_daily do on a target (see README)."""

    weekly: Cron | None = "0 1 * * 0"
    daily: Cron | None = "0 3 * * *"
    # Rewrite (VACUUM FULL / REINDEX CONCURRENTLY) only when the estimated bloat is above both.
    bloat_pct: float = 30.0
    min_bytes: ByteSize = 10 * 1024**2
    # Tables above this (heap + TOAST + indexes) are never locked by VACUUM FULL: reported instead.
    size_cap: ByteSize = 10 * 1024**3
    # Free disk (where measurable) must still hold this share of the volume after the rewrite.
    disk_reserve_pct: float = 10.0
    lock_timeout: Seconds = 5.0
    # The cap; each statement gets 60 s + its object's size / rewrite_rate, at most this.
    statement_timeout: Seconds = 3600.0
    rewrite_rate: ByteSize = 8 * 1024**2  # bytes per second assumed for the slowest acceptable rewrite
    # A lock timeout is retried this many times (Airflow retries, exponential backoff), then skipped.
    lock_retries: int = 3
    lock_retry_delay: Seconds = 60.0
    # VACUUM (ANALYZE) when dead tuples exceed both; ANALYZE when modifications since analyze exceed both.
    vacuum_dead_pct: float = 10.0
    vacuum_min_dead: int = 1000
    analyze_mod_pct: float = 10.0
    analyze_min_mod: int = 1000
    # Statistics older than this are refreshed when the table changed at all since.
    stats_max_age: Seconds = 7 * 86400.0
    # Rewrites wait while a transaction is this old or a replica lags this much (they hold back cleanup).
    long_transaction: Seconds = 900.0
    max_replication_lag: Seconds = 300.0
    # An index with fewer scans than this since the statistics reset is in the unused-index report.
    unused_index_scans: int = 1
    notify: list[str] = field(default_factory=lambda: ["log"])  # channels told when a maintenance task fails

def check_maintenance(policy: MaintenancePolicy, key: str) -> None:
    for pct in ("bloat_pct", "disk_reserve_pct", "vacuum_dead_pct", "analyze_mod_pct"):
        if not 0 <= getattr(policy, pct) < 100 or (pct == "bloat_pct" and policy.bloat_pct == 0):
            raise Invalid(f"{key}.{pct}", "must be between 0 and 100")
    for positive in ("lock_timeout", "statement_timeout", "rewrite_rate", "lock_retry_delay"):
        if getattr(policy, positive) <= 0:
            raise Invalid(f"{key}.{positive}", "must be greater than 0")
    if policy.lock_timeout >= policy.statement_timeout:
        raise Invalid(f"{key}.lock_timeout", "must be shorter than statement_timeout")
    for count in ("lock_retries", "vacuum_min_dead", "analyze_min_mod", "unused_index_scans"):
        if getattr(policy, count) < 0:
            raise Invalid(f"{key}.{count}", "must not be negative")
