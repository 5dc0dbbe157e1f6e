"""The one message a cycle's changes make for a target: for people (email, Slack, log) and for programs (pg_notify)."""

from __future__ import annotations

import json

from dbops.alerting.cycle import Change
from dbops.alerting.rules import Rule
from dbops.notifications.channels import Notification

PG_NOTIFY_LIMIT = 7900  # bytes; PostgreSQL refuses payloads of 8000 bytes or more
_RANK = {"info": 0, "warning": 1, "critical": 2}


def change_line(change: Change) -> str:
    """``FIRING critical connection_utilization_critical {labels}: summary``; a resolved alert's line
    quotes the summary it fired with (``was: …``), which no longer holds."""
    alert = change.alert
    labels = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    summary = f"was: {alert.summary}" if change.kind == "resolved" else alert.summary
    return f"{change.kind.upper():8s} {alert.severity:8s} {alert.rule}" + (f" {{{labels}}}" if labels else "") + \
        f": {summary}"


def group_message(target: str, run_id: str, changes: list[Change], rules: dict[str, Rule]) -> Notification:
    """One notification for every change of one run on one target, the most severe first, with runbooks."""
    ordered = sorted(changes, key=lambda c: (c.kind == "resolved", -_RANK[c.alert.severity], c.alert.rule))
    firing = [c for c in ordered if c.kind != "resolved"]
    counts = [f"{len(firing)} firing"] if firing else []
    if len(firing) < len(ordered):
        counts.append(f"{len(ordered) - len(firing)} resolved")
    severity = max((c.alert.severity for c in firing), key=_RANK.__getitem__, default="info")
    lines = []
    for change in ordered:
        lines.append(change_line(change))
        if change.kind != "resolved" and change.alert.rule in rules:
            lines.append(f"         runbook: {rules[change.alert.rule].runbook}")
    lines += ["", f"Target {target}, run {run_id}. Current alerts: dbops.alert_state in the ops database; "
              "silence an alert with a row in dbops.alert_silences (see README)."]
    return Notification(title=f"[dbops] {target}: {', '.join(counts)}", body="\n".join(lines), severity=severity,
                        target=target)


def pg_notify_payload(target: str, run_id: str, changes: list[Change]) -> str:
    """JSON for pg_notify; alerts past the size limit are left out and counted in ``omitted``."""
    alerts = [{"kind": c.kind, "rule": c.alert.rule, "severity": c.alert.severity, "labels": c.alert.labels,
               "value": c.alert.value, "summary": c.alert.summary} for c in changes]
    for kept in range(len(alerts), -1, -1):
        payload = json.dumps({"target": target, "run_id": run_id, "alerts": alerts[:kept],
                              "omitted": len(alerts) - kept})
        if len(payload.encode()) <= PG_NOTIFY_LIMIT:
            return payload
    raise ValueError("pg_notify payload too large even without alerts")
