"""Load and validate ``include/config/dbops.yaml`` into typed, frozen objects.

Validation happens at DAG parse time and reads only the local file: no database, no network. Any
problem raises one :class:`ConfigError` naming the file, the target and the key, so the DAG file
fails to import as a whole and no half-built DAGs appear.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "include" / "config" / "dbops.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h|d)?\s*$")
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_DURATION_UNITS = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
_CRON_PRESETS = {"@once", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly", "@annually"}


class ConfigError(ValueError):
    """The configuration file is invalid; the message names file, target and key."""


# Markers for field types that are validated and converted on load; the values are plain str, int and
# float, so they serialize anywhere (Airflow's DAG serialization rejects subclasses of builtins).
class Cron(str):
    """A cron expression or an Airflow preset such as ``@daily`` (loaded as ``str``)."""


class ByteSize(int):
    """A size in bytes, written as ``10MB``, ``1.5GB`` or a plain integer (loaded as ``int``)."""


class Seconds(float):
    """A duration in seconds, written as ``500ms``, ``5s``, ``2min``, ``1h``, ``7d`` (loaded as ``float``)."""


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
class Retention:
    daily: int = 7
    weekly: int = 4
    monthly: int = 12


@dataclass(frozen=True)
class BackupPolicy:
    storage: str
    schedule: Cron | None = "0 2 * * *"
    retention: Retention = field(default_factory=Retention)
    jobs: int = 2
    format: str = "custom"
    dump_jobs: int = 1
    compression_level: int = 2
    lock_wait_timeout: Seconds = 300.0
    verify_conn_id: str | None = None
    encryption_conn_id: str | None = None
    notify: list[str] = field(default_factory=lambda: ["log"])
    tenant_tables: list[str] = field(default_factory=list)
    # Tenant exports hold personal data: the retention task deletes them once older than this.
    tenant_retention: Seconds = 30 * 86400.0


@dataclass(frozen=True)
class MaintenancePolicy:
    """When and what pg_maintenance_weekly / pg_maintenance_daily do on a target (see README)."""

    weekly: Cron | None = "0 1 * * 0"
    daily: Cron | None = "0 3 * * *"
    # Rewrite (VACUUM FULL / REINDEX CONCURRENTLY) only when the estimated bloat is above both.
    bloat_pct: float = 30.0
    min_bytes: ByteSize = 10 * 1024**2
    # Tables above this (heap + TOAST + indexes) are never locked by VACUUM FULL: reported instead.
    size_cap: ByteSize = 10 * 1024**3
    # Free disk (where measurable) must still hold this share of the volume after the rewrite.
    disk_reserve_pct: float = 10.0
    lock_timeout: Seconds = 5.0
    # The cap; each statement gets 60 s + its object's size / rewrite_rate, at most this.
    statement_timeout: Seconds = 3600.0
    rewrite_rate: ByteSize = 8 * 1024**2  # bytes per second assumed for the slowest acceptable rewrite
    # A lock timeout is retried this many times (Airflow retries, exponential backoff), then skipped.
    lock_retries: int = 3
    lock_retry_delay: Seconds = 60.0
    # VACUUM (ANALYZE) when dead tuples exceed both; ANALYZE when modifications since analyze exceed both.
    vacuum_dead_pct: float = 10.0
    vacuum_min_dead: int = 1000
    analyze_mod_pct: float = 10.0
    analyze_min_mod: int = 1000
    # Statistics older than this are refreshed when the table changed at all since.
    stats_max_age: Seconds = 7 * 86400.0
    # Rewrites wait while a transaction is this old or a replica lags this much (they hold back cleanup).
    long_transaction: Seconds = 900.0
    max_replication_lag: Seconds = 300.0
    # An index with fewer scans than this since the statistics reset is in the unused-index report.
    unused_index_scans: int = 1
    notify: list[str] = field(default_factory=lambda: ["log"])  # channels told when a maintenance task fails


@dataclass(frozen=True)
class AlertPolicy:
    """``db_alerts__<target>``: rule packs, where notifications go, and the evaluation's limits."""

    rules: list[str] = field(default_factory=lambda: ["postgres_default"])
    notify: list[str] = field(default_factory=lambda: ["log"])
    schedule: Cron | None = "*/5 * * * *"
    thresholds: dict[str, float] = field(default_factory=dict)  # rule name -> threshold for this target
    statement_timeout: Seconds = 5.0  # per rule query
    lock_timeout: Seconds = 1.0
    connect_timeout: Seconds = 10.0
    sample_retention: Seconds = 30 * 86400.0  # metric samples older than this are deleted
    undelivered_alarm: Seconds = 3600.0  # the DAG fails while a notification stays undelivered this long


@dataclass(frozen=True)
class TargetConfig:
    conn_id: str
    backup: BackupPolicy | None = None
    maintenance: MaintenancePolicy | None = None
    alerts: AlertPolicy | None = None


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
    """Where to look first for pg_dump, pg_restore and psql (then PATH, then the embedded wheel)."""

    bin_dir: str | None = None


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


class _Invalid(Exception):
    """Raised inside the converter with the dotted key that is wrong."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _describe(value: Any) -> str:
    kind = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)
    return kind if isinstance(value, (dict, list)) or value is None else f"{kind} {value!r}"


def _convert(value: Any, hint: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _convert(value, options[0], key)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise _Invalid(key, f"expected a list, got {_describe(value)}")
        return [_convert(item, typing.get_args(hint)[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid(key, f"expected a mapping, got {_describe(value)}")
        return {str(k): _convert(v, typing.get_args(hint)[1], _join(key, str(k))) for k, v in value.items()}
    return _scalar(value, hint, key)


def _scalar(value: Any, hint: type, key: str) -> Any:
    if hint is Cron:
        return _cron(value, key)
    if hint is ByteSize:
        number, unit = _with_unit(value, _SIZE, key, "a size such as 10MB")
        return int(number * _SIZE_UNITS[(unit or "B").upper()])
    if hint is Seconds:
        number, unit = _with_unit(value, _DURATION, key, "a duration such as 5s")
        return float(number * _DURATION_UNITS[unit or "s"])
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (hint in (int, float) and isinstance(value, bool)) or not isinstance(value, hint):
        raise _Invalid(key, f"expected {_TYPE_NAMES[hint]}, got {_describe(value)}")
    return value


def _with_unit(value: Any, pattern: re.Pattern, key: str, example: str) -> tuple[float, str | None]:
    """Split ``10MB`` / ``5s`` into number and unit; a bare number has no unit."""
    plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    match = pattern.match(str(value)) if plain else None
    if not match:
        raise _Invalid(key, f"expected {example}, got {_describe(value)}")
    return float(match.group(1)), match.group(2)


def _cron(value: Any, key: str) -> Cron:
    from croniter import croniter

    if not isinstance(value, str):
        raise _Invalid(key, f"expected a cron expression, got {_describe(value)}")
    if value not in _CRON_PRESETS and not croniter.is_valid(value):
        raise _Invalid(key, f"bad cron expression {value!r} (five fields: minute hour day month weekday)")
    return value


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise _Invalid(prefix, f"expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise _Invalid(_join(prefix, str(unknown[0])), f"unknown key (expected one of: {', '.join(fields)})")
    kwargs = {}
    for name, fld in fields.items():
        key = _join(prefix, name)
        if name not in data:
            if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                raise _Invalid(key, "required key is missing")
            continue
        kwargs[name] = _convert(data[name], hints[name], key)
    return cls(**kwargs)


def _check_references(config: DbopsConfig) -> None:
    if not config.ops_conn_id:
        raise _Invalid("ops_conn_id", "must name an Airflow connection")
    for name, store in config.storage.items():
        if not store.url:
            raise _Invalid(f"storage.{name}.url", "must not be empty")
    for name, target in config.targets.items():
        if not _NAME.match(name):
            raise _Invalid(f"targets.{name}", "target names are lowercase letters, digits and _ (used in DAG ids)")
        if not target.conn_id:
            raise _Invalid(f"targets.{name}.conn_id", "must name an Airflow connection")
        if target.backup and target.backup.storage not in config.storage:
            raise _Invalid(f"targets.{name}.backup.storage",
                           f"unknown storage {target.backup.storage!r} (defined: {', '.join(config.storage) or 'none'})")
        for policy in ("backup", "alerts", "maintenance"):
            notify = getattr(getattr(target, policy), "notify", [])
            for i, channel in enumerate(notify):
                _check_channel(config.notifications, channel, f"targets.{name}.{policy}.notify[{i}]")
        if target.backup and target.backup.format not in DUMP_FORMATS:
            raise _Invalid(f"targets.{name}.backup.format",
                           f"unknown format {target.backup.format!r} (expected one of: {', '.join(DUMP_FORMATS)})")
        if target.backup and target.backup.tenant_retention <= 0:
            raise _Invalid(f"targets.{name}.backup.tenant_retention", "must be greater than 0 (e.g. 30d)")
        if target.maintenance:
            _check_maintenance(target.maintenance, f"targets.{name}.maintenance")


def _check_maintenance(policy: MaintenancePolicy, key: str) -> None:
    for pct in ("bloat_pct", "disk_reserve_pct", "vacuum_dead_pct", "analyze_mod_pct"):
        if not 0 <= getattr(policy, pct) < 100 or (pct == "bloat_pct" and policy.bloat_pct == 0):
            raise _Invalid(f"{key}.{pct}", "must be between 0 and 100")
    for positive in ("lock_timeout", "statement_timeout", "rewrite_rate", "lock_retry_delay"):
        if getattr(policy, positive) <= 0:
            raise _Invalid(f"{key}.{positive}", "must be greater than 0")
    if policy.lock_timeout >= policy.statement_timeout:
        raise _Invalid(f"{key}.lock_timeout", "must be shorter than statement_timeout")
    for count in ("lock_retries", "vacuum_min_dead", "analyze_min_mod", "unused_index_scans"):
        if getattr(policy, count) < 0:
            raise _Invalid(f"{key}.{count}", "must not be negative")


CHANNELS = ("log", "email", "slack", "pg_notify")
DUMP_FORMATS = ("custom", "directory")


def _check_channel(notifications: NotificationsConfig, channel: str, key: str) -> None:
    if channel not in CHANNELS:
        raise _Invalid(key, f"unknown notifier {channel!r} (expected one of: {', '.join(CHANNELS)})")
    if channel in ("email", "slack") and getattr(notifications, channel) is None:
        raise _Invalid(key, f"notifier {channel!r} needs a notifications.{channel} section")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys instead of silently keeping the last one."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _message(path: Path, key: str, message: str) -> str:
    parts = key.split(".")
    if parts[0] == "targets" and len(parts) > 1:
        target = parts[1].split("[")[0]
        rest = ".".join(parts[2:])
        where = f"target '{target}'" + (f": key '{rest}'" if rest else "")
    else:
        where = f"key '{key}'" if key else "top level"
    return f"{path}: {where}: {message}"


def build_section(cls: type, data: Any, path: Path, where: str) -> Any:
    """Validate ``data`` into the dataclass ``cls``; errors name ``path`` and ``where`` (e.g. "rule 'x'")."""
    try:
        return _build(cls, data, "")
    except _Invalid as err:
        key = f": key '{err.key}'" if err.key else ""
        raise ConfigError(f"{path}: {where}{key}: {err.message}") from None


def load_yaml(path: Path) -> Any:
    """YAML from ``path`` with duplicate keys rejected; a syntax error names the file and line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    return _parse_yaml(text, path)


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}:{line}: invalid YAML: {problem}") from None


def parse_config(text: str, path: Path) -> DbopsConfig:
    """Validate the YAML ``text`` (read from ``path``, named in errors)."""
    data = _parse_yaml(text, path)
    try:
        config = _build(DbopsConfig, data, "")
        _check_references(config)
    except _Invalid as err:
        raise ConfigError(_message(path, err.key, err.message)) from None
    return dataclasses.replace(config, path=path)


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
