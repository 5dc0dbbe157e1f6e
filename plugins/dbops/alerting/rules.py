"""Alert rules: reviewed YAML packs in include/config/rules/, each rule running a named SQL query.

A rule compares the value its query (or, on a MongoDB target, its ``source`` server command) returns (or the ``value`` column of each row, the other columns
being labels: one alert per row) with a threshold, using one operator of a fixed set. A rule's query
runs on the target (``database: target``) or on the ops database (``database: ops``, with the
target's name as the ``%(target)s`` parameter). ``requires_extension`` skips a rule where the target
lacks the extension; ``requires_policy`` skips it for targets without that policy in dbops.yaml.
Every problem is a :class:`ConfigError` naming the pack file and the rule.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from dbops.core.config import PROJECT_ROOT, QUERIES_DIR, DbopsConfig, TargetConfig
from dbops.core.schema import ConfigError, Seconds, build_section, load_yaml
from dbops.mongo.policy import COMMAND_SOURCES, REPLY_LISTS, CommandSource

RULES_DIR = PROJECT_ROOT / "include" / "config" / "rules"
OPERATORS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
             "!=": operator.ne}
SEVERITIES = ("info", "warning", "critical")
DATABASES = ("target", "ops")
POLICIES = tuple(f.name for f in dataclasses.fields(TargetConfig) if f.name not in ("conn_id", "alerts"))
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    op: str
    threshold: float
    summary: str
    runbook: str
    query: str = ""  # a file in include/sql/queries/, without .sql
    source: CommandSource | None = None  # MongoDB targets: a server command and the value's path in its reply
    for_: Seconds = 0.0  # written `for` in YAML
    repeat: Seconds = 4 * 3600.0
    labels: dict[str, str] = field(default_factory=dict)
    database: str = "target"
    requires_extension: str | None = None
    requires_policy: str | None = None
    counter: bool = False  # the query returns a cumulative counter: compare its increase since the last run
    queries_dir: str = str(QUERIES_DIR)  # set from the pack's ``queries`` key

    def breached(self, value: float) -> bool:
        return OPERATORS[self.op](value, self.threshold)

    @property
    def query_path(self) -> Path:
        return Path(self.queries_dir) / f"{self.query}.sql"

    def sql(self) -> str:
        return self.query_path.read_text()

    def render(self, value: float, labels: dict[str, str]) -> str:
        """The summary with ``{value}`` and ``{<label>}`` filled in (unknown names are left as written)."""
        fields = {**labels, "value": f"{value:g}", "threshold": f"{self.threshold:g}"}
        return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), self.summary)


# Built in, evaluated without a query: the target did not answer; a rule's query failed or timed out.
TARGET_DOWN = Rule(name="TargetDown", severity="critical", query="", op="==", threshold=0,
                   summary="target does not answer: {error}", repeat=3600.0,
                   runbook="Check the server and the network from the Airflow workers; alerts on the target's "
                           "own metrics are held (not resolved) until it answers again.")
RULE_FAILED = Rule(name="RuleEvaluationFailed", severity="warning", query="", op="==", threshold=1,
                   summary="rule {failed_rule} could not be evaluated: {error}", for_=600.0, repeat=12 * 3600.0,
                   runbook="Run the rule's query by hand on the target; a timeout means the query needs an index "
                           "or a higher alerts.statement_timeout.")


def rules_for(config: DbopsConfig, target: str) -> list[Rule]:
    """The rules a target's alert policy applies: its packs, its threshold overrides, its policies."""
    policy = config.targets[target].alerts
    if policy is None:
        return []
    rules = [rule for pack in policy.rules for rule in load_pack(pack)]
    by_name = {rule.name: rule for rule in rules}
    if len(by_name) < len(rules):
        twice = sorted({r.name for r in rules if sum(o.name == r.name for o in rules) > 1})
        raise ConfigError(f"{config.path}: targets.{target}.alerts.rules: rule {twice[0]!r} is in more than one pack")
    unknown = sorted(set(policy.thresholds) - set(by_name))
    if unknown:
        raise ConfigError(f"{config.path}: targets.{target}.alerts.thresholds.{unknown[0]}: no rule of that name "
                          f"in the packs {', '.join(policy.rules)}")
    mongodb = config.targets[target].engine == "mongodb"
    wrong = next((r for r in rules if r.database == "target" and bool(r.source) != mongodb), None)
    if wrong is not None:
        raise ConfigError(f"{config.path}: targets.{target}.alerts.rules: rule {wrong.name!r} is for "
                          f"{'PostgreSQL' if mongodb else 'MongoDB'} targets; this target's engine is "
                          f"{config.targets[target].engine}")
    return [replace(rule, threshold=policy.thresholds.get(rule.name, rule.threshold)) for rule in rules
            if rule.requires_policy is None or getattr(config.targets[target], rule.requires_policy) is not None]


def load_pack(name: str, rules_dir: Path = RULES_DIR) -> list[Rule]:
    """The rules of pack ``name``, validated.

    ``name`` is a built-in pack (``<rules_dir>/<name>.yaml``) or the path of a pack file (``*.yaml``,
    relative to the project root). A pack's optional ``queries`` key is its own query directory,
    relative to the pack file; the default is include/sql/queries/.
    """
    path = Path(name) if name.endswith(".yaml") else rules_dir / f"{name}.yaml"
    path = path if path.is_absolute() else PROJECT_ROOT / path
    try:
        modified = path.stat().st_mtime_ns
    except OSError:
        modified = None  # load_yaml says what is wrong
    return list(_load_pack_file(path, modified))


@functools.lru_cache(maxsize=64)
def _load_pack_file(path: Path, modified: int | None) -> tuple[Rule, ...]:
    """Parsed once per file version: a DAG file with many targets shares one parse."""
    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list) or not set(data) <= {"rules", "queries"}:
        raise ConfigError(f"{path}: expected a mapping with the keys rules (a list of rules) and optionally queries")
    queries_dir = path.parent / data["queries"] if "queries" in data else QUERIES_DIR
    rules, seen = [], set()
    for i, raw in enumerate(data["rules"]):
        where = f"rule {raw.get('name', f'#{i + 1}')!r}" if isinstance(raw, dict) else f"rule #{i + 1}"
        if isinstance(raw, dict):
            if "queries_dir" in raw:
                raise ConfigError(f"{path}: {where}: unknown key queries_dir (set queries at the top of the pack)")
            raw = {("for_" if k == "for" else k): v for k, v in raw.items()}
        rule = replace(build_section(Rule, raw, path, where), queries_dir=str(queries_dir))
        problem = _problem(rule, seen)
        if problem:
            raise ConfigError(f"{path}: {where}: {problem}")
        seen.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _problem(rule: Rule, seen: set[str]) -> str | None:
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
    if bool(rule.query) == bool(rule.source):
        return "give either query (SQL) or source (a MongoDB server command), not both"
    if rule.source:
        if rule.source.command not in COMMAND_SOURCES or rule.database != "target":
            return (f"unknown source command {rule.source.command!r} (expected one of: {', '.join(COMMAND_SOURCES)}; "
                    "database: target)")
        lists = REPLY_LISTS.get(rule.source.command)
        if rule.source.each and lists is not None and rule.source.each not in lists:
            return (f"source.each {rule.source.each!r} is not a list in the reply of {rule.source.command} (its lists: "
                    f"{', '.join(lists) or 'none'})")
    elif not rule.query_path.is_file():
        return f"query {rule.query!r} not found: no {rule.query_path}"
    if rule.for_ < 0 or rule.repeat <= 0:
        return "for must be >= 0 and repeat > 0"
    return None
