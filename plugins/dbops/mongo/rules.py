"""The rule source of MongoDB targets: run a server command, take each rule's value from its reply by path.

Rules name their source in YAML (``source: {command: serverStatus, value: connections.current}``; see
:class:`dbops.mongo.policy.CommandSource`); no code per rule. Each command runs once per evaluation
whatever the number of rules reading it. The result is an :class:`~dbops.alerting.evaluate.Evaluation`
like the SQL rules', so the same state machine, records and notifications apply.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from bson import Timestamp

from dbops.alerting.evaluate import Evaluation, EvaluationError, Metric, rule_sample
from dbops.alerting.rules import Rule
from dbops.mongo.policy import COMMAND_SOURCES

STANDALONE = "standalone server: no replica set"


def run_source(client, database: str, command: str) -> dict[str, Any]:
    """The reply of a source: a server command, ``collStats`` of every collection, or the oplog's window."""
    if command in ("hello", "serverStatus", "replSetGetStatus"):
        return client.admin.command(command)
    if command == "currentOp":  # operations running a second or more: no sample per short-lived operation
        return client.admin.command({"currentOp": 1, "active": True, "secs_running": {"$gte": 1}})
    db = client.get_database(database)
    if command == "dbStats":
        return db.command("dbStats")
    if command == "collStats":
        return {"collections": [{"name": name, **db.command("collStats", name)}
                                for name in sorted(db.list_collection_names())]}
    if command != "oplogWindow":
        raise ValueError(f"unknown source command {command!r} (expected one of: {', '.join(COMMAND_SOURCES)})")
    oplog = client.local["oplog.rs"]
    first = oplog.find_one({}, sort=[("$natural", 1)], projection={"ts": 1})
    last = oplog.find_one({}, sort=[("$natural", -1)], projection={"ts": 1})
    return {"seconds": last["ts"].time - first["ts"].time if first and last else None}


def lookup(document: Any, path: str) -> Any:
    """The value at the dotted ``path`` (list elements by index), or None where it is missing."""
    for part in path.split("."):
        if isinstance(document, dict):
            document = document.get(part)
        elif isinstance(document, list) and part.isdigit() and int(part) < len(document):
            document = document[int(part)]
        else:
            return None
    return document


def number(value: Any) -> float | None:
    """A reply's value as a number: dates and oplog timestamps in seconds, booleans as 0/1, text as 1."""
    if isinstance(value, str):
        return 1.0
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, Timestamp):
        return float(value.time)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def metrics_of(rule: Rule, reply: dict[str, Any]) -> list[Metric]:
    """The rule's values in ``reply``: one, or one per element of ``source.each`` with its labels.

    :raises ValueError: ``source.each`` is in the reply but not a list.
    """
    source = rule.source
    elements = lookup(reply, source.each) if source.each else [reply]
    if elements is None:
        elements = []
    elif not isinstance(elements, list):
        raise ValueError(f"source.each {source.each!r} of {source.command} is a {type(elements).__name__}, not a list")
    found = []
    for element in elements:
        raw = lookup(element, source.value)
        value = number(raw) if not source.ok_values else float(str(raw) not in source.ok_values)
        value = source.missing if raw is None else value
        if value is not None and source.percent_of:
            whole = sum(number(lookup(element, p)) or 0.0 for p in source.percent_of)
            value = 100.0 * value / whole if whole else None
        if value is None:
            continue
        labels = {label: str(lookup(element, path)) for label, path in source.labels.items()}
        found.append((labels, value))
    if source.behind_newest and found:
        newest = max(value for _, value in found)
        found = [(labels, newest - value) for labels, value in found]
    return [Metric(f"{source.command}.{source.value}", labels, value) for labels, value in found]


def evaluate_commands(client, database: str, rules: list[Rule],
                      previous: dict[tuple[str, str], float] | None = None) -> Evaluation:
    """Evaluate the MongoDB ``rules``: each source once; a failing or unknown command is an evaluation error of
    its rules, a reply a rule cannot read (``each`` not a list) an evaluation error of that rule: the others
    still run. Replica-set rules are skipped on a standalone server. A lost connection raises (the caller
    reports the target down)."""
    from pymongo.errors import ConnectionFailure, PyMongoError

    previous = previous or {}
    result = Evaluation()
    replica_set = client.admin.command("hello").get("setName") is not None
    by_command: dict[str, list[Rule]] = {}
    for rule in rules:
        if rule.source.replica_set and not replica_set:
            result.skipped[rule.name] = STANDALONE
        else:
            by_command.setdefault(rule.source.command, []).append(rule)
    for command, command_rules in by_command.items():
        started = time.perf_counter()
        try:
            reply = run_source(client, database, command)
        except ConnectionFailure:
            raise
        except (PyMongoError, ValueError) as err:
            result.errors += [EvaluationError(r.name, "error", f"{command}: {' '.join(str(err).split())}")
                              for r in command_rules]
            continue
        finally:
            result.db_seconds += time.perf_counter() - started
        for rule in command_rules:
            try:
                metrics = metrics_of(rule, reply)
            except ValueError as err:
                result.errors.append(EvaluationError(rule.name, "error", str(err)))
                continue
            for metric in metrics:
                if metric.key not in {m.key for m in result.metrics}:
                    result.metrics.append(metric)
                result.samples.append(rule_sample(rule, metric, previous.get(metric.key)))
    return result
