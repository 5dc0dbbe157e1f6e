"""Alert rule packs: the built-in pack loads; every bad rule is a clear error naming file and rule."""

from __future__ import annotations

import pytest

from dbops.alerting.rules import RULES_DIR, load_pack, rules_for
from dbops.core.config import parse_config
from dbops.core.schema import ConfigError

GOOD_RULE = """
rules:
  - name: too_many_connections
    severity: warning
    query: connection_utilization
    op: ">="
    threshold: 60
    for: 5min
    repeat: 4h
    summary: "{value}% in use"
    runbook: "find the leak"
"""


def load(tmp_path, text: str):
    (tmp_path / "pack.yaml").write_text(text)
    return load_pack("pack", tmp_path)


def test_builtin_pack_loads_with_its_queries():
    rules = load_pack("postgres_default")
    names = [r.name for r in rules]
    assert "connection_utilization_critical" in names and len(names) == len(set(names))
    critical = next(r for r in rules if r.name == "connection_utilization_critical")
    assert critical.breached(80) and not critical.breached(79.9)
    assert critical.for_ == 300 and "max_connections" in critical.sql()


def test_good_rule(tmp_path):
    (rule,) = load(tmp_path, GOOD_RULE)
    assert (rule.for_, rule.repeat, rule.threshold) == (300, 14400, 60)


@pytest.mark.parametrize(("replace", "by", "expected"), [
    ('op: ">="', 'op: "=~"', "rule 'too_many_connections': unknown operator '=~'"),
    ("query: connection_utilization", "query: no_such_query", "rule 'too_many_connections': query 'no_such_query' not found"),
    ("for: 5min", "for: soon", "rule 'too_many_connections': key 'for_': expected a duration"),
    ("severity: warning", "severity: dire", "unknown severity 'dire'"),
    ("    runbook: \"find the leak\"\n", "", "key 'runbook': required key is missing"),
    ("threshold: 60", "threshold: sixty", "key 'threshold': expected a number"),
    ("repeat: 4h", "repeat: 0s", "for must be >= 0 and repeat > 0"),
    ("repeat: 4h", "repeat: 4h\n    database: replica", "unknown database 'replica'"),
    ("repeat: 4h", "repeat: 4h\n    requires_policy: archival", "unknown requires_policy 'archival'"),
    ("repeat: 4h", "repeat: 4h\n    queries_dir: /etc", "unknown key queries_dir"),
])
def test_bad_rule_names_file_and_rule(tmp_path, replace, by, expected):
    assert replace in GOOD_RULE
    with pytest.raises(ConfigError) as info:
        load(tmp_path, GOOD_RULE.replace(replace, by))
    assert str(info.value).startswith(str(tmp_path / "pack.yaml"))
    assert expected in str(info.value)


def test_duplicate_rule_names_are_rejected(tmp_path):
    twice = GOOD_RULE + GOOD_RULE.split("rules:\n", 1)[1]
    with pytest.raises(ConfigError, match="rule 'too_many_connections': duplicate rule name"):
        load(tmp_path, twice)


def test_missing_pack_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_pack("absent", tmp_path)


def test_every_committed_pack_is_valid():
    packs = sorted(RULES_DIR.glob("*.yaml"))
    assert packs
    for pack in packs:
        assert load_pack(pack.stem)


def test_a_pack_file_brings_its_own_queries(tmp_path):
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "knob.sql").write_text("SELECT 1 AS value")
    (tmp_path / "mine.yaml").write_text("queries: q\n" + GOOD_RULE.replace("connection_utilization", "knob"))
    (rule,) = load_pack(str(tmp_path / "mine.yaml"))
    assert rule.sql() == "SELECT 1 AS value"


def config_with_alerts(alerts: str):
    return parse_config(f"""
ops_conn_id: ops
storage: {{local: {{url: /tmp/x}}}}
targets:
  db1:
    conn_id: pg_db1
    alerts: {alerts}
""", RULES_DIR / "dbops.yaml")


def test_thresholds_override_per_target_and_policies_select_rules():
    config = config_with_alerts("{rules: [postgres_default], thresholds: {connection_utilization_warning: 70}}")
    rules = {r.name: r for r in rules_for(config, "db1")}
    assert rules["connection_utilization_warning"].threshold == 70
    assert rules["connection_utilization_critical"].threshold == 80
    assert not any(r.requires_policy == "backup" for r in rules.values()), "db1 has no backup policy"


def test_threshold_of_an_unknown_rule_names_target_and_key():
    config = config_with_alerts("{thresholds: {conection_utilization_warning: 70}}")
    with pytest.raises(ConfigError, match=r"dbops.yaml: targets.db1.alerts.thresholds.conection_utilization_warning: "
                                          "no rule of that name"):
        rules_for(config, "db1")
