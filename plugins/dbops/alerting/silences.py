"""Silences in the ops database: validate a ``db_alert_silence`` request, add one, end one, list the active."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from dbops.alerting.state import Silence
from dbops.core.schema import ConfigError, Seconds, build_section

ALL_TARGETS = "all"
MAX_SILENCE_SECONDS = 30 * 86400.0  # a forgotten silence must not hide alerts for ever


@dataclass(frozen=True)
class SilenceRequest:
    """The Params of ``db_alert_silence``, validated like dbops.yaml."""

    target: str
    duration: Seconds
    comment: str
    rule: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    end_silence_id: int = 0

    @property
    def matchers(self) -> dict[str, str]:
        """The label matchers, the rule as ``alertname``."""
        return {**self.labels, **({"alertname": self.rule} if self.rule else {})}


def silence_request(params: dict[str, Any], targets: list[str]) -> SilenceRequest:
    """The Params validated; :class:`ConfigError` names the Param to fix.

    :param targets: the targets with alerts.
    """
    where = "db_alert_silence: Params"
    request = build_section(SilenceRequest, params, Path("db_alert_silence"), "Params")
    if request.target not in [ALL_TARGETS, *targets]:
        raise ConfigError(f"{where}: target {request.target!r} has no alerts; choose one of "
                          f"{', '.join([ALL_TARGETS, *targets])}")
    if not request.end_silence_id:
        if not 0 < request.duration <= MAX_SILENCE_SECONDS:
            raise ConfigError(f"{where}: duration must be more than 0 and at most 30d")
        if len(request.comment.strip()) < 3:
            raise ConfigError(f"{where}: say why in comment (who will read it: the on-call engineer)")
    return request


@dataclass(frozen=True)
class SilenceRow:
    id: int
    target: str | None
    matchers: dict[str, str]
    starts_at: datetime
    expires_at: datetime
    created_by: str
    comment: str

    def line(self) -> str:
        matchers = ", ".join(f"{name}=~{pattern!r}" for name, pattern in sorted(self.matchers.items()))
        return (f"silence {self.id}: target {self.target or ALL_TARGETS}, {matchers}, until "
                f"{self.expires_at:%Y-%m-%d %H:%M %Z} by {self.created_by}: {self.comment}")


def check_matchers(matchers: dict[str, str]) -> None:
    """Raise ValueError when there is no matcher or one is not a valid regular expression (naming it)."""
    if not matchers:
        raise ValueError("a silence needs at least one matcher (rule or labels); an empty one would silence all")
    Silence(matchers, datetime.max)  # validates every pattern


def add_silence(conn: psycopg.Connection, *, target: str | None, matchers: dict[str, str], seconds: float,
                created_by: str, comment: str) -> SilenceRow:
    """Insert a silence from now for ``seconds``; the same request made again while it is active is reused."""
    check_matchers(matchers)
    with conn.transaction():
        row = conn.execute(
            "SELECT id, target, matchers, starts_at, expires_at, created_by, comment FROM dbops.alert_silences "
            "WHERE target IS NOT DISTINCT FROM %s AND matchers = %s AND created_by = %s AND comment = %s "
            "AND expires_at > now() ORDER BY id DESC LIMIT 1",
            (target, Jsonb(matchers), created_by, comment)).fetchone()
        if row is None:
            row = conn.execute(
                "INSERT INTO dbops.alert_silences (target, matchers, expires_at, created_by, comment) "
                "VALUES (%s, %s, now() + make_interval(secs => %s), %s, %s) "
                "RETURNING id, target, matchers, starts_at, expires_at, created_by, comment",
                (target, Jsonb(matchers), seconds, created_by, comment)).fetchone()
    return SilenceRow(*row)


def end_silence(conn: psycopg.Connection, silence_id: int) -> SilenceRow | None:
    """End an active silence now; None when no active silence has that id."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE dbops.alert_silences SET expires_at = greatest(now(), starts_at + interval '1 microsecond') "
            "WHERE id = %s AND expires_at > now() "
            "RETURNING id, target, matchers, starts_at, expires_at, created_by, comment", (silence_id,)).fetchone()
    return None if row is None else SilenceRow(*row)


def active_silences(conn: psycopg.Connection) -> list[SilenceRow]:
    with conn.transaction():
        rows = conn.execute(
            "SELECT id, target, matchers, starts_at, expires_at, created_by, comment FROM dbops.alert_silences "
            "WHERE expires_at > now() ORDER BY expires_at, id").fetchall()
    return [SilenceRow(*row) for row in rows]
