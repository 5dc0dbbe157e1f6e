"""Config validation: every bad input is one clear error naming file, target and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbops.core.config import DEFAULT_CONFIG_PATH, load_config, parse_config
from dbops.core.schema import ConfigError

PATH = Path("/etc/dbops/test.yaml")

GOOD = """
ops_conn_id: dbops_state
storage:
  local: {url: var/backups}
targets:
  appdb:
    conn_id: pg_appdb
    backup: {schedule: "0 2 * * *", storage: local, retention: {daily: 7, weekly: 4, monthly: 12}}
    maintenance: {weekly: "0 1 * * 0", bloat_pct: 30, min_bytes: 10MB, lock_timeout: 5s}
"""


def error_for(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH)
    return str(info.value)


def test_good_config_is_typed():
    config = parse_config(GOOD, PATH)
    appdb = config.targets["appdb"]
    assert appdb.conn_id == "pg_appdb"
    assert appdb.maintenance.min_bytes == 10 * 1024 * 1024 and type(appdb.maintenance.min_bytes) is int
    assert type(appdb.backup.schedule) is str
    assert appdb.maintenance.lock_timeout == 5.0
    assert appdb.backup.retention.monthly == 12
    assert appdb.backup.tenant_retention == 30 * 86400.0  # tenant exports are deleted after 30 days by default
    assert config.store_for("appdb").local_path.name == "backups"
    assert config.path == PATH


def test_repository_config_is_valid():
    config = load_config(DEFAULT_CONFIG_PATH)
    assert "appdb" in config.targets


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("    conn_id: pg_appdb\n", "    conn_id: pg_appdb\n    colour: blue\n",
         "target 'appdb': key 'colour': unknown key"),
        ("ops_conn_id: dbops_state\n", "ops_conn_id: dbops_state\nverbose: true\n", "key 'verbose': unknown key"),
        ("bloat_pct: 30", "bloat_pct: lots", "target 'appdb': key 'maintenance.bloat_pct': expected a number, "
         "got a string 'lots'"),
        ("daily: 7", "daily: true", "target 'appdb': key 'backup.retention.daily': expected an integer, got a boolean"),
        ('schedule: "0 2 * * *"', 'schedule: "61 2 * * *"', "target 'appdb': key 'backup.schedule': bad cron "
         "expression '61 2 * * *'"),
        ('weekly: "0 1 * * 0"', "weekly: 5", "target 'appdb': key 'maintenance.weekly': expected a cron expression"),
        ("    conn_id: pg_appdb\n", "", "target 'appdb': key 'conn_id': required key is missing"),
        ("    conn_id: pg_appdb\n", "    conn_id: ''\n", "target 'appdb': key 'conn_id': must name an Airflow connection"),
        ("storage: local,", "storage: nowhere,", "target 'appdb': key 'backup.storage': unknown storage 'nowhere'"),
        ("storage: local,", "storage: local, format: zip,", "target 'appdb': key 'backup.format': unknown format 'zip'"),
        ("storage: local,", "storage: local, verify_conn_id: '',",
         "target 'appdb': key 'backup.verify_conn_id': must name an Airflow connection"),
        ("storage: local,", "storage: local, verify_conn_id: pg_verify, verify_on_target: true,",
         "target 'appdb': key 'backup.verify_on_target': set either verify_conn_id (restore on that server) or "
         "verify_on_target (restore on the target's own server), not both"),
        ("storage: local,", "storage: local, verify_on_target: yes please,",
         "target 'appdb': key 'backup.verify_on_target': expected a boolean"),
        ("storage: local,", "storage: local, verify_space_factor: -1,",
         "target 'appdb': key 'backup.verify_space_factor': must be 0 or more"),
        ("storage: local,", "storage: local, tenant_retention: 0d,",
         "target 'appdb': key 'backup.tenant_retention': must be greater than 0 (e.g. 30d)"),
        ("storage: local,", "storage: local, tenant_retention: forever,",
         "target 'appdb': key 'backup.tenant_retention': expected a duration"),
        ("min_bytes: 10MB", "min_bytes: ten", "target 'appdb': key 'maintenance.min_bytes': expected a size"),
        ("lock_timeout: 5s", "lock_timeout: 5 parsecs", "key 'maintenance.lock_timeout': expected a duration"),
        ("  appdb:\n", "  App-DB:\n", "target 'App-DB': target names are lowercase"),
        ("ops_conn_id: dbops_state\n", "", "key 'ops_conn_id': required key is missing"),
    ],
)
def test_bad_config_names_file_target_and_key(replace, by, expected):
    assert replace in GOOD
    message = error_for(GOOD.replace(replace, by))
    assert message.startswith(f"{PATH}: ")
    assert expected in message


def test_duplicate_target_is_rejected():
    duplicated = GOOD + "  appdb:\n    conn_id: other\n"
    message = error_for(duplicated)
    assert str(PATH) in message and "duplicate key 'appdb'" in message


def test_invalid_yaml_names_the_line():
    message = error_for("targets: [unclosed\n")
    assert message.startswith(f"{PATH}: line ") and "invalid YAML" in message


def test_top_level_must_be_a_mapping():
    assert "top level: expected a mapping, got a list" in error_for("- a\n- b\n")


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("channel", "expected"),
    [("pager", "key 'backup.notify[0]': unknown notifier 'pager'"),
     ("email", "key 'backup.notify[0]': notifier 'email' needs a notifications.email section")],
)
def test_bad_notifier_channel_is_rejected(channel, expected):
    text = GOOD.replace("storage: local,", f"storage: local, notify: [{channel}],")
    assert f"target 'appdb': {expected}" in error_for(text)
