"""What a backup run is for (its type, a past period or not), and the manifest and XCom it produces."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from dbops.core.manifest import FileEntry, Manifest
from dbops.core.runs import run_date

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.backup.policy import BackupPolicy
    from dbops.core.store import BackupStore

_CRON_PRESETS = {"@quarterly": "0 0 1 */3 *"}  # croniter knows Airflow's other presets


def run_type_of(context: Context) -> str:
    """The run's type as a string: ``scheduled``, ``backfill``, ``manual``, ``asset_triggered``, ..."""
    run_type = context["dag_run"].run_type
    return getattr(run_type, "value", str(run_type))


def is_past_period(schedule: str | None, period: datetime, run_type: str, now: datetime) -> bool:
    """Whether a run is for a past period: a backfill, or a run starting once its schedule's next slot came.

    A dump reads the database as it is now, so such a run cannot make that period's backup.

    :param schedule: the backup schedule (cron or preset); None for manual-only DAGs.
    :param period: the run's logical date (its scheduled time).
    """
    from croniter import croniter

    if run_type == "backfill":
        return True
    if not schedule or schedule == "@once":
        return False
    return now >= croniter(_CRON_PRESETS.get(schedule, schedule), period).get_next(datetime)


def new_manifest(context: Context, policy: BackupPolicy, store: BackupStore, prefix: str, target: str, *,
                 kind: str, taken_at: datetime, snapshot_id: str, server_version: str, tool: str,
                 files: list[FileEntry], tables: dict[str, int], dump_seconds: float, archive: str,
                 constraints: Sequence[str] = (), not_validated: list[str] | None = None,
                 dump_jobs: int | None = None, tenant_id: str | None = None) -> Manifest:
    """The manifest of a backup (or tenant export) about to be stored at ``prefix``, with the run's provenance:
    when the data was read, the logical date and type of the run, the storage key."""
    logical_date = context.get("logical_date")
    compression = {"codec": "zstd", "level": policy.compression_level, "archive": archive}
    if dump_jobs is not None:
        compression["dump_jobs"] = dump_jobs
    return Manifest(
        backup_id=prefix, target=target, kind=kind, logical_date=run_date(context).isoformat(),
        run_id=context["run_id"], location=f"{store.describe()}/{prefix}", server_version=server_version,
        tool=tool, snapshot_id=snapshot_id, files=files, tables=tables, constraints=list(constraints),
        not_validated=not_validated, timings={"dump_seconds": round(dump_seconds, 3)}, compression=compression,
        encryption={"algorithm": "AES-256-GCM", "key_conn_id": policy.encryption_conn_id}
        if policy.encryption_conn_id else None,
        tenant_id=tenant_id, taken_at=taken_at.isoformat(),
        covers=logical_date.isoformat() if logical_date else None, run_type=run_type_of(context),
        storage=policy.storage, extra={"created_at": datetime.now(timezone.utc).isoformat()},
    )


def backup_result(manifest: Manifest) -> dict[str, Any]:
    """XCom of a backup or export: small figures for the next tasks and the report."""
    return {"backup_id": manifest.backup_id, "location": manifest.location, "bytes": manifest.total_bytes,
            "raw_bytes": sum(f.raw_bytes for f in manifest.files), "tables": len(manifest.tables),
            "rows": manifest.total_rows, "taken_at": manifest.taken_at, **manifest.timings}
