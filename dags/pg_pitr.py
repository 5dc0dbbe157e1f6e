"""The point-in-time recovery DAG family, one set per target with a `pitr` policy in include/config/dbops.yaml:
pg_basebackup__<target> (full weekly, incremental otherwise), pg_wal_ship__<target> (every few minutes),
pg_pitr_test__<target> (after each base backup, and on demand) and pg_restore_pitr__<target> (on demand).
What each does and what to do when a task fails: include/runbooks/ (shown in the UI as the DAG's docs).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset, Param

from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_targets
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.pitr import (
    BaseBackupOperator,
    PitrRetentionOperator,
    PitrTestOperator,
    RestorePitrOperator,
    ScratchClusterOperator,
    WalShipOperator,
)

config = load_config()


def basebackup_asset(target: str) -> Asset:
    """Updated by every base backup of ``target``; schedules its recovery test."""
    return Asset(name=f"basebackup__{target}", uri=f"dbops://{target}/basebackup")


for target, settings in own_targets(config.targets.items()):
    if settings.pitr is None:
        continue
    notifier = DbopsFailureNotifier(target=target, channels=settings.pitr.notify)
    with DAG(
        dag_id=f"pg_basebackup__{target}",
        schedule=settings.pitr.schedule,
        description=f"Physical base backup of {target}: full when due, else incremental; then retention",
        doc_md=runbook("pg_basebackup", target),
        params={"full": Param(False, type="boolean", description="take a full backup whatever the schedule")},
        **dag_kwargs(tags=["backup", "pitr", target], on_failure=notifier),
    ):
        backup = BaseBackupOperator(task_id="basebackup", target=target, full="{{ params.full }}",
                                    pool=pool_name(target), outlets=[basebackup_asset(target)],
                                    execution_timeout=timedelta(hours=6))
        retention = PitrRetentionOperator(task_id="retention", target=target, execution_timeout=timedelta(minutes=30))
        backup >> retention

    with DAG(
        dag_id=f"pg_wal_ship__{target}",
        schedule=settings.pitr.wal_ship_schedule,
        description=f"Ship the WAL of {target} to the store through its replication slot",
        doc_md=runbook("pg_wal_ship", target),
        **dag_kwargs(tags=["backup", "pitr", target], on_failure=notifier,
                     dagrun_timeout=timedelta(minutes=30)),
    ):
        WalShipOperator(task_id="ship", target=target, execution_timeout=timedelta(minutes=20))

    with DAG(
        dag_id=f"pg_pitr_test__{target}",
        schedule=[basebackup_asset(target)],
        description=f"Prove point-in-time recovery of {target} in a scratch cluster, markers around the target",
        doc_md=runbook("pg_pitr_test", target),
        params={"target_time": Param("", type="string", description="ISO 8601 time with a zone to recover to, or "
                                                                     "latest (the end of the archive); empty: write "
                                                                     "markers and recover between them")},
        **dag_kwargs(tags=["backup", "pitr", "verify", target], on_failure=notifier),
    ):
        create = ScratchClusterOperator(task_id="create_scratch", target=target, execution_timeout=timedelta(minutes=5))
        recover = PitrTestOperator(task_id="recover", target=target, target_time="{{ params.target_time }}",
                                   pool=pool_name(target), retries=1, execution_timeout=timedelta(hours=6))
        drop = ScratchClusterOperator(task_id="drop_scratch", target=target, drop=True,
                                      execution_timeout=timedelta(minutes=10))
        create >> recover >> drop.as_teardown(setups=create)

    with DAG(
        dag_id=f"pg_restore_pitr__{target}",
        schedule=None,
        description=f"Restore {target} as of a point in time into a new data directory, ready to start",
        doc_md=runbook("pg_restore_pitr", target),
        params={
            "target_time": Param(type="string", minLength=6,
                                 description="ISO 8601 time with a zone, or latest (the end of the archive)"),
            "data_directory": Param(type="string", minLength=2, description="absolute path of a new data directory"),
        },
        **dag_kwargs(tags=["backup", "pitr", "restore", target], on_failure=notifier),
    ):
        RestorePitrOperator(task_id="restore", target=target, target_time="{{ params.target_time }}",
                            data_directory="{{ params.data_directory }}", pool=pool_name(target),
                            execution_timeout=timedelta(hours=12))
