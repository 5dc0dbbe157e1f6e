"""Alert rule packs: the built-in pack loads; every bad rule is a clear error naming file and rule."""

from __future__ import annotations

import pytest

from dbops.alerting.rules import QUERIES_DIR, RULES_DIR, load_pack
from dbops.config import ConfigError

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
    return load_pack("pack", tmp_path, QUERIES_DIR)


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
        load_pack("absent", tmp_path, QUERIES_DIR)


def test_every_committed_pack_is_valid():
    packs = sorted(RULES_DIR.glob("*.yaml"))
    assert packs
    for pack in packs:
        assert load_pack(pack.stem)
