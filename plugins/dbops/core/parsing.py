"""Which targets a DAG file builds: every one for the dag-processor, only its own in a task's process.

The task runner parses the task's DAG file with Airflow's parsing context set (``get_parsing_context()``,
``dag_id`` and ``task_id``); a file that builds one DAG family per target then needs to build the family of
that one target only, so a task's start does not grow with the fleet. Per-target DAG ids are
``<family>__<target>`` (families never contain ``__``). A DAG of a group of targets (``db_alerts_group__<group>``)
is kept the same way by :func:`own_groups`; group names are never target names (config validation).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from airflow.sdk import get_parsing_context

T = TypeVar("T")


def parsed_target() -> str | None:
    """The target whose DAG a task's process is parsing; ``None`` when every DAG is wanted (dag-processor, tests,
    CLI). A task of a DAG of no target (``dbops_preflight``, ``db_alert_silence``) gives ``""``: no target's."""
    dag_id = get_parsing_context().dag_id
    if dag_id is None:
        return None
    _, separator, target = dag_id.partition("__")
    return target if separator else ""


def own_targets(targets: Iterable[tuple[str, T]]) -> Iterator[tuple[str, T]]:
    """The ``(target, settings)`` pairs a DAG file should build now: all of them, or the parsed task's own."""
    wanted = parsed_target()
    return (pair for pair in targets if wanted is None or pair[0] == wanted)


def own_groups(family: str, groups: Iterable[tuple[str, T]]) -> Iterator[tuple[str, T]]:
    """The ``(group, members)`` pairs whose ``<family>__<group>`` DAG a file should build now: all of them, or the
    one a task's process parses."""
    dag_id = get_parsing_context().dag_id
    return (pair for pair in groups if dag_id is None or dag_id == f"{family}__{pair[0]}")
