"""Silences in the ops database: add one, end one, list the active ones (``db_alert_silence``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from dbops.alerting.state import Silence

ALL_TARGETS = "all"


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
