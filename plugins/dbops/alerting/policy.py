"""The ``alerts`` section of a target: rule packs, channels, schedule, thresholds and limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from dbops.core.schema import Cron, Seconds


@dataclass(frozen=True)
class AlertPolicy:
    """``db_alerts__<target>`` (or ``db_alerts_group__<group>``): rule packs, where notifications go, and the evaluation's limits."""

    rules: list[str] = field(default_factory=lambda: ["postgres_default"])
    notify: list[str] = field(default_factory=lambda: ["log"])
    schedule: Cron | None = "*/5 * * * *"
    thresholds: dict[str, float] = field(default_factory=dict)  # rule name -> threshold for this target
    statement_timeout: Seconds = 5.0  # per rule query
    lock_timeout: Seconds = 1.0
    connect_timeout: Seconds = 10.0
    sample_retention: Seconds = 30 * 86400.0  # metric samples older than this are deleted
    undelivered_alarm: Seconds = 3600.0  # the DAG fails while a notification stays undelivered this long
    failure_repeat: Seconds = 4 * 3600.0  # a task of the DAG failing again with the same error: notified this often
    group: str | None = None  # evaluated with the group's other targets in db_alerts_group__<group>, not alone

    @property
    def people(self) -> list[str]:
        """The channels a failure of the alert DAG itself goes to: ``notify`` without ``pg_notify`` (transitions only)."""
        return [channel for channel in self.notify if channel != "pg_notify"]

    def query_limits(self) -> dict[str, int]:
        """The per-query timeouts as :func:`dbops.alerting.evaluate.evaluate` takes them."""
        return {"statement_timeout_ms": int(self.statement_timeout * 1000),
                "lock_timeout_ms": int(self.lock_timeout * 1000)}
