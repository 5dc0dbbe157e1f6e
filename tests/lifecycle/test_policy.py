"""Lifecycle policies: bad config is one clear error naming file, target, key and table; parse time needs no
database, the run-time checks (tables, columns, indexes) run against the real PostgreSQL before anything moves."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException

from dbops.core.config import parse_config
from dbops.core.schema import ConfigError
from dbops.lifecycle.catalog import check_policies
from dbops.lifecycle.policy import LifecyclePolicy
from tests.lifecycle.conftest import check, count, write_config

PATH = Path("/etc/dbops/test.yaml")


def config(policy: str, section: str = "", backup: str = "backup: {storage: local}") -> str:
    return f"""
ops_conn_id: dbops_state
storage:
  local: {{url: var/backups}}
targets:
  appdb:
    conn_id: pg_appdb
    {backup}
    lifecycle:
      {section}
      policies:
        - {policy}
"""


def error_for(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH)
    return str(info.value)


@pytest.mark.parametrize(("policy", "key", "message"), [
    ("{table: orders, time_column: created_at, archive_after: 1095d, retention: 365d}", "policies[0].retention",
     "table 'orders': retention (365d) is the total life, base + archive: it must not be shorter than "
     "archive_after (1095d)"),
    ("{table: orders, time_column: created_at, archive_after: 3 years}", "policies[0].archive_after",
     "expected a duration such as 5s, got a string '3 years'"),
    ("{table: orders, time_column: created_at, archive_after: 0d}", "policies[0].archive_after",
     "table 'orders': must be greater than 0"),
    ("{table: orders, time_column: created_at, retention: 30d, cadence: weekly}", "policies[0].cadence",
     "table 'orders': unknown cadence 'weekly' (expected one of: monthly, daily)"),
    ("{table: orders, time_column: created_at, retention: 30d, filter: [{column: status, op: like, value: x}]}",
     "policies[0].filter[0].op", "table 'orders': unknown operator 'like'"),
    ("{table: orders, time_column: created_at, retention: 30d, filter: [{column: status, op: in, value: x}]}",
     "policies[0].filter[0].value", "'in' needs a non-empty list"),
    ("{table: orders, time_column: created_at, retention: 30d, filter: [{column: s, op: '=', value: \"1; DROP\", "
     "extra: 1}]}", "policies[0].filter[0].extra", "unknown key"),
    ("{table: orders, time_column: created_at}", "policies[0]", "set archive_after, retention or both"),
    ("{table: orders, time_column: created_at, retention: 30d, triggers: disable}", "policies[0].triggers",
     "table 'orders': unknown triggers 'disable' (expected one of: refuse, fire)"),
    ("{table: orders, time_column: created_at, archive_after: 30d, archive_storage: s3}",
     "policies[0].archive_storage", "unknown archive_storage 's3'"),
    ("{table: orders, time_column: created_at, retention: 30d, export: true}", "policies[0].archive_after",
     "export and archive_storage: store need archive_after"),
])
def test_bad_policy_is_a_parse_time_error_naming_file_target_key_and_table(policy, key, message):
    error = error_for(config(policy))
    assert error.startswith(f"{PATH}: target 'appdb': key 'lifecycle.{key}'")
    assert message in error


def test_export_needs_a_store_and_a_table_has_one_policy():
    error = error_for(config("{table: orders, time_column: t, archive_after: 30d, export: true}", backup=""))
    assert "key 'lifecycle.policies[0].export'" in error and "add a backup section" in error
    twice = error_for(config("{table: orders, time_column: t, retention: 30d}\n        - {table: sales.orders, "
                             "time_column: t, retention: 30d}"))
    assert "key 'lifecycle.policies[1].table'" in twice and "one policy per table" in twice


def test_section_limits_are_checked():
    error = error_for(config("{table: orders, time_column: t, retention: 30d}", section="lock_timeout: 1min"))
    assert "key 'lifecycle.lock_timeout': must be shorter than statement_timeout" in error
    error = error_for(config("{table: orders, time_column: t, retention: 30d}", section="notify: [pager]"))
    assert "key 'lifecycle.notify[0]': unknown notifier 'pager'" in error


def test_good_policy_is_typed():
    section = parse_config(config("{table: sales.orders, time_column: created_at, archive_after: 730d, "
                                  "retention: 2555d, filter: [{column: status, op: in, value: [closed, void]}]}"),
                           PATH).targets["appdb"].lifecycle
    policy = section.policies[0]
    assert (policy.schema_name, policy.table_name, policy.archive_after, policy.cadence) == (
        "sales", "orders", 730 * 86400.0, "monthly")
    assert policy.filter[0].value == ["closed", "void"]
    assert (section.archive_schedule, section.retention_schedule) == ("0 2 1 * *", "30 3 * * *")


def test_unknown_table_and_column_fail_the_first_task_naming_file_target_key_and_table(lab):
    write_config(lab, """
        - {table: parents, time_column: created_at, archive_after: 365d}
        - {table: childs, time_column: created_at, archive_after: 365d}
        - {table: children, time_column: made_at, archive_after: 365d, filter: [{column: state, op: '=', value: x}]}""")
    with pytest.raises(AirflowFailException) as info:
        check(lab)
    message = str(info.value)
    assert f"{lab.config}: target '{lab.name}': key 'lifecycle.policies[1].table': table 'childs': no such table" \
        in message
    assert "key 'lifecycle.policies[2].time_column': table 'children': no column 'made_at'" in message
    assert "key 'lifecycle.policies[2].filter[0].column': table 'children': no column 'state'" in message
    assert count(lab.dsn, "SELECT count(*) FROM pg_namespace WHERE nspname = 'archive'") == 0  # nothing changed


def test_a_time_column_without_an_index_is_a_warning(lab):
    with psycopg.connect(lab.dsn) as conn:
        infos, warnings = check_policies(conn, lab.config, lab.name, [
            LifecyclePolicy(table="children", time_column="kind", retention=86400.0),
            LifecyclePolicy(table="parents", time_column="created_at", retention=86400.0)])
    assert set(infos) == {"children", "parents"}
    assert warnings == [f"{lab.config}: target '{lab.name}': key 'lifecycle.policies[0].time_column': table "
                        "'children': column 'kind' leads no index: each batch scans the table; CREATE INDEX "
                        "CONCURRENTLY ON it (kind)"]


def test_a_table_without_primary_key_is_refused(lab):
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE heap_only (created_at timestamptz)")
    write_config(lab, "\n        - {table: heap_only, time_column: created_at, retention: 30d}")
    with pytest.raises(AirflowFailException, match="table 'heap_only': has no primary key"):
        check(lab, job="retention")
