"""The ``pitr`` section of a target: typed, and every mistake named with file, target and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dbops.core.config import parse_config
from dbops.core.schema import ConfigError

PATH = Path("/etc/dbops/dbops.yaml")
BASE = """
ops_conn_id: dbops_state
storage: {local: {url: var/backups}}
targets:
  appdb:
    conn_id: pg_appdb
    pitr: {PITR}
"""


def parse(pitr: str):
    return parse_config(BASE.replace("{PITR}", pitr), PATH)


def test_defaults_and_units():
    policy = parse("{storage: local, max_retained_wal: 512MB, full_schedule: '0 3 * * 6'}").targets["appdb"].pitr
    assert (policy.max_retained_wal, policy.full_schedule, policy.full_retention) == (512 * 2**20, "0 3 * * 6", 2)
    assert policy.wal_ship_schedule == "*/5 * * * *" and policy.scratch_ports == [55700, 55799]


@pytest.mark.parametrize(("pitr", "expected"), [
    ("{storage: tape}", "key 'pitr.storage': unknown storage 'tape'"),
    ("{storage: local, full_retention: 0}", "key 'pitr.full_retention': must keep at least 1"),
    ("{storage: local, max_retained_wal: lots}", "key 'pitr.max_retained_wal': expected a size"),
    ("{storage: local, full_schedule: 'every sunday'}", "key 'pitr.full_schedule': bad cron expression"),
    ("{storage: local, scratch_ports: [80, 90]}", "key 'pitr.scratch_ports': expected [first, last]"),
    ("{storage: local, scratch_ports: [56000]}", "key 'pitr.scratch_ports'"),
    ("{storage: local, compression_level: 40}", "key 'pitr.compression_level'"),
    ("{storage: local, notify: [pager]}", "key 'pitr.notify[0]': unknown notifier 'pager'"),
    ("{storage: local, slot: x}", "key 'pitr.slot': unknown key"),
    ("{schedule: '@daily'}", "key 'pitr.storage': required key is missing"),
])
def test_mistakes_name_file_target_and_key(pitr, expected):
    with pytest.raises(ConfigError) as info:
        parse(pitr)
    assert str(info.value).startswith(f"{PATH}: target 'appdb': ")
    assert expected in str(info.value)


def test_a_target_name_too_long_for_its_replication_slots_is_refused():
    name = "t" * 50  # a valid target name (63 at most), but dbops_wal_<name>_recv would be 65 bytes
    with pytest.raises(ConfigError) as info:
        parse_config(BASE.replace("appdb", name).replace("{PITR}", "{storage: local}"), PATH)
    assert str(info.value).startswith(f"{PATH}: target '{name}': key 'pitr': the target name is too long")
    assert "at most 48 characters" in str(info.value)


def test_encrypted_logical_backups_require_encrypted_physical_ones():
    text = BASE.replace("    pitr: {PITR}", "    backup: {storage: local, encryption_conn_id: backup_key}\n    pitr: {PITR}")
    with pytest.raises(ConfigError) as info:
        parse_config(text.replace("{PITR}", "{storage: local}"), PATH)
    assert f"{PATH}: target 'appdb': key 'pitr.encryption_conn_id': backup.encryption_conn_id is set" in str(info.value)
    parsed = parse_config(text.replace("{PITR}", "{storage: local, encryption_conn_id: backup_key}"), PATH)
    assert parsed.targets["appdb"].pitr.encryption_conn_id == "backup_key"
