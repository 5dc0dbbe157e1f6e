"""Run alert rules against one database: read-only, time-boxed, one rule's failure never stops the others."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import Column, sql

from dbops.alerting.rules import Rule


@dataclass(frozen=True)
class Sample:
    """One evaluated value: a rule, the labels of its row, the value and whether it breaches.

    ``detail`` (e.g. an error message) is shown in the alert's summary as ``{error}``.
    """

    rule: str
    labels: dict[str, str]
    value: float
    breaching: bool
    detail: str = ""


@dataclass(frozen=True)
class Metric:
    """One row a query returned: the query's name, the row's labels and its raw value (kept as history)."""

    name: str
    labels: dict[str, str]
    value: float

    @property
    def key(self) -> tuple[str, str]:
        return metric_key(self.name, self.labels)


def metric_key(name: str, labels: dict[str, str]) -> tuple[str, str]:
    return name, json.dumps(labels, sort_keys=True)


@dataclass(frozen=True)
class EvaluationError:
    rule: str
    kind: str  # "timeout" or "error"
    message: str


@dataclass
class Evaluation:
    """What one pass over a set of rules found; ``db_seconds`` is the time spent waiting on queries."""

    samples: list[Sample] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)
    errors: list[EvaluationError] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # rule -> why
    db_seconds: float = 0.0


def evaluate(conn: psycopg.Connection, rules: list[Rule], statement_timeout_ms: int = 5000,
             lock_timeout_ms: int = 1000, params: dict[str, Any] | None = None,
             previous: dict[tuple[str, str], float] | None = None) -> Evaluation:
    """Evaluate ``rules`` on ``conn``, each query once in its own READ ONLY transaction with timeouts.

    A query returns a ``value`` column (a number, a boolean as 0/1, or an interval in seconds); its
    other columns are labels (one alert per row). A query that fails, or whose result is not that, is
    an :class:`EvaluationError` of each of its rules; the other queries still run. Rules that share a
    query (e.g. a warning and a critical threshold) share one execution. ``params`` are bound to the
    query (the ops-database rules get ``%(target)s``). A counter rule compares the increase over
    ``previous`` (the last raw value per :func:`metric_key`); without one the increase is 0.
    """
    previous = previous or {}
    conn.autocommit = False
    conn.read_only = True
    result = Evaluation()
    extensions = _extensions(conn) if any(r.requires_extension for r in rules) else set()
    by_query: dict[str, list[Rule]] = {}
    for rule in rules:
        if rule.requires_extension and rule.requires_extension not in extensions:
            result.skipped[rule.name] = f"extension {rule.requires_extension} is not installed"
        else:
            by_query.setdefault(rule.query, []).append(rule)
    for query, query_rules in by_query.items():
        started = time.perf_counter()
        try:
            metrics = _metrics(query, *_run(conn, query_rules[0].sql(), params, statement_timeout_ms,
                                            lock_timeout_ms))
        except psycopg.errors.QueryCanceled as err:
            result.errors += [EvaluationError(r.name, "timeout", _one_line(err)) for r in query_rules]
        except (psycopg.Error, ValueError) as err:
            if conn.closed or conn.broken:
                raise
            result.errors += [EvaluationError(r.name, "error", f"query {query}: {_one_line(err)}")
                              for r in query_rules]
        else:
            for metric in metrics:
                result.metrics.append(metric)
                result.samples += [rule_sample(rule, metric, previous.get(metric.key)) for rule in query_rules]
        finally:
            result.db_seconds += time.perf_counter() - started
    return result


def _run(conn: psycopg.Connection, query: str, params: dict[str, Any] | None, statement_timeout_ms: int,
         lock_timeout_ms: int) -> tuple[list[Column], list[tuple[Any, ...]]]:
    with conn.transaction():
        conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(statement_timeout_ms)))
        conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout_ms)))
        cursor = conn.execute(query, params)
        return list(cursor.description or []), cursor.fetchall()


def _metrics(query: str, columns: list[Column], rows: list[tuple[Any, ...]]) -> list[Metric]:
    """The rows as metrics of ``query``: ``value`` as a number, every other column a label.

    Raises ``ValueError`` (an evaluation error of the query's rules) when a column name repeats or
    ``value`` is missing or not a number; a NULL ``value`` is no sample (nothing to compare).
    """
    names = [c.name for c in columns]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"returns more than one column named {twice[0]!r} (columns: {', '.join(names)}); "
                         "give each column its own name")
    if "value" not in names:
        raise ValueError(f"returns no 'value' column (columns: {', '.join(names)})")
    at = names.index("value")
    return [Metric(query, {name: str(v) for name, v in zip(names, row) if name != "value"},
                   _number(row[at], columns[at].type_display))
            for row in rows if row[at] is not None]


def _number(value: Any, type_name: str) -> float:
    """A number, boolean (0/1) or interval (in seconds) as a float."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (int, float, Decimal)):  # bool is an int
        return float(value)
    raise ValueError(f"column 'value' is of type {type_name}: return a number, a boolean or an interval "
                     "(e.g. cast it: value::numeric)")


def _extensions(conn: psycopg.Connection) -> set[str]:
    with conn.transaction():
        return {name for (name,) in conn.execute("SELECT extname FROM pg_extension")}


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def rule_sample(rule: Rule, metric: Metric, previous: float | None) -> Sample:
    value = metric.value
    if rule.counter:  # a counter that went down was reset: all of its value is new
        value = 0.0 if previous is None else value - previous if value >= previous else value
    return Sample(rule.name, {**rule.labels, **metric.labels}, value, rule.breached(value))
