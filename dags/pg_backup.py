"""The backup DAG family, one set per target with a `backup` policy in include/config/dbops.yaml:
pg_backup__<target> (nightly), pg_restore__, pg_verify_backup__ and pg_tenant_export__ (on demand).
What each does and what to do when a task fails: include/runbooks/ (shown in the UI as the DAG's docs).
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial

from airflow.sdk import DAG, Param

from dbops.backup.lookup import BACKUP_ID_HELP, LATEST_VERIFIED
from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_targets
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.backup import (
    PgBackupOperator,
    RestoreBackupOperator,
    ScratchDatabaseOperator,
    TenantExportOperator,
    VerifyBackupOperator,
)
from dbops.operators.backup_dags import nightly_backup_tasks, verify_backup_dag
from dbops.operators.base import fail_run_on_any_failure
from dbops.operators.preflight import PreflightOperator

config = load_config()

for target, settings in own_targets(config.targets.items()):
    if settings.engine != "postgres" or settings.backup is None:  # MongoDB targets: dags/mongo_backup.py
        continue
    notifier = DbopsFailureNotifier(target=target, channels=settings.backup.notify)
    backup_ids = BACKUP_ID_HELP.replace("<target>", target)
    with DAG(
        dag_id=f"pg_backup__{target}",
        schedule=settings.backup.schedule,
        description=f"Nightly backup of {target}: consistent dump, stored, proven by a verification restore",
        doc_md=runbook("pg_backup", target),
        **dag_kwargs(tags=["backup", target], on_failure=notifier),
    ) as backup_dag:
        preflight = PreflightOperator(task_id="preflight", target=target, execution_timeout=timedelta(minutes=5))
        preflight >> nightly_backup_tasks(target, dump=PgBackupOperator, create_scratch=ScratchDatabaseOperator,
                                          drop_scratch=partial(ScratchDatabaseOperator, drop=True),
                                          verify=VerifyBackupOperator)
        fail_run_on_any_failure(backup_dag)  # report runs after failures: the run must still show failed

    with DAG(
        dag_id=f"pg_restore__{target}",
        schedule=None,
        description=f"Restore a backup of {target} into a database; what it replaces is swapped only once proven",
        doc_md=runbook("pg_restore", target),
        params={
            "backup_id": Param(LATEST_VERIFIED, type="string", description=f"backup to restore: {backup_ids}"),
            "database": Param(type="string", minLength=1, maxLength=63, description="new database to restore into"),
            "overwrite": Param(False, type="boolean",
                               description="replace the database if it exists and an earlier pg_restore__ run "
                                           "created it (it is swapped only after the restore is checked)"),
            "confirm_database": Param("", type="string", maxLength=63,
                                      description="with overwrite: the database name again, to replace a database "
                                                  "that no pg_restore__ run created"),
        },
        **dag_kwargs(tags=["backup", "restore", target], on_failure=notifier),
    ):
        RestoreBackupOperator(
            task_id="restore", target=target, backup_id="{{ params.backup_id }}", database="{{ params.database }}",
            overwrite="{{ params.overwrite }}", confirm_database="{{ params.confirm_database }}",
            pool=pool_name(target), execution_timeout=timedelta(hours=6))

    verify_backup_dag("pg", target, tags=[], on_failure=notifier,
                      description=f"Prove a stored backup of {target} restores: checksums, rows, constraints, amcheck",
                      create_scratch=ScratchDatabaseOperator, drop_scratch=partial(ScratchDatabaseOperator, drop=True),
                      verify=VerifyBackupOperator)

    if settings.backup.tenant_tables:
        with DAG(
            dag_id=f"pg_tenant_export__{target}",
            schedule=None,
            description=f"Export one tenant's rows of {target}, stored with a manifest, deleted after retention",
            doc_md=runbook("pg_tenant_export", target),
            params={"tenant_id": Param(type="string", minLength=1, maxLength=128, description="tenant to export")},
            **dag_kwargs(tags=["backup", "tenant", target], on_failure=notifier),
        ):
            TenantExportOperator(task_id="export", target=target, tenant_id="{{ params.tenant_id }}",
                                 pool=pool_name(target), execution_timeout=timedelta(hours=2))
