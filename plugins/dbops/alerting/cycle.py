"""One evaluation cycle of a target: its samples and the stored alerts in, the next alerts and the changes to notify out.

Pure logic over :func:`dbops.alerting.state.step`. An alert is a rule and a label set. A stored
alert whose rule could not be evaluated this cycle (its query failed, or the target is down) keeps
its state: "unknown" is not "resolved".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from dbops.alerting.evaluate import Sample
from dbops.alerting.rules import Rule
from dbops.alerting.state import INACTIVE, AlertState, Silence, step


@dataclass(frozen=True)
class Alert:
    """A pending or firing alert as stored between cycles."""

    rule: str
    labels: dict[str, str]
    severity: str
    state: AlertState
    value: float
    summary: str

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.labels)


@dataclass(frozen=True)
class Change:
    """A transition people are told about: ``firing``, ``repeat`` or ``resolved``."""

    kind: str
    alert: Alert


def fingerprint(rule: str, labels: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps([rule, labels], sort_keys=True).encode()).hexdigest()[:32]


def advance(rules: dict[str, Rule], samples: list[Sample], stored: list[Alert], unevaluated: set[str],
            silences: list[Silence], now: datetime) -> tuple[list[Alert], list[Change]]:
    """The alerts still pending or firing after this cycle, and the changes to notify."""
    previous = {alert.fingerprint: alert for alert in stored}
    alerts: list[Alert] = []
    changes: list[Change] = []
    seen: set[str] = set()
    for sample in samples:
        rule = rules[sample.rule]
        key = fingerprint(rule.name, sample.labels)
        seen.add(key)
        old = previous.get(key)
        silenced = any(s.silences({**sample.labels, "alertname": rule.name, "severity": rule.severity}, now)
                       for s in silences)
        transition = step(old.state if old else None, sample.breaching, now, timedelta(seconds=rule.for_),
                          timedelta(seconds=rule.repeat), silenced)
        summary = rule.render(sample.value, {**sample.labels, "error": sample.detail})
        alert = Alert(rule.name, sample.labels, rule.severity, transition.state, sample.value, summary)
        if transition.state.status != INACTIVE:
            alerts.append(alert)
        if transition.notify:
            changes.append(Change(transition.notify, alert if transition.notify != "resolved" else old))
    for key, old in previous.items():
        if key in seen:
            continue
        if old.rule not in rules:  # the rule was removed from the packs: its alerts go with it
            continue
        if old.rule in unevaluated:
            alerts.append(old)
            continue
        rule = rules[old.rule]
        transition = step(old.state, False, now, timedelta(seconds=rule.for_), timedelta(seconds=rule.repeat))
        if transition.notify:
            changes.append(Change(transition.notify, old))
    return alerts, changes
