"""The MongoDB backup DAG family, one set per target with ``engine: mongodb`` and a `backup` policy in
include/config/dbops.yaml: mongo_backup__<target> (nightly), mongo_restore__ and mongo_verify_backup__
(on demand). What each does and what to do when a task fails: include/runbooks/.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Param

from dbops.backup.lookup import BACKUP_ID_HELP, LATEST_VERIFIED
from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_targets
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.backup_dags import nightly_backup_tasks, verify_backup_dag
from dbops.operators.base import fail_run_on_any_failure
from dbops.operators.mongo import (
    MongoBackupOperator,
    MongoRestoreOperator,
    MongoScratchDatabaseOperator,
    MongoVerifyBackupOperator,
)

config = load_config()

for target, settings in own_targets(config.targets.items()):
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
        nightly_backup_tasks(target, dump=MongoBackupOperator, create_scratch=MongoScratchDatabaseOperator,
                             drop_scratch=MongoScratchDatabaseOperator, verify=MongoVerifyBackupOperator)
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

    verify_backup_dag(
        "mongo", target, tags=["mongodb"], on_failure=notifier,
        description=f"Prove a stored backup of MongoDB {target} restores: checksums, documents, hashes, indexes",
        create_scratch=MongoScratchDatabaseOperator, drop_scratch=MongoScratchDatabaseOperator,
        verify=MongoVerifyBackupOperator)
