"""Prove a restored backup: row counts and constraints against the manifest's snapshot, amcheck; and the
verification restore that fetches, restores and checks a stored backup in a scratch database."""

from __future__ import annotations

import hashlib
import shutil
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from dbops.backup.dump import constraints, count_rows
from dbops.backup.policy import BackupPolicy
from dbops.backup.restore import archive_roles, fetch, missing_roles, pg_restore
from dbops.backup.staging import held_staging
from dbops.core.config import DbopsConfig, ToolsConfig
from dbops.core.manifest import Manifest
from dbops.core.processes import DEFAULT_TIMEOUT, ToolError, run
from dbops.core.store import BackupStore
from dbops.core.streams import ChecksumMismatch
from dbops.hooks.keys import encryption_key
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.hooks.tools import ToolVersionError, find_tool


class VerificationFailed(AirflowFailException):
    """A verification restore proved the backup bad: retrying or re-running will not make it good."""

    what_to_do = ("do not re-run this task: the backup failed its verification restore and cannot be trusted. "
                  "Read the FAIL lines in the log, fix the cause (source data, storage, disk), take a new backup "
                  "(trigger the target's pg_backup__ DAG) and check that it is verified. Retention deletes "
                  "nothing while the newest backup failed verification.")


def scratch_database_name(target: str, run_id: str) -> str:
    """A per-run scratch database name, within the 63-byte limit of PostgreSQL and MongoDB names."""
    return f"dbops_verify_{target[:30]}_{hashlib.sha1(run_id.encode()).hexdigest()[:10]}"


def verification_server(config: DbopsConfig, target: str, database: str = "postgres") -> DbopsPostgresHook:
    """A hook on the verification server (``backup.verify_conn_id``, default the target's own server)."""
    policy = config.targets[target].backup
    conn_id = (policy.verify_conn_id if policy else None) or config.targets[target].conn_id
    return DbopsPostgresHook(postgres_conn_id=conn_id, database=database)


def check_restored(hook: DbopsPostgresHook, manifest: Manifest) -> dict[str, Any]:
    """Compare the restored database with the manifest's snapshot: every table's rows, every constraint
    present, and valid where it was valid in the source."""
    with hook.get_conn() as conn:
        restored = count_rows(conn)
        rows = constraints(conn)
    mismatched = {table: {"expected": manifest.tables.get(table), "restored": restored.get(table)}
                  for table in sorted(set(manifest.tables) | set(restored))
                  if manifest.tables.get(table) != restored.get(table)}
    if manifest.not_validated is None:  # older manifest: names as regclass printed them, qualified or not
        present = {name: valid for qualified, bare, valid in rows for name in (qualified, bare)}
        valid_in_source: set[str] = set()  # unknown; pg_restore rebuilds a constraint as it was dumped
    else:
        present = {qualified: valid for qualified, _, valid in rows}
        valid_in_source = set(manifest.constraints) - set(manifest.not_validated)
    missing = sorted(set(manifest.constraints) - set(present))
    invalid = sorted(name for name in valid_in_source & set(present) if not present[name])
    return {
        "row_counts": {"ok": not mismatched, "tables": len(manifest.tables), "rows": sum(restored.values()),
                       "mismatched": mismatched},
        "constraints": {"ok": not missing and not invalid, "count": len(manifest.constraints),
                        "missing": missing, "not_validated": invalid,
                        "not_validated_in_source": manifest.not_validated},
    }


def amcheck(admin: DbopsPostgresHook, database: str, jobs: int, tools: ToolsConfig,
            timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Run pg_amcheck on the restored database (indexes and heap), when a fitting one exists."""
    try:
        tool = find_tool("pg_amcheck", admin.server_version_num(), tools.bin_dir, tools.exclusive)
    except ToolVersionError as err:
        return {"ok": True, "skipped": str(err)}
    with admin.cli_environment(database) as env:
        result = run([tool.path, "--install-missing", f"--jobs={max(jobs, 1)}", f"--database={database}"],
                     timeout, env)
    return {"ok": result.returncode == 0, "output": (result.stdout + result.stderr).strip()[-2000:]}


def restore_and_check(config: DbopsConfig, policy: BackupPolicy, store: BackupStore, manifest: Manifest,
                      admin: DbopsPostgresHook, database: str, *, run_amcheck: bool, owners: bool,
                      timeout: float) -> dict[str, Any]:
    """Fetch, restore into the existing ``database`` and check it; a definite failure is an outcome with
    ``ok`` false, a transient fault an exception.

    With ``owners`` the objects keep their owners and grants, and every role the backup names must exist
    (checked before restoring); without, both are skipped. Each tool runs at most ``timeout`` seconds.
    """
    checks: dict[str, Any] = {}
    restore_seconds = None
    with held_staging(config.staging_path / f"restore__{database}", "restore__*") as staging:
        try:
            archive = fetch(store, manifest, manifest.backup_id, staging, encryption_key(policy.encryption_conn_id))
            checks["checksums"] = {"ok": True, "files": [f.name for f in manifest.files]}
            tool = find_tool("pg_restore", admin.server_version_num(), config.tools.bin_dir, config.tools.exclusive)
            if owners:
                missing = missing_roles(admin, archive_roles(tool, archive, timeout))
                checks["roles"] = {"ok": not missing, "missing": missing}
                if missing:
                    checks["roles"]["error"] = (
                        f"roles {', '.join(missing)} own objects of the backup or hold grants in it but do not exist "
                        "on the server; create them (pg_dumpall --roles-only on the source lists them), then run again")
                    return verification_outcome(checks, restore_seconds, run_amcheck)
            restore_seconds = round(pg_restore(tool, admin, database, archive, policy.jobs, owners, timeout), 3)
            checks["restore"] = {"ok": True, "seconds": restore_seconds, "jobs": policy.jobs,
                                 "owners_and_grants": "restored" if owners else "skipped (--no-owner --no-privileges)"}
            restored = DbopsPostgresHook(postgres_conn_id=admin.postgres_conn_id, database=database)
            checks.update(check_restored(restored, manifest))
            if run_amcheck:
                checks["amcheck"] = amcheck(admin, database, policy.jobs, config.tools, timeout)
        except ChecksumMismatch as err:
            checks["checksums"] = {"ok": False, "error": str(err)}
        except ToolError as err:
            if err.transient:
                raise
            checks["restore"] = {"ok": False, "error": str(err)}
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return verification_outcome(checks, restore_seconds, run_amcheck)


def verification_outcome(checks: dict[str, Any], restore_seconds: float | None, run_amcheck: bool) -> dict[str, Any]:
    failed = [f"{name}: {check.get('error') or _describe_failure(check)}"
              for name, check in checks.items() if not check.get("ok")]
    complete = "row_counts" in checks and (not run_amcheck or "amcheck" in checks)
    return {"ok": not failed and complete, "checks": checks, "restore_seconds": restore_seconds,
            "error": "; ".join(failed) or None}


def _describe_failure(check: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in check.items() if k != "ok" and v)


def check_line(name: str, check: dict[str, Any]) -> str:
    """One log line of a check: ``PASS``, ``FAIL`` or, for a check that did not run, ``SKIP`` and why."""
    if check.get("skipped"):
        return f"SKIP {name}: {check['skipped']}"
    details = {k: v for k, v in check.items() if k != "ok"}
    return f"{'PASS' if check.get('ok') else 'FAIL'} {name}: {details}"
