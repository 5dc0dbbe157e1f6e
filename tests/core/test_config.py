"""Config validation: every bad input is one clear error naming file, target and key."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

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


@pytest.fixture
def yaml_cache(tmp_path, monkeypatch) -> SimpleNamespace:
    """The JSON copies of parsed YAML go to ``.dir`` (a temporary directory); ``.calls``: the YAML parses."""
    import dbops.core.config as config_module

    cache = SimpleNamespace(dir=tmp_path / "cache", calls=[])
    monkeypatch.setattr(config_module, "YAML_CACHE_DIR", cache.dir)
    real = config_module.parse_yaml
    monkeypatch.setattr(config_module, "parse_yaml", lambda text, path: cache.calls.append(text) or real(text, path))
    return cache


def test_config_yaml_is_parsed_once_then_read_from_its_json_copy(yaml_cache):
    first = parse_config(GOOD, PATH)
    assert first == parse_config(GOOD, PATH) and len(yaml_cache.calls) == 1
    assert len(list(yaml_cache.dir.glob("*.json"))) == 1
    changed = GOOD.replace("bloat_pct: 30", "bloat_pct: 40")
    assert parse_config(changed, PATH).targets["appdb"].maintenance.bloat_pct == 40
    assert len(yaml_cache.calls) == 2, "a changed config is parsed again"


def test_a_cached_config_is_still_validated(yaml_cache):
    bad = GOOD.replace("bloat_pct: 30", "bloat_pct: lots")
    for _ in range(2):
        assert "key 'maintenance.bloat_pct': expected a number" in error_for(bad)


def test_a_corrupt_copy_is_parsed_again_and_replaced(yaml_cache):
    parse_config(GOOD, PATH)
    (copy,) = yaml_cache.dir.glob("*.json")
    copy.write_text('{"truncat')
    assert parse_config(GOOD, PATH).targets["appdb"].conn_id == "pg_appdb"
    assert copy.read_text().startswith('{"ops_conn_id"')


def test_yaml_json_cannot_carry_is_not_copied(yaml_cache):
    from dbops.core.config import _yaml_data

    data = _yaml_data("since: 2026-01-01\n1: one\n", PATH)
    assert str(data["since"]) == "2026-01-01" and data[1] == "one"
    assert not yaml_cache.dir.exists() or not list(yaml_cache.dir.glob("*.json"))


def test_an_unwritable_cache_directory_costs_only_time(tmp_path, monkeypatch):
    import dbops.core.config as config_module

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(config_module, "YAML_CACHE_DIR", blocker / "cache")  # mkdir fails: a file is in the way
    assert parse_config(GOOD, PATH).targets["appdb"].conn_id == "pg_appdb"


GROUPED = GOOD + """    alerts: {group: fleet}
  chatdb:
    conn_id: pg_chatdb
    alerts: {group: fleet}
  lonedb:
    conn_id: pg_lonedb
    alerts: {}
"""


def test_alert_groups_list_their_targets_and_leave_the_ungrouped_alone():
    from dbops.core.config import alert_groups

    config = parse_config(GROUPED, PATH)
    assert alert_groups(config) == {"fleet": ["appdb", "chatdb"]}
    assert config.targets["lonedb"].alerts.group is None


@pytest.mark.parametrize(("replace", "by", "expected"), [
    ("alerts: {group: fleet}\n  chatdb", "alerts: {group: Fleet-1}\n  chatdb",
     "target 'appdb': key 'alerts.group': alert group 'Fleet-1': group names are lowercase"),
    ("alerts: {group: fleet}\n  lonedb", "alerts: {group: lonedb}\n  lonedb",
     "target 'chatdb': key 'alerts.group': alert group 'lonedb' has the name of a target"),
    ("alerts: {group: fleet}\n  lonedb", "alerts: {group: fleet, schedule: '*/2 * * * *'}\n  lonedb",
     "target 'appdb': key 'alerts.group': the targets of alert group 'fleet' have different alerts.schedule "
     "(appdb: */5 * * * *, chatdb: */2 * * * *)"),
])
def test_bad_alert_group_names_the_targets(replace, by, expected):
    assert replace in GROUPED
    assert expected in error_for(GROUPED.replace(replace, by))
