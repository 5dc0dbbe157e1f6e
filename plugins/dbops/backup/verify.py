"""Prove a restored backup: row counts and constraints against the manifest's snapshot, amcheck; and the
verification restore that fetches, restores and checks a stored backup in a scratch database: on a throwaway
cluster on the worker (:mod:`dbops.backup.throwaway`) by default, else on the server ``backup.verify_conn_id``
names, or on the target's own server when ``backup.verify_on_target`` says so."""

from __future__ import annotations

import hashlib
import shutil
from typing import Any

import psycopg
from airflow.sdk.exceptions import AirflowFailException
from psycopg import sql

from dbops.backup.dump import constraints, count_rows
from dbops.backup.policy import BackupPolicy
from dbops.backup.restore import ArchiveNeeds, archive_needs, fetch, missing_roles, pg_restore
from dbops.backup.staging import held_staging
from dbops.core.config import DbopsConfig, ToolsConfig
from dbops.core.manifest import Manifest
from dbops.core.processes import DEFAULT_TIMEOUT, ToolError, run
from dbops.core.store import BackupStore
from dbops.core.streams import ChecksumMismatch
from dbops.core.units import human_bytes
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


class VerificationCannotRun(AirflowFailException):
    """The verification restore cannot run where it is configured to (room, extensions, locales): the backup may
    well be good; someone must change the worker or the configuration."""


def verification_server(config: DbopsConfig, target: str, database: str = "postgres") -> DbopsPostgresHook:
    """A hook on the server restores on demand go to (``backup.verify_conn_id``, default the target's own)."""
    policy = config.targets[target].backup
    conn_id = (policy.verify_conn_id if policy else None) or config.targets[target].conn_id
    return DbopsPostgresHook(postgres_conn_id=conn_id, database=database)


def verify_restore_server(config: DbopsConfig, target: str) -> DbopsPostgresHook | None:
    """A hook on the server a backup's verification restore goes to: ``backup.verify_conn_id``'s, or the target's
    own with ``backup.verify_on_target``; None for the default, a throwaway cluster on the worker."""
    policy = config.targets[target].backup
    if policy is None or not (policy.verify_conn_id or policy.verify_on_target):
        return None
    return verification_server(config, target)


def on_target_cost(target: str, manifest: Manifest) -> str:
    """What ``backup.verify_on_target`` costs, for the log of each verification it sends to the target's server."""
    raw = sum(f.raw_bytes for f in manifest.files)
    return (f"backup.verify_on_target is set: this verification writes a full copy of {target} (about "
            f"{human_bytes(raw)} of data, plus its indexes) on the target's own server: its disk and I/O, and as much "
            "WAL, which every standby replays and pg_wal_ship__ ships and stores as if it were the application's. "
            "Remove verify_on_target to verify in a throwaway cluster on the worker, or set verify_conn_id")


def check_room(config: DbopsConfig, policy: BackupPolicy, manifest: Manifest, throwaway: bool) -> None:
    """Refuse before fetching anything when ``staging_dir`` cannot hold the fetched archive (the dump's
    uncompressed size) and, for a ``throwaway`` cluster, the restored copy (``verify_space_factor`` times it)."""
    raw = sum(f.raw_bytes for f in manifest.files)
    needed = round(raw * (1 + (policy.verify_space_factor if throwaway else 0)))
    config.staging_path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(config.staging_path).free
    if free >= needed:
        return
    what = (f"the fetched archive plus the throwaway cluster's copy (backup.verify_space_factor="
            f"{policy.verify_space_factor:g} times it)" if throwaway else "the fetched archive")
    raise VerificationCannotRun(
        f"not enough room to restore {manifest.location}: staging_dir {config.staging_path} has {human_bytes(free)} "
        f"free, the restore needs {human_bytes(needed)}: the dump is {human_bytes(raw)} uncompressed, and it needs "
        f"{what}. Nothing was fetched or restored. Free space, set staging_dir in dbops.yaml to a larger volume"
        + (", or set backup.verify_conn_id to restore on a verification server" if throwaway else ""))


def unsupported(admin: DbopsPostgresHook, database: str, needs: ArchiveNeeds) -> list[str]:
    """What ``needs`` asks of the server that it lacks: extensions not available, pg_catalog collations and
    collation locales it does not have. Probed in ``database`` (a collation is created and rolled back)."""
    lacking = []
    available = {row[0] for row in admin.get_records("SELECT name FROM pg_available_extensions")}
    if missing := sorted(needs.extensions - available):
        lacking.append(f"extensions {', '.join(missing)}")
    known = {row[0] for row in admin.get_records("SELECT collname FROM pg_collation")}
    if missing := sorted(needs.collations - known):
        lacking.append(f"collations {', '.join(missing)}")
    bad_locales = []
    with on_database(admin, database).get_conn() as conn:
        for provider, locale in sorted(needs.locales):
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute(sql.SQL("CREATE COLLATION {} (provider = {}, locale = {})").format(
                        sql.Identifier("dbops_locale_probe"), sql.Identifier(provider), sql.Literal(locale)))
            except psycopg.Error:
                bad_locales.append(f"{locale} ({provider})")
    if bad_locales:
        lacking.append(f"collation locales {', '.join(bad_locales)}")
    return lacking


def on_database(admin: DbopsPostgresHook, database: str) -> DbopsPostgresHook:
    """A hook like ``admin`` on its server's ``database``."""
    return DbopsPostgresHook(postgres_conn_id=admin.postgres_conn_id, connection=admin.connection, database=database)


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
                      timeout: float, server: str = "the verification server",
                      create_roles: bool = False) -> dict[str, Any]:
    """Fetch, restore into the existing ``database`` and check it; a definite failure is an outcome with
    ``ok`` false, a transient fault an exception.

    With ``owners`` the objects keep their owners and grants, and every role the backup names must exist
    (checked before restoring; with ``create_roles`` the missing ones are created, without passwords: for a
    throwaway cluster); without, both are skipped. Extensions, collations and locales the backup needs and the
    server (described by ``server``) lacks raise :class:`VerificationCannotRun` before restoring. Each tool runs
    at most ``timeout`` seconds.
    """
    checks: dict[str, Any] = {}
    restore_seconds = None
    with held_staging(config.staging_path / f"restore__{database}", "restore__*") as staging:
        try:
            archive = fetch(store, manifest, manifest.backup_id, staging, encryption_key(policy.encryption_conn_id))
            checks["checksums"] = {"ok": True, "files": [f.name for f in manifest.files]}
            tool = find_tool("pg_restore", admin.server_version_num(), config.tools.bin_dir, config.tools.exclusive)
            needs = archive_needs(tool, archive, timeout)
            lacking = unsupported(admin, database, needs)
            if lacking:
                raise VerificationCannotRun(
                    f"backup {manifest.location} needs {'; '.join(lacking)}, which {server} lacks; nothing was "
                    "restored. Install them there (for its PostgreSQL major version), or set backup.verify_conn_id "
                    "to a server that has them")
            if owners and create_roles:
                created = create_missing_roles(admin, needs.roles)
                checks["roles"] = {"ok": True, "created": created}
            elif owners:
                missing = missing_roles(admin, needs.roles)
                checks["roles"] = {"ok": not missing, "missing": missing}
                if missing:
                    checks["roles"]["error"] = (
                        f"roles {', '.join(missing)} own objects of the backup or hold grants in it but do not exist "
                        "on the server; create them (pg_dumpall --roles-only on the source lists them), then run again")
                    return verification_outcome(checks, restore_seconds, run_amcheck)
            restore_seconds = round(pg_restore(tool, admin, database, archive, policy.jobs, owners, timeout), 3)
            checks["restore"] = {"ok": True, "seconds": restore_seconds, "jobs": policy.jobs,
                                 "owners_and_grants": "restored" if owners else "skipped (--no-owner --no-privileges)"}
            checks.update(check_restored(on_database(admin, database), manifest))
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


def create_missing_roles(admin: DbopsPostgresHook, roles: set[str]) -> list[str]:
    """Create those of ``roles`` the server lacks (NOLOGIN, no password); return them."""
    missing = missing_roles(admin, roles)
    with admin.get_conn() as conn:
        conn.autocommit = True
        for role in missing:
            conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
    return missing


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
