"""Load and validate ``include/config/dbops.yaml`` into typed, frozen objects.

Validation happens at DAG parse time and reads only the local file: no database, no network. Any
problem raises one :class:`ConfigError` naming the file, the target and the key, so the DAG file
fails to import as a whole and no half-built DAGs appear.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbops.alerting.policy import AlertPolicy
from dbops.backup.pitr_policy import PitrPolicy, check_pitr
from dbops.backup.policy import BackupPolicy, check_backup
from dbops.core.schema import ConfigError, Cron, Invalid, build, parse_yaml
from dbops.lifecycle.anonymize_policy import AnonymizePolicy, check_anonymize
from dbops.lifecycle.policy import LifecycleSection, check_lifecycle
from dbops.maintenance.policy import MaintenancePolicy, check_maintenance
from dbops.mongo.policy import MongoPolicy, check_engine
from dbops.partitions.policy import PartitionsPolicy, check_partitions

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "include" / "config" / "dbops.yaml"
YAML_CACHE_DIR = PROJECT_ROOT / "var" / "cache" / "config"  # JSON copies of parsed config YAML, by content hash
YAML_CACHE_KEEP = 8
QUERIES_DIR = PROJECT_ROOT / "include" / "sql" / "queries"  # named, reviewed SQL (rules, maintenance scans)
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class StorageConfig:
    """Where backups go: a local directory (path or ``file://``) or ``s3://bucket/prefix``."""

    url: str
    aws_conn_id: str = "aws_default"
    sse: str | None = None
    storage_class: str | None = None

    @property
    def scheme(self) -> str:
        return "s3" if self.url.startswith("s3://") else "file"

    @property
    def local_path(self) -> Path:
        path = Path(self.url.removeprefix("file://"))
        return path if path.is_absolute() else PROJECT_ROOT / path

@dataclass(frozen=True)
class TargetConfig:
    conn_id: str
    engine: str = "postgres"  # or mongodb
    backup: BackupPolicy | None = None
    maintenance: MaintenancePolicy | None = None
    alerts: AlertPolicy | None = None
    anonymize: AnonymizePolicy | None = None
    partitions: PartitionsPolicy | None = None
    lifecycle: LifecycleSection | None = None
    pitr: PitrPolicy | None = None
    mongo: MongoPolicy | None = None


@dataclass(frozen=True)
class EmailConfig:
    to: list[str]
    smtp_conn_id: str = "smtp_default"
    from_email: str | None = None


@dataclass(frozen=True)
class SlackConfig:
    slack_webhook_conn_id: str = "slack_default"


@dataclass(frozen=True)
class NotificationsConfig:
    """How the notifier channels named in ``notify`` lists reach people (``log`` needs nothing)."""

    email: EmailConfig | None = None
    slack: SlackConfig | None = None
    pg_notify_channel: str = "dbops_alerts"


@dataclass(frozen=True)
class ToolsConfig:
    """Where to look first for pg_dump, pg_restore and psql (then PATH, then the embedded wheel).

    ``exclusive``: look only in ``bin_dir`` (pin the client tools a deployment was tested with).
    """

    bin_dir: str | None = None
    exclusive: bool = False


@dataclass(frozen=True)
class PreflightConfig:
    schedule: Cron | None = "0 6 * * *"


@dataclass(frozen=True)
class DbopsConfig:
    ops_conn_id: str
    storage: dict[str, StorageConfig]
    targets: dict[str, TargetConfig]
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    notifications: NotificationsConfig = field(default_factory=NotificationsConfig)
    staging_dir: str = "var/staging"
    preflight: PreflightConfig = field(default_factory=PreflightConfig)
    path: Path = field(default=DEFAULT_CONFIG_PATH, compare=False)

    @property
    def staging_path(self) -> Path:
        """Local scratch space for dumps and downloads (relative paths are below the project root)."""
        path = Path(self.staging_dir)
        return path if path.is_absolute() else PROJECT_ROOT / path

    def pools(self) -> dict[str, dict[str, Any]]:
        """One single-slot Airflow pool per target: its heavy tasks (dump, restore, export) never overlap.

        The same mapping is committed as include/config/pools.json for ``airflow pools import``.
        """
        return {pool_name(t): {"slots": 1, "description": f"dbops: heavy work on target {t}, one at a time",
                               "include_deferred": False} for t in self.targets}

    def store_for(self, target: str) -> StorageConfig | None:
        """The storage a target's backups go to, or None when it has no backup policy."""
        backup = self.targets[target].backup
        return self.storage[backup.storage] if backup else None


def pool_name(target: str) -> str:
    """The Airflow pool that serializes a target's heavy tasks."""
    return f"dbops__{target}"


def _check_references(config: DbopsConfig) -> None:
    """What the types cannot say; each policy section is checked by its capability's ``check_*``."""
    if not config.ops_conn_id:
        raise Invalid("ops_conn_id", "must name an Airflow connection")
    for name, store in config.storage.items():
        if not store.url:
            raise Invalid(f"storage.{name}.url", "must not be empty")
    for name, target in config.targets.items():
        key = f"targets.{name}"
        if not _NAME.match(name):
            raise Invalid(key, "target names are lowercase letters, digits and _ (used in DAG ids)")
        if not target.conn_id:
            raise Invalid(f"{key}.conn_id", "must name an Airflow connection")
        check_engine(target, key)
        for policy in [*(f.name for f in dataclasses.fields(target)), "mongo.retention", "mongo.maintenance"]:
            notify = getattr(_section(target, policy), "notify", [])  # every section with a notify list
            for i, channel in enumerate(notify):
                _check_channel(config.notifications, channel, f"{key}.{policy}.notify[{i}]")
        if target.backup:
            check_backup(target.backup, f"{key}.backup", config.storage)
        if target.maintenance:
            check_maintenance(target.maintenance, f"{key}.maintenance")
        if target.anonymize:
            check_anonymize(target.anonymize, f"{key}.anonymize")
        if target.partitions:
            check_partitions(target.partitions, f"{key}.partitions", target.backup is not None)
        if target.lifecycle:
            check_lifecycle(target.lifecycle, f"{key}.lifecycle", has_store=target.backup is not None)
        if target.pitr:
            check_pitr(target.pitr, f"{key}.pitr", config.storage, name,
                       backups_encrypted=bool(target.backup and target.backup.encryption_conn_id))
    _check_alert_groups(config)


def alert_groups(config: DbopsConfig) -> dict[str, list[str]]:
    """Alert group name -> its targets (``alerts.group``), in config order; ungrouped targets are in none."""
    groups: dict[str, list[str]] = {}
    for name, target in config.targets.items():
        if target.alerts and target.alerts.group is not None:
            groups.setdefault(target.alerts.group, []).append(name)
    return groups


def _check_alert_groups(config: DbopsConfig) -> None:
    """A group is named like a target, but never as one (DAG ids), and its targets share one schedule."""
    for group, members in alert_groups(config).items():
        key = f"targets.{members[0]}.alerts.group"
        if not _NAME.match(group):
            raise Invalid(key, f"alert group {group!r}: group names are lowercase letters, digits and _ "
                               "(used in DAG ids)")
        if group in config.targets:
            raise Invalid(key, f"alert group {group!r} has the name of a target: name the group differently")
        schedules = {config.targets[m].alerts.schedule for m in members}
        if len(schedules) > 1:
            by = ", ".join(f"{m}: {config.targets[m].alerts.schedule or 'none'}" for m in members)
            raise Invalid(key, f"the targets of alert group {group!r} have different alerts.schedule ({by}): "
                               "one DAG evaluates them, give them one schedule or separate groups")


def _section(target: TargetConfig, path: str) -> Any:
    """A target's section by dotted path (``mongo.retention``), or None where a part is not set."""
    section: Any = target
    for name in path.split("."):
        section = getattr(section, name, None)
    return section


CHANNELS = ("log", "email", "slack", "pg_notify")


def _check_channel(notifications: NotificationsConfig, channel: str, key: str) -> None:
    if channel not in CHANNELS:
        raise Invalid(key, f"unknown notifier {channel!r} (expected one of: {', '.join(CHANNELS)})")
    if channel in ("email", "slack") and getattr(notifications, channel) is None:
        raise Invalid(key, f"notifier {channel!r} needs a notifications.{channel} section")


def _message(path: Path, key: str, message: str) -> str:
    parts = key.split(".")
    if parts[0] == "targets" and len(parts) > 1:
        target = parts[1].split("[")[0]
        rest = ".".join(parts[2:])
        where = f"target '{target}'" + (f": key '{rest}'" if rest else "")
    else:
        where = f"key '{key}'" if key else "top level"
    return f"{path}: {where}: {message}"


def parse_config(text: str, path: Path) -> DbopsConfig:
    """Validate the YAML ``text`` (read from ``path``, named in errors)."""
    data = _yaml_data(text, path)
    try:
        config = build(DbopsConfig, data, "")
        _check_references(config)
    except Invalid as err:
        raise ConfigError(_message(path, err.key, err.message)) from None
    return dataclasses.replace(config, path=path)


def _yaml_data(text: str, path: Path) -> Any:
    """The YAML ``text`` parsed; every DAG file's process loads the config, and a fleet's YAML takes about a second
    to parse, so a JSON copy keyed by the text's hash is kept in ``YAML_CACHE_DIR`` and read instead (the data is
    still validated every time). Data JSON cannot carry unchanged (dates, non-string keys) is not copied; an
    unwritable directory only costs the time."""
    copy = YAML_CACHE_DIR / f"{hashlib.sha256(text.encode()).hexdigest()}.json"
    try:
        return json.loads(copy.read_text())
    except (OSError, ValueError):
        pass
    data = parse_yaml(text, path)
    try:
        encoded = json.dumps(data)
        if json.loads(encoded) == data:
            YAML_CACHE_DIR.mkdir(parents=True, exist_ok=True)
            partial = copy.with_suffix(f".{os.getpid()}.tmp")
            partial.write_text(encoded)
            partial.replace(copy)  # atomic: a concurrent reader sees the whole copy or none
            for old in sorted(YAML_CACHE_DIR.glob("*.json"), key=lambda p: p.stat().st_mtime)[:-YAML_CACHE_KEEP]:
                old.unlink(missing_ok=True)
    except (OSError, TypeError, ValueError):
        pass
    return data


_cache: dict[tuple[Path, float], DbopsConfig] = {}


def load_config(path: str | os.PathLike | None = None) -> DbopsConfig:
    """Load the config from ``path``, ``$DBOPS_CONFIG`` or the default; cached per file version."""
    path = Path(path or os.environ.get("DBOPS_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        stamp = (path, path.stat().st_mtime)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (set DBOPS_CONFIG or create it)") from None
    if stamp not in _cache:
        _cache.clear()
        _cache[stamp] = parse_config(path.read_text(), path)
    return _cache[stamp]
