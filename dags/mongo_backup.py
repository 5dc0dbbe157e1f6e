"""The MongoDB backup DAG family, one set per target with ``engine: mongodb`` and a `backup` policy in
include/config/dbops.yaml: mongo_backup__<target> (nightly), mongo_restore__ and mongo_verify_backup__
(on demand). What each does and what to do when a task fails: include/runbooks/.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset, Param

from dbops.backup.lookup import BACKUP_ID_HELP, LATEST_VERIFIED
from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.backup import BackupReportOperator, BackupRetentionOperator
from dbops.operators.base import fail_run_on_any_failure
from dbops.operators.mongo import (
    MongoBackupOperator,
    MongoRestoreOperator,
    MongoScratchDatabaseOperator,
    MongoVerifyBackupOperator,
)

config = load_config()

for target, settings in config.targets.items():
    if settings.engine != "mongodb" or settings.backup is None:
        continue
    notifier = DbopsFailureNotifier(target=target, channels=settings.backup.notify)
    backup_ids = BACKUP_ID_HELP.replace("<target>", target)
    with DAG(
        dag_id=f"mongo_backup__{target}",
        schedule=settings.backup.schedule,
        description=f"Nightly backup of MongoDB {target}: raw BSON dump + oplog, stored, proven by a restore",
        doc_md=runbook("mongo_backup", target),
        **dag_kwargs(tags=["backup", "mongodb", target], on_failure=notifier),
    ) as backup_dag:
        dump = MongoBackupOperator(task_id="dump_and_store", target=target, pool=pool_name(target),
                                   execution_timeout=timedelta(hours=4))
        create = MongoScratchDatabaseOperator(task_id="create_scratch", target=target,
                                              execution_timeout=timedelta(minutes=5))
        verify = MongoVerifyBackupOperator(
            task_id="verify_restore", target=target, pool=pool_name(target), execution_timeout=timedelta(hours=4),
            backup_id="{{ ti.xcom_pull(task_ids='dump_and_store')['backup_id'] }}", reverify=False, retries=1)
        drop = MongoScratchDatabaseOperator(task_id="drop_scratch", target=target,
                                            execution_timeout=timedelta(minutes=10))
        retention = BackupRetentionOperator(task_id="retention", target=target, pool=pool_name(target),
                                            execution_timeout=timedelta(minutes=30))
        report = BackupReportOperator(
            task_id="report", target=target, backup_task_id="dump_and_store", verify_task_id="verify_restore",
            outlets=[Asset(name=f"backup__{target}", uri=f"dbops://{target}/backup")], trigger_rule="all_done",
            execution_timeout=timedelta(minutes=5))
        dump >> create >> verify >> drop.as_teardown(setups=create)
        verify >> retention >> report
        fail_run_on_any_failure(backup_dag)  # report runs after failures: the run must still show failed

    with DAG(
        dag_id=f"mongo_restore__{target}",
        schedule=None,
        description=f"Restore a backup of MongoDB {target} into a database; what it replaces moves only once proven",
        doc_md=runbook("mongo_restore", target),
        params={
            "backup_id": Param(LATEST_VERIFIED, type="string", description=f"backup to restore: {backup_ids}"),
            "database": Param(type="string", minLength=1, maxLength=46, description="database to restore into"),
            "overwrite": Param(False, type="boolean",
                               description="replace the database if it holds collections (they move aside "
                                           "and are dropped only once the restored ones are in place)"),
        },
        **dag_kwargs(tags=["backup", "restore", "mongodb", target], on_failure=notifier),
    ):
        MongoRestoreOperator(task_id="restore", target=target, backup_id="{{ params.backup_id }}",
                             database="{{ params.database }}", overwrite="{{ params.overwrite }}",
                             pool=pool_name(target), execution_timeout=timedelta(hours=6))

    with DAG(
        dag_id=f"mongo_verify_backup__{target}",
        schedule=None,
        description=f"Prove a stored backup of MongoDB {target} restores: checksums, documents, hashes, indexes",
        doc_md=runbook("mongo_verify_backup", target),
        params={"backup_id": Param("latest", type="string", description=f"backup to verify: {backup_ids}")},
        **dag_kwargs(tags=["backup", "verify", "mongodb", target], on_failure=notifier),
    ):
        create = MongoScratchDatabaseOperator(task_id="create_scratch", target=target,
                                              execution_timeout=timedelta(minutes=5))
        verify = MongoVerifyBackupOperator(task_id="verify_restore", target=target, backup_id="{{ params.backup_id }}",
                                           pool=pool_name(target), retries=1, execution_timeout=timedelta(hours=4))
        drop = MongoScratchDatabaseOperator(task_id="drop_scratch", target=target,
                                            execution_timeout=timedelta(minutes=10))
        create >> verify >> drop.as_teardown(setups=create)
