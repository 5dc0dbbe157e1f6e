"""Alert state, events, silences, metric samples and the notification outbox in the ops database.

:func:`record_cycle` is one transaction, serialized per target by an advisory lock: the new alert
states, the events, the samples and the outbox rows of a cycle are committed together or not at all,
and a pg_notify message is sent on commit only. So a notification can never be lost between
"state changed" and "someone will be told". :func:`deliver_outbox` then sends each queued
notification once, except in the one window it names (sent, but the ops database lost before the
send was recorded), where it is sent again after its claim expires: at least once, never lost.
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
from dbops.notifications.channels import Notification

OUTBOX_CHANNELS = ("email", "slack")  # delivered by deliver_outbox; log now, pg_notify on commit


@dataclass(frozen=True)
class Cycle:
    """What :func:`record_cycle` committed; ``ignored_silences`` says which silences could not be used and why."""

    now: datetime
    alerts: list[Alert]
    changes: list[Change]
    ignored_silences: list[str]


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
        silences, ignored = _silences(conn, target)
        alerts, changes = advance(rules, samples, _stored_alerts(conn, target), unevaluated, silences, now)
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
    return Cycle(now, alerts, changes, ignored)


def _stored_alerts(conn: psycopg.Connection, target: str) -> list[Alert]:
    rows = conn.execute(
        "SELECT rule, labels, severity, status, active_since, last_notified, value, summary "
        "FROM dbops.alert_state WHERE target = %s", (target,)).fetchall()
    return [Alert(rule, labels, severity, AlertState(status, active_since, last_notified), value, summary)
            for rule, labels, severity, status, active_since, last_notified, value, summary in rows]


def _silences(conn: psycopg.Connection, target: str) -> tuple[list[Silence], list[str]]:
    """The target's active silences, and why each one that cannot be used (an invalid pattern) is left out."""
    rows = conn.execute(
        "SELECT id, matchers, expires_at FROM dbops.alert_silences WHERE (target IS NULL OR target = %s) "
        "AND starts_at <= now() AND expires_at > now() ORDER BY id", (target,)).fetchall()
    silences, ignored = [], []
    for silence_id, matchers, expires_at in rows:
        try:
            silences.append(Silence({str(k): str(v) for k, v in matchers.items()}, expires_at))
        except ValueError as err:
            ignored.append(f"silence {silence_id} of dbops.alert_silences is ignored: {err}; fix its matchers")
    return silences, ignored


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


@dataclass(frozen=True)
class Delivery:
    """What one :func:`deliver_outbox` pass did: sent, failed (with the error), and left in flight."""

    delivered: int
    failures: list[tuple[Pending, str]]
    in_flight: list[Pending]  # claimed by another run, or by one that died before recording the outcome


def deliver_outbox(conn: psycopg.Connection, target: str, deliver: Callable[[Pending], str | None],
                   claim_expiry: float) -> Delivery:
    """Deliver the target's pending notifications oldest first; ``deliver`` returns an error or None.

    Each notification is claimed (``claimed_at``, ``attempts + 1``) and committed before it is sent,
    and its outcome is committed in a second short transaction after. So two runs never send the same
    notification at once, a failed send stays pending for the next run, and a failed commit never
    re-sends by itself. The one window left is between the send and the outcome's commit (the ops
    database lost, the worker killed): the notification stays claimed and is sent again once the claim
    is ``claim_expiry`` seconds old (choose it longer than a delivery can take) — at least once there,
    exactly once everywhere else. A channel stops at its first failure or live claim, keeping its order.
    """
    delivered, failures, in_flight, held = 0, [], [], set()
    while True:
        claim = _claim_next(conn, target, held, claim_expiry)
        if claim is None:
            return Delivery(delivered, failures, in_flight)
        pending, claimed = claim
        if not claimed:
            in_flight.append(pending)
            held.add(pending.channel)
            continue
        error = deliver(pending)
        with conn.transaction():
            conn.execute(
                "UPDATE dbops.alert_notifications SET claimed_at = NULL, last_error = %s, "
                "delivered_at = CASE WHEN %s::text IS NULL THEN now() END WHERE id = %s",
                (error, error, pending.id))
        if error is None:
            delivered += 1
        else:
            failures.append((pending, error))
            held.add(pending.channel)


def _claim_next(conn: psycopg.Connection, target: str, held: set[str], claim_expiry: float
                ) -> tuple[Pending, bool] | None:
    """The oldest undelivered notification of a channel not in ``held``, and whether this run claimed it.

    It is not claimed while another claim on it is younger than ``claim_expiry`` seconds.
    """
    with conn.transaction():
        row = conn.execute(
            "SELECT id, channel, severity, title, body, created_at, "
            "coalesce(claimed_at > now() - make_interval(secs => %s), false) FROM dbops.alert_notifications "
            "WHERE target = %s AND delivered_at IS NULL AND NOT (channel = ANY(%s)) ORDER BY id LIMIT 1 FOR UPDATE",
            (claim_expiry, target, list(held))).fetchone()
        if row is None:
            return None
        *fields, claimed_elsewhere = row
        if not claimed_elsewhere:
            conn.execute("UPDATE dbops.alert_notifications SET claimed_at = now(), attempts = attempts + 1 "
                         "WHERE id = %s", (fields[0],))
        return Pending(*fields), not claimed_elsewhere


def oldest_undelivered(conn: psycopg.Connection, target: str) -> tuple[datetime, str, str | None] | None:
    """Creation time, channel and last error of the target's oldest undelivered notification."""
    with conn.transaction():
        return conn.execute(
            "SELECT created_at, channel, last_error FROM dbops.alert_notifications WHERE target = %s "
            "AND delivered_at IS NULL ORDER BY id LIMIT 1", (target,)).fetchone()
