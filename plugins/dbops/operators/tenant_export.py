"""Per-tenant export: one tenant's rows of every tenant-scoped table, in one snapshot, stored like a backup."""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from dbops.core.manifest import FileEntry, Manifest, backup_prefix, write_manifest
from dbops.operators.backup import _BackupTargetOperator, _result, _verify_stored, encryption_key, provenance

if TYPE_CHECKING:
    from airflow.sdk import Context

_TENANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class TenantExportOperator(_BackupTargetOperator):
    """Export the rows of ``backup.tenant_tables`` whose ``tenant_id`` is ``tenant_id``.

    All tables are read in one REPEATABLE READ transaction, so the export is consistent. Each table is
    a zstd-compressed CSV (with header) ``<table>.csv.zst``, read back after storing (size and sha256);
    the manifest, written last, holds the row counts and checksums. Stored under
    ``<target>/tenant/<tenant_id>/<run date>/`` and catalogued (kind ``tenant``); the backup DAG's
    retention task deletes exports older than ``backup.tenant_retention``.

    :param tenant_id: the tenant to export; compared as a value (never spliced into SQL).
    """

    template_fields: Sequence[str] = ("target", "tenant_id")

    def __init__(self, *, tenant_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tenant_id = tenant_id

    def execute(self, context: Context) -> dict[str, Any]:
        import psycopg

        from dbops.core.errors import classify
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.backup.restore import read_manifest
        from dbops.core.runs import run_date

        config, policy, store = self._setup()
        if not policy.tenant_tables:
            raise AirflowFailException(f"target {self.target} has no backup.tenant_tables in {config.path}")
        tenant = str(self.tenant_id).strip()
        if not _TENANT_ID.match(tenant):
            raise AirflowFailException(f"tenant id {self.tenant_id!r} must be 1-128 letters, digits, '.', '_' or '-'")
        prefix = backup_prefix(self.target, "tenant", run_date(context), tenant=tenant)
        existing = read_manifest(store, prefix)
        if existing is not None:
            self.log.info("tenant export %s is already complete; not overwriting it", prefix)
            return _result(existing)
        for leftover in store.list_keys(prefix):
            store.delete(leftover)
        staging = config.staging_path / prefix.replace("/", "__")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        hook = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        started = time.monotonic()
        taken_at = datetime.now(timezone.utc).replace(microsecond=0)  # the export's snapshot is taken right after
        try:
            files, tables, snapshot_id, server_version = self._export(hook, policy, tenant, staging)
        except psycopg.errors.InvalidTextRepresentation as err:
            raise AirflowFailException(f"tenant id {tenant!r} is not a valid tenant_id value: {err}") from err
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn) as err:
            raise AirflowFailException(f"backup.tenant_tables of {self.target}: {err}") from err
        except Exception as err:
            raise classify(err, f"exporting tenant {tenant} of {self.target} failed") from err
        dump_seconds = time.monotonic() - started
        try:
            for entry in files:
                store.put_file(staging / entry.name, f"{prefix}/{entry.name}")
                _verify_stored(store, f"{prefix}/{entry.name}", entry.bytes, entry.sha256)
        except Exception as err:
            raise classify(err, f"storing {prefix} failed") from err
        manifest = Manifest(
            backup_id=prefix, target=self.target, kind="tenant", logical_date=run_date(context).isoformat(),
            run_id=context["run_id"], location=f"{store.describe()}/{prefix}", server_version=server_version,
            tool="COPY ... TO STDOUT (FORMAT csv, HEADER)", snapshot_id=snapshot_id, files=files, tables=tables,
            constraints=[], timings={"dump_seconds": round(dump_seconds, 3),
                                     "upload_seconds": round(time.monotonic() - started - dump_seconds, 3)},
            compression={"codec": "zstd", "level": policy.compression_level, "archive": "csv per table"},
            encryption={"algorithm": "AES-256-GCM", "key_conn_id": policy.encryption_conn_id}
            if policy.encryption_conn_id else None,
            tenant_id=tenant, **provenance(context, policy.storage, taken_at))
        write_manifest(store, manifest)
        OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).record_backup(manifest)
        shutil.rmtree(staging, ignore_errors=True)
        self.log.info("tenant %s of %s exported: %d tables, %d rows, %d bytes, %.1f s", tenant, self.target,
                      len(tables), manifest.total_rows, manifest.total_bytes, dump_seconds)
        return _result(manifest)

    def _export(self, hook, policy, tenant: str, staging) -> tuple[list[FileEntry], dict[str, int], str, str]:
        from psycopg import sql

        from dbops.core.streams import write_compressed

        key = encryption_key(policy.encryption_conn_id)
        files, tables = [], {}
        with hook.get_conn() as conn:
            conn.autocommit = False
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            snapshot_id = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
            server_version = conn.execute("SHOW server_version").fetchone()[0]
            for table in policy.tenant_tables:
                name = sql.Identifier(*table.split(".", 1))
                rows = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE tenant_id = %s").format(name),
                                    (tenant,)).fetchone()[0]
                copy = sql.SQL("COPY (SELECT * FROM {} WHERE tenant_id = {}) TO STDOUT (FORMAT csv, HEADER)").format(
                    name, sql.Literal(tenant))
                file_name = f"{table}.csv.zst"
                with conn.cursor().copy(copy) as stream:
                    stored, raw, sha = write_compressed((bytes(block) for block in stream), staging / file_name,
                                                        policy.compression_level, key)
                files.append(FileEntry(file_name, stored, sha, raw))
                tables[table] = rows
            conn.rollback()
        return files, tables, snapshot_id, server_version
