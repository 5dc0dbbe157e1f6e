"""Properties every rule of the built-in packs (include/config/rules/*.yaml) must have, read from the packs."""

from __future__ import annotations

import re

import pytest

from dbops.alerting.rules import RULES_DIR, load_pack

PACKS = sorted(path.stem for path in RULES_DIR.glob("*.yaml"))
RULES = {rule.name: rule for pack in PACKS for rule in load_pack(pack)}
SQL_RULES = sorted(name for name, rule in RULES.items() if rule.query)  # the others run a MongoDB server command
WORSE = {">": 1, ">=": 1, "<": -1, "<=": -1}  # the direction in which a value gets worse
PAIRS = sorted((name.removesuffix("_warning"), RULES[name], RULES[name.removesuffix("_warning") + "_critical"])
               for name in RULES if name.endswith("_warning") and name.removesuffix("_warning") + "_critical" in RULES)


def test_the_packs_hold_rules_and_warning_critical_pairs():
    assert PACKS and len(RULES) == sum(len(load_pack(pack)) for pack in PACKS), "rule names are unique across packs"
    assert PAIRS, "the packs have warning / critical pairs"


@pytest.mark.parametrize("name", SQL_RULES)
def test_rule_reads_an_existing_documented_query(name):
    rule = RULES[name]
    assert rule.query_path.is_file(), f"{rule.query_path} is missing"
    assert rule.sql().startswith("-- "), "each query starts with a comment saying what it measures and its unit"


@pytest.mark.parametrize("name", SQL_RULES)
def test_rule_text_is_filled_from_its_query(name):
    rule = RULES[name]
    assert rule.runbook.strip() and "\n" not in rule.runbook, "a runbook: one line of what to do"
    for label in set(re.findall(r"\{(\w+)\}", rule.summary)) - {"value", "threshold"}:
        assert re.search(rf"\b{label}\b", rule.sql()), f"summary placeholder {{{label}}} is no column of the query"


@pytest.mark.parametrize("name", sorted(n for n, r in RULES.items() if r.database == "ops"))
def test_ops_rule_binds_the_target_and_needs_a_policy(name):
    """Bound with params: %(target)s, and a literal percent sign written %%; only for targets with the policy."""
    rule, sql = RULES[name], RULES[name].sql()
    assert "%(target)s" in sql and rule.requires_policy is not None
    assert re.findall(r"%(?!\(target\)s|%)", sql.replace("%%", "")) == []


@pytest.mark.parametrize("name", sorted(n for n, r in RULES.items() if r.database == "target" and r.query))
def test_target_rule_has_no_parameters(name):
    """Run without params: no placeholder would be filled in."""
    assert "%(" not in RULES[name].sql() and RULES[name].requires_policy is None


@pytest.mark.parametrize("name", SQL_RULES)
def test_rule_requires_the_extension_its_query_reads(name):
    rule = RULES[name]
    assert ("pg_stat_statements" in rule.sql()) == (rule.requires_extension == "pg_stat_statements")


@pytest.mark.parametrize("name", sorted(n for n, r in RULES.items() if r.source))
def test_command_rule_text_is_filled_from_its_source(name):
    rule = RULES[name]
    assert rule.runbook.strip() and "\n" not in rule.runbook, "a runbook: one line of what to do"
    assert set(re.findall(r"\{(\w+)\}", rule.summary)) <= {"value", "threshold", *rule.source.labels}


@pytest.mark.parametrize("name", sorted(n for n, r in RULES.items() if r.op in WORSE))
def test_rule_breaches_beyond_its_threshold_only(name):
    rule = RULES[name]
    worse = WORSE[rule.op]
    assert rule.breached(rule.threshold + worse) and not rule.breached(rule.threshold - worse)
    assert rule.breached(rule.threshold) == rule.op.endswith("=")


@pytest.mark.parametrize("name", sorted(n for n, r in RULES.items() if r.op == "=="))
def test_equality_rule_breaches_at_its_threshold_only(name):
    rule = RULES[name]
    assert rule.breached(rule.threshold)
    assert not rule.breached(rule.threshold + 1) and not rule.breached(rule.threshold - 1)


@pytest.mark.parametrize("name", sorted(n for n in RULES if n.endswith(("_warning", "_critical"))))
def test_rule_severity_matches_its_name(name):
    assert RULES[name].severity == name.rsplit("_", 1)[1]


@pytest.mark.parametrize(("measure", "warning", "critical"), PAIRS, ids=[p[0] for p in PAIRS])
def test_warning_comes_before_critical_on_one_query(measure, warning, critical):
    assert (warning.query, warning.op, warning.database) == (critical.query, critical.op, critical.database)
    assert (critical.threshold - warning.threshold) * WORSE[warning.op] > 0, "critical is further than warning"
    assert warning.breached(critical.threshold) and not critical.breached(warning.threshold)
    assert critical.repeat <= warning.repeat, "a critical alert is repeated at least as often"
