"""dbops_preflight: one check task per target (daily and on demand). Runbook: include/runbooks/.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from dbops.core.config import load_config
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.operators.preflight import PreflightOperator

config = load_config()

with DAG(
    dag_id="dbops_preflight",
    schedule=config.preflight.schedule,
    description="Can dbops do its work on every target? One PASS/FAIL line per check",
    doc_md=runbook("dbops_preflight"),
    **dag_kwargs(tags=["preflight"]),
):
    for target in config.targets:
        PreflightOperator(
            task_id=f"check__{target}",
            target=target,
            retries=2,
            execution_timeout=timedelta(minutes=5),
        )
