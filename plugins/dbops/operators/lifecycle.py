"""Data lifecycle: check the policies against the target, archive moves, retention purges."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowFailException

from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    import psycopg
    from airflow.sdk import Context

    from dbops.core.config import DbopsConfig
    from dbops.lifecycle.batches import Limits
    from dbops.lifecycle.catalog import TableInfo
    from dbops.lifecycle.policy import LifecyclePolicy, LifecycleSection

JOBS = ("archive", "retention")
APPLICATION_NAME = "dbops_lifecycle"
LOCK_WAIT_SECONDS = 120  # another lifecycle task of the target waits this long, then fails to be retried


def selected(section: LifecycleSection, job: str, cadence: str | None = None) -> list[LifecyclePolicy]:
    """The policies a task works on: archive moves (of one cadence, when given) or retention purges."""
    if job == "archive":
        return [p for p in section.policies if p.archive_after is not None and cadence in (None, p.cadence)]
    return [p for p in section.policies if p.retention is not None]


class _LifecycleOperator(TargetOperator):
    """A target operator that needs the target's lifecycle section and a connection to the target.

    :param job: ``archive`` (moves) or ``retention`` (purges).
    :param cadence: archive only the policies of this cadence (``monthly`` or ``daily``); None: all.
    :param lock_wait: seconds to wait for another lifecycle task of the target to finish; then this try
        fails (never skips: the moves and purges must not end green undone) and Airflow retries it.
    """

    template_fields: Sequence[str] = ("target",)

    def __init__(self, *, job: str, cadence: str | None = None, lock_wait: float = LOCK_WAIT_SECONDS,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock_wait = lock_wait
        if job not in JOBS:
            raise ValueError(f"job must be one of {JOBS}, not {job!r}")
        self.job = job
        self.cadence = cadence

    def _setup(self) -> tuple[DbopsConfig, LifecycleSection, list[LifecyclePolicy]]:
        config = self.load_config()
        if self.target not in config.targets:
            raise AirflowFailException(f"target {self.target!r} is not in {config.path}")
        section = config.targets[self.target].lifecycle
        if section is None:
            raise AirflowFailException(f"target {self.target!r} has no lifecycle section in {config.path}")
        return config, section, selected(section, self.job, self.cadence)

    def _connect(self, config: DbopsConfig) -> psycopg.Connection:
        from dbops.core.errors import classify
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.lifecycle.session import prepare

        try:
            conn = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id).get_conn()
            conn.autocommit = True
            conn.execute("SELECT set_config('application_name', %s, false)", (APPLICATION_NAME,))
            prepare(conn)  # UTC, and row-level security raises instead of hiding rows
        except Exception as err:
            raise classify(err, f"connecting to {self.target} failed") from err
        return conn

    def _check(self, conn: psycopg.Connection, config: DbopsConfig,
               policies: list[LifecyclePolicy]) -> dict[str, TableInfo]:
        from dbops.core.errors import classify
        from dbops.lifecycle.catalog import PolicyProblem, check_policies

        try:
            infos, warnings = check_policies(conn, config.path, self.target, policies, self.job)
        except PolicyProblem as err:
            raise AirflowFailException(f"{err}. Fix the policy or the table; nothing was changed") from err
        except Exception as err:
            raise classify(err, f"inspecting the tables of {self.target} failed") from err
        for warning in warnings:
            self.log.warning("%s", warning)
        return infos


class LifecycleCheckOperator(_LifecycleOperator):
    """The run-time half of the policy validation, before anything moves: every table and column the
    policies name exists, each table has a primary key, no archive column changed its type or is NOT NULL
    but gone from the table, no row-level security hides rows from the role, no user trigger would fire
    (unless the policy says ``triggers: fire``); a time column that leads no index is a warning. Fails at
    once (naming file, target, key and table) otherwise."""

    def execute(self, context: Context) -> dict[str, Any]:
        config, _, policies = self._setup()
        conn = self._connect(config)
        try:
            infos = self._check(conn, config, policies)
        finally:
            conn.close()
        self.log.info("OK: %d %s policies of %s fit their tables: %s", len(policies), self.job, self.target,
                      ", ".join(infos) or "none")
        return {"tables": list(infos)}


class LifecycleOperator(_LifecycleOperator):
    """Archive moves (``job="archive"``) or retention purges (``job="retention"``) of a target's policies,
    children before parents, in batches, within the section's time budget.

    One summary line per policy (moved, purged, held back, batches, seconds, cutoff), each recorded in
    ``dbops.lifecycle_runs``. A policy that cannot go on (a key already archived, a changed column type) is
    recorded as failed and the others still run; the task fails at the end naming it. A transient error
    (connection lost, a lock held past the batch's retries) fails the task at once, to be retried: the
    retry continues where it stopped, moving nothing twice.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config, section, policies = self._setup()
        with job_lock(config.ops_conn_id, self.target, "lifecycle", wait_seconds=self.lock_wait,
                      retry_when_busy=True):
            return self._execute(context, config, section, policies)

    def _execute(self, context: Context, config: DbopsConfig, section: LifecycleSection,
                 policies: list[LifecyclePolicy]) -> dict[str, Any]:
        from dbops.core.runs import interval_end
        from dbops.lifecycle.batches import Limits
        from dbops.lifecycle.catalog import fk_order

        base = interval_end(context)
        limits = Limits(section.batch_seconds, section.pause, time.monotonic() + section.time_budget,
                        section.lock_timeout, section.statement_timeout, section.lock_retries,
                        section.progress_every)
        conn = self._connect(config)
        results, failed = [], []
        try:
            infos = self._check(conn, config, policies)
            for policy in fk_order(policies, infos):
                result = self._policy(context, config, conn, policy, infos[policy.table], base, limits)
                results.append(result)
                if result["status"] == "failed":
                    failed.append(f"{policy.table}: {result['error']}")
        finally:
            conn.close()
        total = sum(r.get("rows_moved", 0) + r.get("rows_purged", 0) for r in results)
        self.log.info("%s of %s: %d policies, %d rows %s, %d held back, %d failed", self.job, self.target,
                      len(results), total, "moved" if self.job == "archive" else "purged",
                      sum(r.get("rows_held_back", 0) for r in results), len(failed))
        if failed:
            raise AirflowFailException(f"{self.job} of {self.target}: {'; '.join(failed)}")
        return {"policies": results}

    def _policy(self, context: Context, config: DbopsConfig, conn: psycopg.Connection, policy: LifecyclePolicy,
                info: TableInfo, base: datetime, limits: Limits) -> dict[str, Any]:
        """Work on one policy, recorded in the ops database; returns its figures (and status)."""
        from dbops.core.errors import classify
        from dbops.core.runs import run_date
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.lifecycle import record
        from dbops.lifecycle.archive import KeyAlreadyArchived
        from dbops.lifecycle.archive_table import ArchiveDrift

        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        age = policy.archive_after if self.job == "archive" else policy.retention
        cutoff = base - timedelta(seconds=age)
        cadence = policy.cadence_seconds if self.job == "archive" else 86400.0
        try_number = int(getattr(context["ti"], "try_number", 1) or 1)
        try:
            with ops.transaction() as ops_conn:
                for line in record.reconcile(ops_conn, self.target, self.job, policy.table, context["run_id"],
                                             try_number):
                    self.log.warning("%s %s: %s", self.job, policy.table, line)
                entry = record.start(ops_conn, self.target, self.job, policy.table, run_date(context),
                                     context["run_id"], try_number, cutoff, cadence)
        except Exception as err:
            raise classify(err, "recording the lifecycle run in the ops database failed") from err
        try:
            if self.job == "archive":
                figures = self._archive(config, conn, policy, info, cutoff, limits)
            else:
                figures = self._retention(config, conn, policy, info, cutoff, limits)
        except (KeyAlreadyArchived, ArchiveDrift) as err:
            self._finish(ops, entry, "failed", {}, str(err))
            self.log.error("%s: %s", policy.table, err)
            return {"table": policy.table, "status": "failed", "cutoff": cutoff.isoformat(), "error": str(err)}
        except Exception as err:
            failure = classify(err, f"{self.job} of {policy.table} on {self.target} failed")
            self._finish(ops, entry, "failed", {}, str(failure))
            raise failure from err
        status = "partial" if figures.pop("stopped", None) else "done"
        self._finish(ops, entry, status, figures)
        self.log.info(
            "%s %s: %s moved, %s purged, %s held back, %s behind, %s batches, %.1f s, cutoff %s%s", self.job,
            policy.table, figures.get("rows_moved", 0), figures.get("rows_purged", 0),
            figures.get("rows_held_back", 0), figures.get("rows_behind", 0), figures.get("batches", 0),
            figures.get("seconds", 0.0), cutoff.isoformat(),
            " - stopped at the time budget; the next run continues" if status == "partial" else "",
            table=policy.table, cutoff=cutoff.isoformat(), **{k: v for k, v in figures.items() if k != "table"})
        return {"table": policy.table, "status": status, "cutoff": cutoff.isoformat(), **figures}

    def _archive(self, config: DbopsConfig, conn: psycopg.Connection, policy: LifecyclePolicy, info: TableInfo,
                 cutoff: datetime, limits: Limits) -> dict[str, Any]:
        from dbops.lifecycle.archive import archive_policy
        from dbops.lifecycle.archive_table import ensure_archive_table
        from dbops.lifecycle.record import tally_figures

        to_database = policy.archive_storage == "database"
        if to_database:
            for change in ensure_archive_table(conn, info, limits.lock_timeout):
                self.log.info("%s", change)
        scope = self._scope(policy, info, cutoff)
        tally = archive_policy(conn, scope, info, limits, to_database, self._exporter(config, policy, cutoff),
                               self.log)
        behind, held = scope.leftovers(conn)
        return {**tally_figures(tally, "rows_moved"), "rows_held_back": held, "rows_behind": behind,
                "stopped": tally.stopped}

    def _retention(self, config: DbopsConfig, conn: psycopg.Connection, policy: LifecyclePolicy, info: TableInfo,
                   cutoff: datetime, limits: Limits) -> dict[str, Any]:
        from dataclasses import replace

        from dbops.lifecycle.catalog import describe
        from dbops.lifecycle.policy import ARCHIVE_SCHEMA
        from dbops.lifecycle.purge import purge
        from dbops.lifecycle.record import tally_figures

        scope = self._scope(policy, info, cutoff)
        tally = purge(conn, scope, limits, self.log)
        figures = tally_figures(tally, "rows_purged")
        behind, held = scope.leftovers(conn)
        figures |= {"rows_held_back": held, "rows_behind": behind}
        archive = describe(conn, ARCHIVE_SCHEMA, info.name) if policy.archive_after else None
        if archive is not None and not tally.stopped:
            more = purge(conn, replace(scope, schema=ARCHIVE_SCHEMA, primary_key=archive.primary_key,
                                       references=()), limits, self.log)
            figures["rows_purged"] += more.rows
            figures["batches"] += more.batches
            figures["seconds"] = round(figures["seconds"] + more.seconds, 3)
            figures["max_batch_seconds"] = max(figures["max_batch_seconds"], round(more.max_batch_seconds, 3))
            tally.stopped = more.stopped
        if policy.exports:
            from dbops.lifecycle.export import purge_exports

            figures["files_deleted"] = purge_exports(conn, self._store(config), self.target, policy, cutoff)
        return {**figures, "stopped": tally.stopped}

    @staticmethod
    def _scope(policy: LifecyclePolicy, info: TableInfo, cutoff: datetime):
        from dbops.lifecycle.batches import Scope

        return Scope(info.schema, info.name, info.primary_key, policy.time_column, cutoff, tuple(policy.filter),
                     info.references)

    def _store(self, config: DbopsConfig):
        from dbops.hooks.store import get_store

        return get_store(config.store_for(self.target))

    def _exporter(self, config: DbopsConfig, policy: LifecyclePolicy, cutoff: datetime):
        if not policy.exports:
            return None
        from dbops.lifecycle.export import Exporter

        return Exporter(self._store(config), self.target, policy, cutoff)

    def _finish(self, ops: Any, entry: int, status: str, figures: dict[str, Any], error: str | None = None) -> None:
        from dbops.core.errors import classify
        from dbops.lifecycle import record

        try:
            with ops.transaction() as conn:
                record.finish(conn, entry, status, figures, error)
        except Exception as err:
            raise classify(err, "recording the lifecycle run in the ops database failed") from err
