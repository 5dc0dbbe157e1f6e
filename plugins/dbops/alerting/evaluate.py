"""Run alert rules against a target: read-only, time-boxed, one rule's failure never stops the others."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from dbops.alerting.rules import QUERIES_DIR, Rule


@dataclass(frozen=True)
class Sample:
    """One evaluated value: a rule, the labels of its row, the value and whether it breaches."""

    rule: str
    labels: dict[str, str]
    value: float
    breaching: bool


@dataclass(frozen=True)
class EvaluationError:
    rule: str
    kind: str  # "timeout" or "error"
    message: str


def evaluate(conn: psycopg.Connection, rules: list[Rule], statement_timeout_ms: int = 5000,
             lock_timeout_ms: int = 1000, queries_dir: Path = QUERIES_DIR
             ) -> tuple[list[Sample], list[EvaluationError]]:
    """Evaluate every rule in its own READ ONLY transaction with statement and lock timeouts.

    A query returns a ``value`` column; its other columns are labels (one alert per row).
    """
    conn.autocommit = False
    conn.read_only = True
    samples: list[Sample] = []
    errors: list[EvaluationError] = []
    for rule in rules:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SET LOCAL statement_timeout = {}").format(sql.Literal(statement_timeout_ms)))
                conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(lock_timeout_ms)))
                cursor = conn.execute(rule.sql(queries_dir))
                columns = [c.name for c in cursor.description or []]
                rows = cursor.fetchall()
            if "value" not in columns:
                raise ValueError(f"query {rule.query} returns no 'value' column (columns: {', '.join(columns)})")
            for row in rows:
                values = dict(zip(columns, row))
                if values["value"] is not None:  # no value: nothing to compare, e.g. an idle statistic
                    samples.append(_sample(rule, values))
        except psycopg.errors.QueryCanceled as err:
            errors.append(EvaluationError(rule.name, "timeout", " ".join(str(err).split())))
        except (psycopg.Error, ValueError) as err:
            if conn.closed or conn.broken:
                raise
            errors.append(EvaluationError(rule.name, "error", " ".join(str(err).split())))
    return samples, errors


def _sample(rule: Rule, row: dict) -> Sample:
    value = float(row.pop("value"))
    labels = {**rule.labels, **{k: str(v) for k, v in row.items()}}
    return Sample(rule.name, labels, value, rule.breached(value))
