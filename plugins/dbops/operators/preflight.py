"""Preflight: can dbops do its work on a target? One verdict per check, recorded in the ops database.

PostgreSQL and MongoDB targets have their own server checks; the backup store and ops migrations
checks, the recording and the summary are the same for both.
"""

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
    from pymongo import MongoClient

    from dbops.core.config import DbopsConfig, ToolsConfig
    from dbops.hooks.mongo import DbopsMongoHook
    from dbops.hooks.postgres import DbopsPostgresHook

MIN_SERVER_VERSION_NUM = 130000
CLIENT_TOOLS = ("pg_dump", "pg_restore", "psql")
# MongoDB 4.4.2: the dump reads collections in snapshot transactions (4.0) within mongod's snapshot history
# window (minSnapshotHistoryWindowInSeconds, 4.4) and asks the server ``hello`` (4.4.2); pymongo needs 4.4.
MIN_MONGO_VERSION = (4, 4, 2)
MONGO_CHECKS = ("server_version", "replica_set", "oplog")


class PreflightWarning(Exception):
    """A probe's finding that does not stop dbops but weakens what it does (verdict WARN)."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: str  # PASS, WARN, FAIL or SKIP
    detail: str
    transient: bool = False

    @property
    def line(self) -> str:
        return f"{self.verdict} {self.name}: {self.detail}"


class PreflightOperator(TargetOperator):
    """Check one target: connectivity, server version, client tools (PostgreSQL) or replica set and oplog
    (MongoDB), backup store, ops migrations.

    Every check runs even when an earlier one fails (those that need the target are skipped when it is
    unreachable), the log ends with one verdict line per check, and the results are recorded in the
    ops database. The task fails if any check failed: retried when every failure may pass by itself
    (e.g. connection refused), failed at once otherwise.

    :param target: the target's key in dbops.yaml.
    :param config_path: the config file; default ``$DBOPS_CONFIG`` or include/config/dbops.yaml.
    """

    def execute(self, context: Context) -> dict[str, str]:
        config = self.load_config()
        server_checks = _mongo_checks if config.targets[self.target].engine == "mongodb" else _postgres_checks
        results = [*server_checks(config, self.target),
                   _check("backup_store", lambda: _store(config, self.target)),
                   _check("ops_migrations", lambda: _ops_migrations(config.ops_conn_id))]
        self._record(config, context, results)
        for result in results:
            self.log.info("%s", result.line)
        failed = [r for r in results if r.verdict == "FAIL"]
        warned = sum(r.verdict == "WARN" for r in results)
        summary = (f"preflight {self.target}: {len(results) - len(failed)} of {len(results)} checks passed "
                   f"or skipped, {len(failed)} failed" + (f", {warned} with a warning" if warned else ""))
        self.log.info("%s", summary)
        if failed:
            message = f"{summary}: " + "; ".join(r.line for r in failed)
            if all(r.transient for r in failed):
                raise AirflowException(message)
            raise AirflowFailException(message)
        return {r.name: r.verdict for r in results}

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


def _postgres_checks(config: DbopsConfig, target: str) -> list[CheckResult]:
    """Connectivity, server version and client tools of a PostgreSQL target."""
    from dbops.hooks.postgres import DbopsPostgresHook

    hook = DbopsPostgresHook(postgres_conn_id=config.targets[target].conn_id)
    connectivity = _check("connectivity", lambda: _connect(hook))
    if connectivity.verdict != "PASS":
        return [connectivity, *_unreachable(("server_version", "dump_access", *CLIENT_TOOLS))]
    version = hook.server_version_num()
    return [connectivity, _check("server_version", lambda: _server_version(version)),
            _check("dump_access", lambda: _dump_access(hook)),
            *(_check(tool, lambda tool=tool: _tool(tool, version, config.tools)) for tool in CLIENT_TOOLS)]


def _mongo_checks(config: DbopsConfig, target: str) -> list[CheckResult]:
    """Connectivity and authentication, server version, replica set and oplog of a MongoDB target."""
    from dbops.hooks.mongo import DbopsMongoHook

    with DbopsMongoHook(mongo_conn_id=config.targets[target].conn_id) as hook:  # closes the client
        connectivity = _check("connectivity", lambda: _mongo_connect(hook))
        if connectivity.verdict != "PASS":
            return [connectivity, *_unreachable(MONGO_CHECKS)]
        client = hook.get_conn()
        version = _check("server_version", lambda: _mongo_version(client.admin.command("buildInfo")))
        replica_set = _check("replica_set", lambda: _replica_set(client))
        oplog = (CheckResult("oplog", "SKIP", "standalone server: no oplog") if replica_set.verdict == "WARN"
                 else _check("oplog", lambda: _oplog(client)))
    return [connectivity, version, replica_set, oplog]


def _unreachable(names: tuple[str, ...]) -> list[CheckResult]:
    return [CheckResult(name, "SKIP", "target unreachable") for name in names]


def _check(name: str, probe: Callable[[], str]) -> CheckResult:
    """Run one probe; its return value is the detail, a :class:`PreflightWarning` a WARN, any other
    exception a FAIL."""
    try:
        return CheckResult(name, "PASS", probe())
    except PreflightWarning as warning:
        return CheckResult(name, "WARN", str(warning))
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


_ROW_SECURITY_FIX = ("pg_dump refuses a table whose row-level security applies to its role (it never dumps a "
                     "filtered table): ALTER ROLE <backup role> BYPASSRLS, or back up as the tables' owner without "
                     "FORCE ROW LEVEL SECURITY.")


def _access_fix(kind: str) -> str:
    """What to grant for objects of ``kind`` the role cannot dump (the nightly dump's own words where it has them)."""
    from dbops.core.errors import dump_permission_fix

    if kind == "row-level security table":
        return _ROW_SECURITY_FIX
    return dump_permission_fix("permission denied for large object" if kind == "large object" else "permission denied")


def _dump_access(hook: DbopsPostgresHook) -> str:
    """Fail when the role cannot read a schema, table, sequence or large object that pg_dump reads."""
    from dbops.core.config import QUERIES_DIR

    role = hook.get_first("SELECT current_user")[0]
    missing = hook.get_records((QUERIES_DIR / "dump_read_access.sql").read_text())
    if not missing:
        return f"role {role} can read every schema, table, sequence and large object the dump reads"
    found = "; ".join(f"{count} {kind}{'s' if count > 1 else ''} ({', '.join(first)}{', …' if count > 5 else ''})"
                      for kind, count, first in missing)
    fixes = {_access_fix(kind) for kind, _, _ in missing}
    raise PermissionError(f"the nightly dump would fail: role {role} cannot read {found}. "
                          + " ".join(sorted(fixes)).replace("<backup role>", role))


def _mongo_connect(hook: DbopsMongoHook) -> str:
    """Connect and authenticate (a ``ping`` needs an authenticated connection)."""
    from pymongo.errors import OperationFailure

    conn = hook.connection
    started = time.monotonic()
    try:
        hook.get_conn().admin.command("ping")
    except OperationFailure as err:
        if err.code != 18:  # AuthenticationFailed
            raise
        raise ValueError(f"authentication as {conn.login!r} failed: fix the login and password of Airflow "
                         f"connection {hook.mongo_conn_id} (or the user on the server)") from err
    elapsed_ms = (time.monotonic() - started) * 1000
    return f"{conn.host}:{conn.port}/{hook.database} as {conn.login!r} answered in {elapsed_ms:.0f} ms"


def _mongo_version(info: dict) -> str:
    """The server's version from its ``buildInfo``, refused below :data:`MIN_MONGO_VERSION`."""
    version = tuple(info["versionArray"][:3])
    minimum = ".".join(map(str, MIN_MONGO_VERSION))
    if version < MIN_MONGO_VERSION:
        raise ValueError(f"MongoDB {info['version']} is older than the supported minimum {minimum} (snapshot "
                         "transactions, snapshot history window, the hello command)")
    return f"MongoDB {info['version']}"


def _replica_set(client: MongoClient) -> str:
    """The connected member must be the primary of a replica set; a standalone server is a warning."""
    hello = client.admin.command("hello")
    name = hello.get("setName")
    if name is None:
        raise PreflightWarning("standalone server: no oplog and no snapshot transactions, so backups are NOT "
                               "point-in-time consistent; run it as a replica set")
    if not hello.get("isWritablePrimary"):
        raise ConnectionError(f"replica set {name}: {hello.get('me')} is not the primary "
                              f"(primary: {hello.get('primary') or 'none'}); backups read from the primary")
    return f"replica set {name}: {hello['me']} is the primary of {len(hello.get('hosts', []))} member(s)"


def _oplog(client: MongoClient) -> str:
    """The oplog can be read (as the dump does) and how many hours it spans."""
    oplog = client.local["oplog.rs"]
    first, last = (oplog.find_one({}, {"ts": 1}, sort=[("$natural", order)]) for order in (1, -1))
    if first is None or last is None:
        raise ValueError("local.oplog.rs is empty: the server keeps no oplog")
    hours = (last["ts"].time - first["ts"].time) / 3600
    return f"local.oplog.rs readable, {hours:.1f} h of history"


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
