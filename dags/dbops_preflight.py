"""
### dbops preflight

Daily, and on demand from the UI: for every target in `include/config/dbops.yaml`, checks that dbops
can do its work — the target answers, its server version is supported, `pg_dump`/`pg_restore`/`psql`
at least as new as the server are available, the backup store is writable, and the ops database's
migrations are current.

One task per target, so a broken target does not hide the others. Each task's log ends with one
`PASS`/`FAIL`/`SKIP` line per check and a summary; the verdicts are also stored in
`dbops.preflight_results` in the ops database. Connection failures are retried with backoff; a tool
that is too old or a missing migration fails at once with what to fix.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG

from dbops.core.config import load_config
from dbops.core.dag_defaults import dag_kwargs
from dbops.operators.preflight import PreflightOperator

config = load_config()

with DAG(
    dag_id="dbops_preflight",
    schedule=config.preflight.schedule,
    doc_md=__doc__,
    **dag_kwargs(tags=["preflight"]),
):
    for target in config.targets:
        PreflightOperator(
            task_id=f"check__{target}",
            target=target,
            retries=2,
            execution_timeout=timedelta(minutes=5),
        )
