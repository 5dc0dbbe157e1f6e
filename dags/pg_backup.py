"""
### Nightly PostgreSQL backup, proven by a restore

`pg_backup__<target>`, one DAG per target with a `backup` policy in `include/config/dbops.yaml`:

1. **preflight** — target reachable, client tools at least as new as the server, store writable.
2. **dump_and_store** — one exported snapshot: per-table row counts and `pg_dump --snapshot` read
   the same data; the uncompressed archive is compressed with zstd in Python (optionally AES-256-GCM
   encrypted), stored, read back (size and sha256), and only then is the **manifest** written. The
   backup is named by its snapshot time, `<target>/full/<snapshot time, UTC>/`, and the catalog
   records the run's logical date (`covers`), run type and storage. A retried task finds its run's
   backup and does nothing; folders of incomplete attempts are removed.
3. **verify_restore** — downloads what was *stored*, checks sha256, restores it into a scratch
   database with parallel `pg_restore`, compares every table's rows with the snapshot's, checks
   every PK/unique/FK constraint, runs `pg_amcheck`; the recovery test is recorded in
   `dbops.recovery_tests` and in the manifest (never for a backup retention is deleting, never
   without all its files). **drop_scratch** (teardown) always drops the scratch database.
4. **retention** — grandfather-father-son by snapshot time, in the target's pool and one at a time:
   a period's slot goes to its scheduled backup (a manual one never evicts it); never deletes the
   newest verified backup or anything newer, deletes nothing while the newest backup failed
   verification; deletes tenant exports older than `backup.tenant_retention` (30 days).
5. **report** — one summary line; emits the `dbops://<target>/backup` Asset for a verified backup.

**Backfills and late runs.** A dump reads the database as it is now; it cannot make a past night's
backup. A run for a past period (a backfill, or a run starting after the schedule's next slot) does
nothing when a backup was taken at or after its scheduled time (not one that failed verification):
its log and summary name that backup, which the run then verifies and reports. Otherwise it takes one
now, named by its snapshot time, recording the period in `covers`. A backfill over three missed
nights makes one backup, not three copies of today.

On demand (trigger with Params in the UI):

- `pg_restore__<target>` — restore a backup (default: newest verified) into a **new** database on
  the target's server; an existing database is refused unless `overwrite` is set; checksums first.
- `pg_verify_backup__<target>` — re-run the verification restore on any stored backup.
- `pg_tenant_export__<target>` — one tenant's rows of `backup.tenant_tables`, in one snapshot, stored
  (read back: size and sha256) with its own manifest under `<target>/tenant/<tenant id>/<date>/`
  (targets with tenant tables); deleted by the backup DAG's retention after `backup.tenant_retention`.

Failures notify the target's `backup.notify` channels.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import DAG, Asset, Param

from dbops.backup.lookup import BACKUP_ID_HELP, LATEST_VERIFIED
from dbops.core.config import load_config, pool_name
from dbops.core.dag_defaults import dag_kwargs
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.backup import (
    BackupReportOperator,
    BackupRetentionOperator,
    PgBackupOperator,
    RestoreBackupOperator,
    ScratchDatabaseOperator,
    TenantExportOperator,
    VerifyBackupOperator,
)
from dbops.operators.base import fail_run_on_any_failure
from dbops.operators.preflight import PreflightOperator

config = load_config()

for target, settings in config.targets.items():
    if settings.backup is None:
        continue
    notifier = DbopsFailureNotifier(target=target, channels=settings.backup.notify)
    backup_ids = BACKUP_ID_HELP.replace("<target>", target)
    with DAG(
        dag_id=f"pg_backup__{target}",
        schedule=settings.backup.schedule,
        doc_md=__doc__,
        **dag_kwargs(tags=["backup", target], on_failure=notifier),
    ) as backup_dag:
        preflight = PreflightOperator(task_id="preflight", target=target, execution_timeout=timedelta(minutes=5))
        dump = PgBackupOperator(task_id="dump_and_store", target=target, pool=pool_name(target),
                                execution_timeout=timedelta(hours=4))
        create = ScratchDatabaseOperator(task_id="create_scratch", target=target, execution_timeout=timedelta(minutes=5))
        verify = VerifyBackupOperator(
            task_id="verify_restore", target=target, pool=pool_name(target), execution_timeout=timedelta(hours=4),
            backup_id="{{ ti.xcom_pull(task_ids='dump_and_store')['backup_id'] }}", retries=1)
        drop = ScratchDatabaseOperator(task_id="drop_scratch", target=target, drop=True,
                                       execution_timeout=timedelta(minutes=10))
        retention = BackupRetentionOperator(task_id="retention", target=target, pool=pool_name(target),
                                            execution_timeout=timedelta(minutes=30))
        report = BackupReportOperator(
            task_id="report", target=target, backup_task_id="dump_and_store", verify_task_id="verify_restore",
            outlets=[Asset(name=f"backup__{target}", uri=f"dbops://{target}/backup")], trigger_rule="all_done",
            execution_timeout=timedelta(minutes=5))
        preflight >> dump >> create >> verify >> drop.as_teardown(setups=create)
        verify >> retention >> report
        fail_run_on_any_failure(backup_dag)  # report runs after failures: the run must still show failed

    with DAG(
        dag_id=f"pg_restore__{target}",
        schedule=None,
        doc_md=__doc__,
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

    with DAG(
        dag_id=f"pg_verify_backup__{target}",
        schedule=None,
        doc_md=__doc__,
        params={"backup_id": Param("latest", type="string", description=f"backup to verify: {backup_ids}")},
        **dag_kwargs(tags=["backup", "verify", target], on_failure=notifier),
    ):
        create = ScratchDatabaseOperator(task_id="create_scratch", target=target,
                                         execution_timeout=timedelta(minutes=5))
        verify = VerifyBackupOperator(task_id="verify_restore", target=target, backup_id="{{ params.backup_id }}",
                                      pool=pool_name(target), retries=1, execution_timeout=timedelta(hours=4))
        drop = ScratchDatabaseOperator(task_id="drop_scratch", target=target, drop=True,
                                       execution_timeout=timedelta(minutes=10))
        create >> verify >> drop.as_teardown(setups=create)

    if settings.backup.tenant_tables:
        with DAG(
            dag_id=f"pg_tenant_export__{target}",
            schedule=None,
            doc_md=__doc__,
            params={"tenant_id": Param(type="string", minLength=1, maxLength=128, description="tenant to export")},
            **dag_kwargs(tags=["backup", "tenant", target], on_failure=notifier),
        ):
            TenantExportOperator(task_id="export", target=target, tenant_id="{{ params.tenant_id }}",
                                 pool=pool_name(target), execution_timeout=timedelta(hours=2))
