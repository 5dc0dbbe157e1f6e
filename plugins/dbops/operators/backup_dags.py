"""The task chains and DAGs the PostgreSQL and MongoDB backup DAGs share; each engine passes its operator classes."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import DAG, Asset, BaseOperator, Param

from dbops.backup.lookup import BACKUP_ID_HELP
from dbops.core.config import pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.operators.backup import BackupReportOperator, BackupRetentionOperator

OperatorFactory = Callable[..., BaseOperator]


def verify_tasks(target: str, *, create_scratch: OperatorFactory, drop_scratch: OperatorFactory,
                 verify: OperatorFactory, **verify_kwargs: Any) -> tuple[BaseOperator, BaseOperator]:
    """create_scratch >> verify_restore >> drop_scratch (the teardown of create_scratch); returns the first two."""
    create = create_scratch(task_id="create_scratch", target=target, execution_timeout=timedelta(minutes=5))
    check = verify(task_id="verify_restore", target=target, pool=pool_name(target), retries=1,
                   execution_timeout=timedelta(hours=4), **verify_kwargs)
    drop = drop_scratch(task_id="drop_scratch", target=target, execution_timeout=timedelta(minutes=10))
    create >> check >> drop.as_teardown(setups=create)
    return create, check


def nightly_backup_tasks(target: str, *, dump: OperatorFactory, create_scratch: OperatorFactory,
                         drop_scratch: OperatorFactory, verify: OperatorFactory) -> BaseOperator:
    """dump_and_store, the verification restore, retention and the report (all_done) of a nightly backup DAG;
    returns dump_and_store, the first task. The DAG still needs ``fail_run_on_any_failure``."""
    stored = dump(task_id="dump_and_store", target=target, pool=pool_name(target),
                  execution_timeout=timedelta(hours=4))
    create, check = verify_tasks(target, create_scratch=create_scratch, drop_scratch=drop_scratch, verify=verify,
                                 backup_id="{{ ti.xcom_pull(task_ids='dump_and_store')['backup_id'] }}",
                                 reverify=False)
    retention = BackupRetentionOperator(task_id="retention", target=target, pool=pool_name(target),
                                        execution_timeout=timedelta(minutes=30))
    report = BackupReportOperator(
        task_id="report", target=target, backup_task_id="dump_and_store", verify_task_id="verify_restore",
        outlets=[Asset(name=f"backup__{target}", uri=f"dbops://{target}/backup")], trigger_rule="all_done",
        execution_timeout=timedelta(minutes=5))
    stored >> create
    check >> retention >> report
    return stored


def verify_backup_dag(prefix: str, target: str, *, description: str, tags: list[str], on_failure: Any,
                      create_scratch: OperatorFactory, drop_scratch: OperatorFactory,
                      verify: OperatorFactory) -> DAG:
    """<prefix>_verify_backup__<target> (on demand): :func:`verify_tasks` for the backup its Param ``backup_id``
    names; documented by include/runbooks/<prefix>_verify_backup.md."""
    backup_ids = BACKUP_ID_HELP.replace("<target>", target)
    with DAG(
        dag_id=f"{prefix}_verify_backup__{target}",
        schedule=None,
        description=description,
        doc_md=runbook(f"{prefix}_verify_backup", target),
        params={"backup_id": Param("latest", type="string", description=f"backup to verify: {backup_ids}")},
        **dag_kwargs(tags=["backup", "verify", *tags, target], on_failure=on_failure),
    ) as dag:
        verify_tasks(target, create_scratch=create_scratch, drop_scratch=drop_scratch, verify=verify,
                     backup_id="{{ params.backup_id }}")
    return dag
