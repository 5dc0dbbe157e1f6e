"""Preflight: can dbops do its work on a target? One verdict per check, recorded in the ops database."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.core.errors import is_transient
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.core.config import DbopsConfig, ToolsConfig
    from dbops.hooks.postgres import DbopsPostgresHook

MIN_SERVER_VERSION_NUM = 130000
CLIENT_TOOLS = ("pg_dump", "pg_restore", "psql")


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: str  # PASS, FAIL or SKIP
    detail: str
    transient: bool = False

    @property
    def line(self) -> str:
        return f"{self.verdict} {self.name}: {self.detail}"


class PreflightOperator(TargetOperator):
    """Check one target: connectivity, server version, client tools, backup store, ops migrations.

    Every check runs even when an earlier one fails (those that need the target are skipped when it is
    unreachable), the log ends with one verdict line per check, and the results are recorded in the
    ops database. The task fails if any check failed: retried when every failure may pass by itself
    (e.g. connection refused), failed at once otherwise.

    :param target: the target's key in dbops.yaml.
    :param config_path: the config file; default ``$DBOPS_CONFIG`` or include/config/dbops.yaml.
    """

    def execute(self, context: Context) -> dict[str, str]:
        from dbops.hooks.postgres import DbopsPostgresHook

        config = self.load_config()
        hook = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        results = self._run_checks(config, hook)
        self._record(config, context, results)
        for result in results:
            self.log.info("%s", result.line)
        failed = [r for r in results if r.verdict == "FAIL"]
        summary = (f"preflight {self.target}: {len(results) - len(failed)} of {len(results)} checks passed "
                   f"or skipped, {len(failed)} failed")
        self.log.info("%s", summary)
        if failed:
            message = f"{summary}: " + "; ".join(r.line for r in failed)
            if all(r.transient for r in failed):
                raise AirflowException(message)
            raise AirflowFailException(message)
        return {r.name: r.verdict for r in results}

    def _run_checks(self, config: DbopsConfig, hook: DbopsPostgresHook) -> list[CheckResult]:
        connectivity = _check("connectivity", lambda: _connect(hook))
        results = [connectivity]
        if connectivity.verdict == "PASS":
            version = hook.server_version_num()
            results.append(_check("server_version", lambda: _server_version(version)))
            for tool in CLIENT_TOOLS:
                results.append(_check(tool, lambda tool=tool: _tool(tool, version, config.tools)))
        else:
            skipped = ("server_version", *CLIENT_TOOLS)
            results += [CheckResult(name, "SKIP", "target unreachable") for name in skipped]
        results.append(_check("backup_store", lambda: _store(config, self.target)))
        results.append(_check("ops_migrations", lambda: _ops_migrations(config.ops_conn_id)))
        return results

    def _record(self, config: DbopsConfig, context: Context, results: list[CheckResult]) -> None:
        """Store the verdicts in the ops database; an unreachable ops database is already a FAIL."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        run_id = context["run_id"] if "run_id" in context else "manual"
        rows = [(self.target, run_id, r.name, r.verdict != "FAIL", r.line) for r in results]
        try:
            PostgresHook(postgres_conn_id=config.ops_conn_id).insert_rows(
                "dbops.preflight_results", rows, target_fields=["target", "run_id", "check_name", "ok", "detail"])
        except Exception as err:  # the ops_migrations check has reported why
            self.log.warning("could not record preflight results in the ops database: %s", err)


def _check(name: str, probe: Callable[[], str]) -> CheckResult:
    """Run one probe; its return value is the detail, any exception a FAIL."""
    try:
        return CheckResult(name, "PASS", probe())
    except Exception as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        return CheckResult(name, "FAIL", detail, transient=is_transient(err))


def _connect(hook: DbopsPostgresHook) -> str:
    started = time.monotonic()
    hook.get_first("SELECT 1")
    conn = hook.connection
    elapsed_ms = (time.monotonic() - started) * 1000
    return f"{conn.host}:{conn.port}/{hook.database or conn.schema} answered in {elapsed_ms:.0f} ms"


def _server_version(version: int) -> str:
    from dbops.hooks.tools import format_server_version

    if version < MIN_SERVER_VERSION_NUM:
        raise ValueError(f"PostgreSQL {format_server_version(version)} is older than the supported minimum "
                         f"{format_server_version(MIN_SERVER_VERSION_NUM)}")
    return f"PostgreSQL {format_server_version(version)}"


def _tool(name: str, server_version_num: int, tools: ToolsConfig) -> str:
    from dbops.hooks.tools import find_tool

    tool = find_tool(name, server_version_num, tools.bin_dir, tools.exclusive)
    return f"{tool.name} {tool.version} at {tool.path}"


def _store(config: DbopsConfig, target: str) -> str:
    from dbops.hooks.store import get_store

    storage = config.store_for(target)
    if storage is None:
        return "no backup policy configured"
    store = get_store(storage)
    store.check_writable()
    return f"{store.describe()} is writable"


def _ops_migrations(ops_conn_id: str) -> str:
    from dbops.core.migrations import discover, pending
    from dbops.hooks.ops import OpsDatabaseHook

    with OpsDatabaseHook(postgres_conn_id=ops_conn_id).transaction() as conn:
        todo = pending(conn)
    if todo:
        names = ", ".join(m.path.name for m in todo)
        raise ValueError(f"{len(todo)} ops migration(s) not applied: {names} (run `make run` or apply them)")
    return f"current ({len(discover())} applied)"
