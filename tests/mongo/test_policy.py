"""Config of MongoDB targets: ``engine``, the ``mongo`` section; every bad input one clear error naming
file, target and key."""

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
  chat:
    engine: mongodb
    conn_id: mongo_chat
    backup: {storage: local}
    mongo:
      retention:
        policies:
          - {collection: chat_conversations, time_field: last_message_at, retention: 180d}
          - {collection: analytics_events, time_field: timestamp, retention: 30d, filter: {kind: page_view}}
      maintenance: {weekly: "0 1 * * 0", compact_free_pct: 25}
"""


def error_for(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, PATH)
    return str(info.value)


def test_a_mongodb_target_is_typed_and_postgres_is_the_default_engine():
    chat = parse_config(GOOD, PATH).targets["chat"]
    assert chat.engine == "mongodb"
    assert chat.mongo.retention.policies[0].retention == 180 * 86400.0
    assert chat.mongo.retention.policies[1].filter == {"kind": "page_view"}
    assert chat.mongo.maintenance.compact_free_pct == 25.0
    repo = load_config(DEFAULT_CONFIG_PATH)
    assert repo.targets["appdb"].engine == "postgres" and repo.targets["chatdb"].engine == "mongodb"


@pytest.mark.parametrize(("change", "message"), [
    (("engine: mongodb", "engine: mysql"),
     "target 'chat': key 'engine': unknown engine 'mysql' (expected one of: postgres, mongodb)"),
    (("retention: 30d, filter: {kind: page_view}", "retention: 30d, filter: {$where: '1'}"),
     "target 'chat': key 'mongo.retention.policies[1].filter': '$where': filter keys are field names"),
    (("time_field: timestamp", "time_field: $expr"),
     "key 'mongo.retention.policies[1].time_field': must name a field (not an operator)"),
    (("retention: 180d", "retention: 0s"), "key 'mongo.retention.policies[0].retention': must be greater than 0"),
    (("retention: 180d}", "retention: 180d, method: truncate}"),
     "key 'mongo.retention.policies[0].method': unknown method 'truncate' (expected one of: delete, ttl)"),
    (("retention: 30d, filter", "retention: 30d, method: ttl, filter"),
     "key 'mongo.retention.policies[1].filter': a ttl policy expires whole collections by time"),
    (("compact_free_pct: 25", "compact_free_pct: 120"),
     "key 'mongo.maintenance.compact_free_pct': must be between 0 and 100"),
    (("backup: {storage: local}", "backup: {storage: local}\n    maintenance: {weekly: '0 1 * * 0'}"),
     "key 'maintenance': is for PostgreSQL targets; a MongoDB target's goes under mongo.maintenance"),
    (("backup: {storage: local}", "backup: {storage: local, tenant_tables: [x]}"),
     "key 'backup.tenant_tables': tenant exports are for PostgreSQL targets only"),
    (("backup: {storage: local}", "backup: {storage: nowhere}"), "key 'backup.storage': unknown storage 'nowhere'"),
    (("backup: {storage: local}", "backup: {storage: local, verify_conn_id: ' '}"),
     "key 'backup.verify_conn_id': must name an Airflow connection"),
    (("    engine: mongodb\n", ""), "target 'chat': key 'mongo': only for targets with engine: mongodb"),
    (("compact_free_pct: 25}", "compact_free_pct: 25, notify: [pager]}"),
     "key 'mongo.maintenance.notify[0]': unknown notifier 'pager'"),
])
def test_bad_mongodb_config_names_file_target_and_key(change, message):
    text = GOOD.replace(*change)
    assert text != GOOD
    error = error_for(text)
    assert error.startswith(f"{PATH}: ")
    assert message in error
