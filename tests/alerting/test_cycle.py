"""One alert cycle (pure): unknown is not resolved, removed rules go, silences by label; the grouped message."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

from dbops.alerting.cycle import MAX_RUN_AGE, Alert, Change, advance, why_not_current
from dbops.alerting.evaluate import Sample
from dbops.alerting.notify import PG_NOTIFY_LIMIT, group_message, pg_notify_payload
from dbops.alerting.rules import Rule
from dbops.alerting.state import FIRING, AlertState, Silence

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)
DISK = Rule(name="disk_full", severity="critical", query="disk", op=">", threshold=90, summary="{mount} at {value}%",
            runbook="free space")
SLOW = Rule(name="slow", severity="warning", query="slow", op=">", threshold=1, summary="{value}s", runbook="index")
RULES = {r.name: r for r in (DISK, SLOW)}


def firing(rule: Rule, labels: dict[str, str]) -> Alert:
    return Alert(rule.name, labels, rule.severity, AlertState(FIRING, NOW - timedelta(hours=1), NOW - timedelta(hours=1)),
                 95.0, "was firing")


def test_breach_fires_with_rendered_summary_and_missing_row_resolves():
    alerts, changes = advance(RULES, [Sample("disk_full", {"mount": "/data"}, 97.0, True)],
                              [firing(SLOW, {})], set(), [], NOW)
    assert [(a.rule, a.summary) for a in alerts] == [("disk_full", "/data at 97%")]
    assert [(c.kind, c.alert.rule) for c in changes] == [("firing", "disk_full"), ("resolved", "slow")]


def test_unevaluated_rule_keeps_its_alert_and_removed_rule_drops_it():
    stored = [firing(SLOW, {}), firing(Rule(**{**DISK.__dict__, "name": "gone"}), {})]
    alerts, changes = advance(RULES, [], stored, {"slow"}, [], NOW)
    assert [a.rule for a in alerts] == ["slow"] and changes == []


def test_silence_matches_alertname_and_labels_by_full_regex():
    silence = Silence({"alertname": "disk_.*", "mount": "/data"}, NOW + timedelta(hours=1))
    samples = [Sample("disk_full", {"mount": "/data"}, 97.0, True), Sample("disk_full", {"mount": "/data2"}, 97.0, True)]
    alerts, changes = advance(RULES, samples, [], set(), [silence], NOW)
    assert len(alerts) == 2 and [c.alert.labels for c in changes] == [{"mount": "/data2"}]


def test_group_message_most_severe_first_with_runbooks():
    changes = [Change("resolved", firing(SLOW, {})), Change("firing", firing(DISK, {"mount": "/"}))]
    message = group_message("appdb", "run_1", changes, RULES)
    assert message.title == "[dbops] appdb: 1 firing, 1 resolved" and message.severity == "critical"
    lines = message.body.splitlines()
    assert lines[0].startswith("FIRING   critical disk_full {mount=/}") and lines[1].endswith("runbook: free space")
    assert lines[2].startswith("RESOLVED warning  slow") and ": was: " in lines[2], "a resolved summary is the past"


def test_pg_notify_payload_stays_under_the_limit():
    changes = [Change("firing", firing(DISK, {"mount": f"/m{i}" + "x" * 200})) for i in range(100)]
    payload = json.loads(pg_notify_payload("appdb", "run_1", changes))
    assert len(json.dumps(payload).encode()) <= PG_NOTIFY_LIMIT
    assert payload["omitted"] > 0 and len(payload["alerts"]) + payload["omitted"] == 100


def test_only_a_current_run_evaluates():
    assert why_not_current("scheduled", NOW - MAX_RUN_AGE, NOW) is None
    assert why_not_current("manual", NOW - MAX_RUN_AGE - timedelta(seconds=1), NOW) == \
        "the run is for 2026-11-22T11:44+00:00, 0:15:01 ago"
    assert why_not_current("backfill", NOW, NOW) == "a backfill run"


def test_alert_name_lists_its_labels_sorted():
    state = AlertState(FIRING, NOW, NOW)
    assert Alert("disk_full", {"mount": "/", "host": "a"}, "critical", state, 95, "").name == \
        "disk_full{host=a,mount=/}"
    assert Alert("slow", {}, "warning", state, 2, "").name == "slow"
