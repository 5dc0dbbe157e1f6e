"""Typed validation of YAML sections into frozen dataclasses, with errors naming the key.

The value types (:class:`Cron`, :class:`ByteSize`, :class:`Seconds`) are converted on load; a bad value
raises :class:`Invalid` with the dotted key, which the loader turns into a :class:`ConfigError` naming
the file. Each capability's ``policy`` module declares its section with these types.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

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

class Invalid(Exception):
    """Raised inside the converter with the dotted key that is wrong."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


def join(prefix: str, key: str) -> str:
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
        return build(hint, value, key)
    if origin is list:
        if not isinstance(value, list):
            raise Invalid(key, f"expected a list, got {_describe(value)}")
        return [_convert(item, typing.get_args(hint)[0], f"{key}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise Invalid(key, f"expected a mapping, got {_describe(value)}")
        return {str(k): _convert(v, typing.get_args(hint)[1], join(key, str(k))) for k, v in value.items()}
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
        raise Invalid(key, f"expected {_TYPE_NAMES[hint]}, got {_describe(value)}")
    return value


def _with_unit(value: Any, pattern: re.Pattern, key: str, example: str) -> tuple[float, str | None]:
    """Split ``10MB`` / ``5s`` into number and unit; a bare number has no unit."""
    plain = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    match = pattern.match(str(value)) if plain else None
    if not match:
        raise Invalid(key, f"expected {example}, got {_describe(value)}")
    return float(match.group(1)), match.group(2)


def _cron(value: Any, key: str) -> Cron:
    if not isinstance(value, str):
        raise Invalid(key, f"expected a cron expression, got {_describe(value)}")
    if value not in _CRON_PRESETS and not _valid_cron(value):
        raise Invalid(key, f"bad cron expression {value!r} (five fields: minute hour day month weekday)")
    return value


@functools.lru_cache(maxsize=256)
def _valid_cron(expression: str) -> bool:
    """croniter's check, once per expression: a fleet repeats a few schedules many times."""
    from croniter import croniter

    return croniter.is_valid(expression)


@functools.lru_cache(maxsize=None)
def _fields(cls: type) -> tuple[dict[str, Any], dict[str, dataclasses.Field]]:
    """Type hints and fields of the dataclass ``cls``, resolved once per class (not once per target)."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls) if f.name != "path"}


def build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise Invalid(prefix, f"expected a mapping, got {_describe(data)}")
    hints, fields = _fields(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise Invalid(join(prefix, str(unknown[0])), f"unknown key (expected one of: {', '.join(fields)})")
    kwargs = {}
    for name, fld in fields.items():
        key = join(prefix, name)
        if name not in data:
            if fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING:
                raise Invalid(key, "required key is missing")
            continue
        kwargs[name] = _convert(data[name], hints[name], key)
    return cls(**kwargs)

class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader (libyaml's where built in: about 10x faster) that rejects duplicate keys instead of silently keeping
    the last one."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

def build_section(cls: type, data: Any, path: Path, where: str) -> Any:
    """Validate ``data`` into the dataclass ``cls``; errors name ``path`` and ``where`` (e.g. "rule 'x'")."""
    try:
        return build(cls, data, "")
    except Invalid as err:
        key = f": key '{err.key}'" if err.key else ""
        raise ConfigError(f"{path}: {where}{key}: {err.message}") from None


def load_yaml(path: Path) -> Any:
    """YAML from ``path`` with duplicate keys rejected; a syntax error names the file and line."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    return parse_yaml(text, path)


def parse_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}:{line}: invalid YAML: {problem}") from None
