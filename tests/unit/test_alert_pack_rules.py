"""The postgres_default pack covers every threshold of the seeds: an accidental edit of one fails here."""

from __future__ import annotations

import re

import pytest

from dbops.alerting.rules import load_pack

PACK = {rule.name: rule for rule in load_pack("postgres_default")}

# name: (severity, query, op, threshold, database) -- the seed (or issue 4) level each one carries.
EXPECTED = {
    "connection_utilization_warning": ("warning", "connection_utilization", ">=", 60, "target"),  # 003
    "connection_utilization_critical": ("critical", "connection_utilization", ">=", 80, "target"),  # 003
    "cache_hit_ratio_low": ("warning", "cache_hit_ratio", "<", 95, "target"),  # 000, 002
    "long_running_query_warning": ("warning", "long_running_queries", ">", 30, "target"),  # 004: 30 s
    "long_running_query_critical": ("critical", "long_running_queries", ">", 300, "target"),  # 000: 5 min
    "replication_lag_warning": ("warning", "replication_lag", ">", 60, "target"),  # 002, 003
    "replication_lag_critical": ("critical", "replication_lag", ">", 300, "target"),  # 003
    "database_size_warning": ("warning", "database_size", ">", 1, "target"),  # 001: 1 GB
    "database_size_critical": ("critical", "database_size", ">", 10, "target"),  # 001: 10 GB
    "slow_statements_warning": ("warning", "slow_statements", ">", 1000, "target"),  # 002: 1 s, in ms
    "slow_statements_critical": ("critical", "slow_statements", ">", 5000, "target"),  # 002: 5 s, in ms
    "rollback_rate_high": ("warning", "rollback_rate", ">", 5, "target"),  # 002: 5 % error rate
    "deadlocks_detected": ("warning", "deadlocks", ">", 0, "target"),  # 002
    "table_bloat_high": ("warning", "table_bloat", ">", 50, "target"),  # 004: 50 %
    "unused_indexes_warning": ("warning", "unused_indexes", ">", 10, "target"),  # 001
    "unused_indexes_critical": ("critical", "unused_indexes", ">", 20, "target"),  # 001
    "transaction_id_age_warning": ("warning", "transaction_id_age", ">", 20, "target"),  # % of 2^31
    "transaction_id_age_critical": ("critical", "transaction_id_age", ">", 50, "target"),
    "idle_in_transaction_warning": ("warning", "idle_in_transaction", ">", 300, "target"),
    "idle_in_transaction_critical": ("critical", "idle_in_transaction", ">", 1800, "target"),
    "health_score_warning": ("warning", "health_score", "<", 75, "target"),  # 001: above 75 good
    "health_score_critical": ("critical", "health_score", "<", 50, "target"),
    "verified_backup_missing_warning": ("warning", "backup_age", ">", 26, "ops"),  # issue 4: 26 hours
    "verified_backup_missing_critical": ("critical", "backup_age", ">", 50, "ops"),
    "recovery_test_failed": ("critical", "recovery_test_failed", "==", 1, "ops"),
    "maintenance_failed": ("warning", "maintenance_failed", ">", 0, "ops"),  # issue 4
}
# The labels (columns besides value) of the queries that return one row per thing.
LABELS = {"replication_lag": {"application_name", "client_addr"}, "table_bloat": {"schema", "table"},
          "maintenance_failed": {"kind"}, "backup_age": {"newest"}}


def test_the_pack_has_exactly_the_expected_rules_with_their_thresholds():
    assert {name: (r.severity, r.query, r.op, r.threshold, r.database) for name, r in PACK.items()} == EXPECTED


def test_seed_levels_breach_on_the_right_side():
    assert PACK["long_running_query_warning"].breached(31) and not PACK["long_running_query_warning"].breached(30)
    assert PACK["health_score_warning"].breached(74.9) and not PACK["health_score_warning"].breached(75)
    assert PACK["recovery_test_failed"].breached(1) and not PACK["recovery_test_failed"].breached(0)
    assert PACK["verified_backup_missing_critical"].breached(1_000_000)  # the "never backed up" sentinel


def test_policies_and_extensions():
    assert {n for n, r in PACK.items() if r.requires_extension == "pg_stat_statements"} == {
        "slow_statements_warning", "slow_statements_critical"}
    assert {n for n, r in PACK.items() if r.requires_policy == "maintenance"} == {"maintenance_failed"}
    assert {n for n, r in PACK.items() if r.requires_policy == "backup"} == {
        n for n, r in PACK.items() if r.database == "ops"} - {"maintenance_failed"}
    assert all(r.requires_policy is None for r in PACK.values() if r.database == "target")


@pytest.mark.parametrize("name", sorted(PACK))
def test_rule_text_and_query(name):
    rule = PACK[name]
    sql = rule.sql()
    assert sql.startswith("-- "), "each query starts with a comment saying what it measures and its unit"
    assert rule.runbook and "\n" not in rule.runbook
    assert set(re.findall(r"\{(\w+)\}", rule.summary)) <= {"value", "threshold"} | LABELS.get(rule.query, set())
    if rule.database == "ops":  # bound with params: %(target)s, and a literal percent sign written %%
        assert "%(target)s" in sql
        assert re.findall(r"%(?!\(target\)s|%)", sql.replace("%%", "")) == []
    else:  # run without params: no placeholder would be filled in
        assert "%(" not in sql


def test_warning_and_critical_pairs_share_one_query_and_critical_is_further():
    for name, rule in PACK.items():
        if name.endswith("_critical"):
            warning = PACK[name.removesuffix("_critical") + "_warning"]
            assert warning.query == rule.query and warning.op == rule.op
            assert rule.breached(rule.threshold + (1 if rule.op in (">", ">=") else -1))
            assert warning.breached(rule.threshold + (1 if rule.op in (">", ">=") else -1))
            assert not rule.breached(warning.threshold)
