"""One evaluation cycle of a target: samples and stored alerts in, the next alerts and the changes to notify out.

Pure logic over :func:`dbops.alerting.state.step`. An alert is a rule and a label set. A stored
alert whose rule could not be evaluated this cycle (its query failed, or the target is down) keeps
its state: "unknown" is not "resolved". Alerts describe the present: only a current run evaluates
(:func:`why_not_current`). The evaluations of the target and of the ops database make one cycle's
input (:func:`combine`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from dbops.alerting.evaluate import Evaluation, Metric, Sample
from dbops.alerting.rules import RULE_FAILED, TARGET_DOWN, Rule
from dbops.alerting.state import INACTIVE, AlertState, Silence, step

# A run whose time is older than this is a catch-up (a cleared old run, a late backfill): alerts
# describe the present, so it does not evaluate. Scheduled runs start within seconds of their time
# and a run times out after 4 minutes (dagrun_timeout), so a current run is never this old.
MAX_RUN_AGE = timedelta(minutes=15)
BACKFILL = "backfill"  # DagRunType.BACKFILL_JOB, a str enum
SKIPPED_METRIC = "rule_skipped"  # a sample per rule skipped for a lasting reason (logged once)
TARGET_IS_DOWN = "target down"


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

    @property
    def name(self) -> str:
        """``rule{label=value,...}``, as the evaluation's summary line lists it."""
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.rule}{{{labels}}}" if labels else self.rule


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


def why_not_current(run_type: str, as_of: datetime, now: datetime) -> str | None:
    """Why a run must not evaluate: a backfill, or a run whose time ``as_of`` is more than MAX_RUN_AGE ago."""
    if run_type == BACKFILL:
        return "a backfill run"
    age = timedelta(seconds=round((now - as_of).total_seconds()))
    if age > MAX_RUN_AGE:
        return f"the run is for {as_of.isoformat(timespec='minutes')}, {age} ago"
    return None


def unreachable(rules: list[Rule], message: str) -> Evaluation:
    """The evaluation of a target that does not answer: TargetDown breaching, its rules skipped."""
    down = Evaluation(samples=[Sample(TARGET_DOWN.name, {}, 0.0, True, message)],
                      metrics=[Metric("target_up", {}, 0.0)])
    down.skipped.update({r.name: TARGET_IS_DOWN for r in rules})
    return down


def reachable(evaluation: Evaluation) -> Evaluation:
    """The evaluation of a target that answered, with TargetDown not breaching."""
    evaluation.samples.append(Sample(TARGET_DOWN.name, {}, 1.0, False))
    evaluation.metrics.append(Metric("target_up", {}, 1.0))
    return evaluation


def target_down(on_target: Evaluation) -> bool:
    return any(s.rule == TARGET_DOWN.name and s.breaching for s in on_target.samples)


def combine(on_target: Evaluation, on_ops: Evaluation, rules: list[Rule]
            ) -> tuple[list[Sample], list[Metric], set[str]]:
    """Samples and metrics of both databases plus one RuleEvaluationFailed per failed rule; what stays unknown."""
    errors = on_target.errors + on_ops.errors
    failed = [Sample(RULE_FAILED.name, {"failed_rule": e.rule}, 1.0, True, f"{e.kind}: {e.message}") for e in errors]
    unevaluated = {e.rule for e in errors}
    if target_down(on_target):
        unevaluated |= {r.name for r in rules if r.database == "target"} | {RULE_FAILED.name}
    return on_target.samples + on_ops.samples + failed, on_target.metrics + on_ops.metrics, unevaluated


def lasting_skips(skipped: dict[str, str]) -> list[Metric]:
    """Rules skipped for a reason that lasts (a missing extension), as samples: the log says each once."""
    return [Metric(SKIPPED_METRIC, {"rule": rule, "why": why}, 1.0) for rule, why in sorted(skipped.items())
            if why != TARGET_IS_DOWN]
