"""Alert rules: reviewed YAML packs in include/config/rules/, each rule running a named SQL query.

A rule compares the value its query returns (or the ``value`` column of each row, the other columns
being labels: one alert per row) with a threshold, using one operator of a fixed set. A rule's query
runs on the target (``database: target``) or on the ops database (``database: ops``, with the
target's name as the ``%(target)s`` parameter). ``requires_extension`` skips a rule where the target
lacks the extension; ``requires_policy`` skips it for targets without that policy in dbops.yaml.
Every problem is a :class:`ConfigError` naming the pack file and the rule.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from pathlib import Path

from dbops.config import PROJECT_ROOT, ConfigError, Seconds, build_section, load_yaml

RULES_DIR = PROJECT_ROOT / "include" / "config" / "rules"
QUERIES_DIR = PROJECT_ROOT / "include" / "sql" / "queries"
OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
             "!=": operator.ne}
SEVERITIES = ("info", "warning", "critical")
DATABASES = ("target", "ops")
POLICIES = ("backup", "maintenance")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    query: str  # a file in include/sql/queries/, without .sql
    op: str
    threshold: float
    summary: str
    runbook: str
    for_: Seconds = 0.0  # written `for` in YAML
    repeat: Seconds = 4 * 3600.0
    labels: dict[str, str] = field(default_factory=dict)
    database: str = "target"
    requires_extension: str | None = None
    requires_policy: str | None = None

    def breached(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)

    def sql(self, queries_dir: Path = QUERIES_DIR) -> str:
        return (queries_dir / f"{self.query}.sql").read_text()

    def render(self, value: float, labels: dict[str, str]) -> str:
        """The summary with ``{value}`` and ``{<label>}`` filled in (unknown names are left as written)."""
        fields = {**labels, "value": f"{value:g}", "threshold": f"{self.threshold:g}"}
        return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), self.summary)


def load_pack(name: str, rules_dir: Path = RULES_DIR, queries_dir: Path = QUERIES_DIR) -> list[Rule]:
    """The rules of pack ``name`` (``<rules_dir>/<name>.yaml``), validated."""
    path = rules_dir / f"{name}.yaml"
    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or set(data) != {"rules"}:
        raise ConfigError(f"{path}: expected a mapping with one key, rules: a list of rules")
    rules, seen = [], set()
    for i, raw in enumerate(data["rules"]):
        where = f"rule {raw.get('name', f'#{i + 1}')!r}" if isinstance(raw, dict) else f"rule #{i + 1}"
        if isinstance(raw, dict) and "for" in raw:
            raw = {("for_" if k == "for" else k): v for k, v in raw.items()}
        rule = build_section(Rule, raw, path, where)
        problem = _problem(rule, seen, queries_dir)
        if problem:
            raise ConfigError(f"{path}: {where}: {problem}")
        seen.add(rule.name)
        rules.append(rule)
    return rules


def _problem(rule: Rule, seen: set[str], queries_dir: Path) -> str | None:
    if rule.name in seen:
        return "duplicate rule name"
    if rule.op not in OPERATORS:
        return f"unknown operator {rule.op!r} (expected one of: {' '.join(OPERATORS)})"
    if rule.severity not in SEVERITIES:
        return f"unknown severity {rule.severity!r} (expected one of: {', '.join(SEVERITIES)})"
    if rule.database not in DATABASES:
        return f"unknown database {rule.database!r} (expected one of: {', '.join(DATABASES)})"
    if rule.requires_policy is not None and rule.requires_policy not in POLICIES:
        return f"unknown requires_policy {rule.requires_policy!r} (expected one of: {', '.join(POLICIES)})"
    if not (queries_dir / f"{rule.query}.sql").is_file():
        return f"query {rule.query!r} not found: no {queries_dir / (rule.query + '.sql')}"
    if rule.for_ < 0 or rule.repeat <= 0:
        return "for must be >= 0 and repeat > 0"
    return None
