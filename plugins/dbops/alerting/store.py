"""Alert state, events, silences, metric samples and the notification outbox in the ops database.

:func:`record_cycle` is one transaction, serialized per target by an advisory lock: the new alert
states, the events, the samples and the outbox rows of a cycle are committed together or not at all,
and a pg_notify message is sent on commit only. So a notification can never be lost between
"state changed" and "someone will be told".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.types.json import Jsonb

from dbops.alerting.cycle import Alert, Change, advance
from dbops.alerting.evaluate import Metric, Sample, metric_key
from dbops.alerting.notify import group_message, pg_notify_payload
from dbops.alerting.rules import Rule
from dbops.alerting.state import AlertState, Silence
from dbops.notifiers.channels import Notification

OUTBOX_CHANNELS = ("email", "slack")  # delivered by deliver_outbox; log now, pg_notify on commit


@dataclass(frozen=True)
class Cycle:
    """What :func:`record_cycle` committed."""

    now: datetime
    alerts: list[Alert]
    changes: list[Change]


def latest_values(conn: psycopg.Connection, target: str, metrics: set[str]) -> dict[tuple[str, str], float]:
    """The newest sample of each label set of ``metrics`` (the baseline of counter rules)."""
    if not metrics:
        return {}
    with conn.transaction():
        rows = conn.execute(
            "SELECT DISTINCT ON (metric, labels) metric, labels, value FROM dbops.metric_samples "
            "WHERE target = %s AND metric = ANY(%s) ORDER BY metric, labels, sampled_at DESC",
            (target, list(metrics))).fetchall()
    return {metric_key(name, labels): value for name, labels, value in rows}


def record_cycle(conn: psycopg.Connection, *, target: str, run_id: str, rules: dict[str, Rule],
                 samples: list[Sample], metrics: list[Metric], unevaluated: set[str], channels: list[str],
                 pg_notify_channel: str | None, sample_retention_seconds: float) -> Cycle:
    """Advance every alert of ``target`` by one cycle and commit state, events, samples and outbox at once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('dbops.alerts'), hashtext(%s))", (target,))
        now = conn.execute("SELECT now()").fetchone()[0]
        alerts, changes = advance(rules, samples, _stored_alerts(conn, target), unevaluated,
                                  _silences(conn, target), now)
        conn.execute("DELETE FROM dbops.alert_state WHERE target = %s", (target,))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO dbops.alert_state (target, fingerprint, rule, labels, severity, status, active_since, "
                "last_notified, value, summary, evaluated_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(target, a.fingerprint, a.rule, Jsonb(a.labels), a.severity, a.state.status, a.state.active_since,
                  a.state.last_notified, a.value, a.summary, now) for a in alerts])
            cur.executemany(
                "INSERT INTO dbops.alert_events (target, run_id, at, fingerprint, rule, labels, severity, kind, "
                "value, summary) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(target, run_id, now, c.alert.fingerprint, c.alert.rule, Jsonb(c.alert.labels), c.alert.severity,
                  c.kind, c.alert.value, c.alert.summary) for c in changes])
            cur.executemany(
                "INSERT INTO dbops.metric_samples (target, metric, labels, value, sampled_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                [(target, m.name, Jsonb(m.labels), m.value, now) for m in metrics])
        conn.execute("DELETE FROM dbops.metric_samples WHERE target = %s AND sampled_at < %s - make_interval("
                     "secs => %s)", (target, now, sample_retention_seconds))
        if changes:
            _enqueue(conn, target, run_id, now, group_message(target, run_id, changes, rules), channels)
            if pg_notify_channel:
                conn.execute("SELECT pg_notify(%s, %s)",
                             (pg_notify_channel, pg_notify_payload(target, run_id, changes)))
    return Cycle(now, alerts, changes)


def _stored_alerts(conn: psycopg.Connection, target: str) -> list[Alert]:
    rows = conn.execute(
        "SELECT rule, labels, severity, status, active_since, last_notified, value, summary "
        "FROM dbops.alert_state WHERE target = %s", (target,)).fetchall()
    return [Alert(rule, labels, severity, AlertState(status, active_since, last_notified), value, summary)
            for rule, labels, severity, status, active_since, last_notified, value, summary in rows]


def _silences(conn: psycopg.Connection, target: str) -> list[Silence]:
    rows = conn.execute(
        "SELECT matchers, expires_at FROM dbops.alert_silences WHERE (target IS NULL OR target = %s) "
        "AND starts_at <= now() AND expires_at > now()", (target,)).fetchall()
    return [Silence({str(k): str(v) for k, v in matchers.items()}, expires_at) for matchers, expires_at in rows]


def _enqueue(conn: psycopg.Connection, target: str, run_id: str, now: datetime, message: Notification,
             channels: list[str]) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO dbops.alert_notifications (target, run_id, channel, created_at, severity, title, body) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            [(target, run_id, channel, now, message.severity, message.title, message.body)
             for channel in dict.fromkeys(channels) if channel in OUTBOX_CHANNELS])


@dataclass(frozen=True)
class Pending:
    """One grouped notification still to deliver on one channel."""

    id: int
    channel: str
    severity: str
    title: str
    body: str
    created_at: datetime


def deliver_outbox(conn: psycopg.Connection, target: str, deliver: Callable[[Pending], str | None]
                   ) -> tuple[int, list[tuple[Pending, str]]]:
    """Deliver the target's pending notifications oldest first; ``deliver`` returns an error or None.

    Each row is locked while it is delivered and marked delivered in the same transaction, so two
    runs never send it twice. A channel stops at its first failure (keeping the order); the row stays
    pending for the next run. Returns the number delivered and the failures.
    """
    delivered, failures, failed_channels = 0, [], set()
    while True:
        with conn.transaction():
            row = conn.execute(
                "SELECT id, channel, severity, title, body, created_at FROM dbops.alert_notifications "
                "WHERE target = %s AND delivered_at IS NULL AND NOT (channel = ANY(%s)) "
                "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED", (target, list(failed_channels))).fetchone()
            if row is None:
                return delivered, failures
            pending = Pending(*row)
            error = deliver(pending)
            conn.execute(
                "UPDATE dbops.alert_notifications SET attempts = attempts + 1, last_error = %s, "
                "delivered_at = CASE WHEN %s::text IS NULL THEN now() END WHERE id = %s",
                (error, error, pending.id))
        if error is None:
            delivered += 1
        else:
            failures.append((pending, error))
            failed_channels.add(pending.channel)


def oldest_undelivered(conn: psycopg.Connection, target: str) -> tuple[datetime, str, str | None] | None:
    """Creation time, channel and last error of the target's oldest undelivered notification."""
    with conn.transaction():
        return conn.execute(
            "SELECT created_at, channel, last_error FROM dbops.alert_notifications WHERE target = %s "
            "AND delivered_at IS NULL ORDER BY id LIMIT 1", (target,)).fetchone()
