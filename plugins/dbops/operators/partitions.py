"""Partition management of one target: inspect and plan, apply, report. The work lives in
:mod:`dbops.partitions`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from datetime import datetime

    import psycopg
    from airflow.sdk import Context

    from dbops.core.config import DbopsConfig
    from dbops.partitions.tree import TableInspection
    from dbops.partitions.plan import TablePlan
    from dbops.partitions.policy import PartitionsPolicy

LOCK_WAIT_SECONDS = 60


class _PartitionsOperator(TargetOperator):
    """A target operator that needs the target's partitions policy."""

    template_fields: Sequence[str] = ("target",)

    def _setup(self) -> tuple[DbopsConfig, PartitionsPolicy]:
        config = self.load_config()
        if self.target not in config.targets:
            raise AirflowFailException(f"target {self.target!r} is not in {config.path}")
        policy = config.targets[self.target].partitions
        if policy is None:
            raise AirflowFailException(f"target {self.target!r} has no partitions section in {config.path}")
        return config, policy

    def _inspect_all(self, config: DbopsConfig, policy: PartitionsPolicy, conn: psycopg.Connection,
                     logical_date: datetime, exact_counts: bool = False
                     ) -> list[tuple[TableInspection | None, TablePlan]]:
        """Inspect and plan every configured table; a table that cannot be managed gets a plan with its error.
        The plans see the target's retirements (``dbops.partition_retirements``, read from the ops database)."""
        import psycopg

        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.partitions.record import retired_ranges
        from dbops.partitions.tree import TableSetupError, inspect_table
        from dbops.partitions.plan import TablePlan, plan_table

        with OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).transaction() as ops:
            retired = retired_ranges(ops, self.target)
        results = []
        for table, table_policy in policy.tables.items():
            where = f"{config.path}: target '{self.target}': partitions.tables.{table}"
            try:
                found = inspect_table(conn, table, table_policy, where, exact_counts)
            except TableSetupError as err:
                conn.rollback()
                results.append((None, TablePlan(table, error=str(err))))
                continue
            except psycopg.errors.LockNotAvailable as err:
                conn.rollback()
                results.append((None, TablePlan(table, error=f"{where}: catalog read waited too long: {err}")))
                continue
            results.append((found, plan_table(found, table_policy, logical_date, retired.get(table, ()))))
        return results

    def _connect(self, config: DbopsConfig, policy: PartitionsPolicy) -> psycopg.Connection:
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.partitions.tree import session

        conn = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id).get_conn()
        session(conn, policy.lock_timeout, policy.statement_timeout)
        return conn


class PartitionsPlanOperator(_PartitionsOperator):
    """Inspect every configured table from the catalogs and plan from the run's logical date; log and record
    the plan (``dbops.partition_runs``) and the tables' state (``dbops.partition_status``). Changes nothing.

    Returns the plan (XCom); with the ``dry_run`` Param the run stops after it.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from contextlib import closing

        from dbops.core.errors import classify
        from dbops.core.runs import run_date
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.partitions import record
        from dbops.partitions.plan import covered_until, floor, format_plan

        config, policy = self._setup()
        logical_date = run_date(context)
        dry_run = bool(context.get("params", {}).get("dry_run"))
        try:
            with closing(self._connect(config, policy)) as conn:
                results = self._inspect_all(config, policy, conn, logical_date)
        except Exception as err:
            raise classify(err, f"inspecting the partitioned tables of {self.target} failed") from err
        plans = [plan for _, plan in results]
        self.log.info("partition plan of %s for logical date %s%s:\n%s", self.target, logical_date.isoformat(),
                      " - DRY RUN, nothing will be changed" if dry_run else "", format_plan(plans))
        result = {"target": self.target, "logical_date": logical_date.isoformat(), "dry_run": dry_run,
                  "tables": [p.to_dict() for p in plans]}
        try:
            with OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).transaction() as conn:
                record.record_plan(conn, self.target, logical_date, context["run_id"], dry_run, result)
                for found, _ in results:
                    if found is not None:
                        table_policy = policy.tables[found.table]
                        record.record_status(conn, self.target, found, table_policy, logical_date,
                                             covered_until(found, floor(logical_date, table_policy.interval)))
        except Exception as err:
            raise classify(err, "recording the plan in the ops database failed") from err
        steps = sum(len(p.steps) for p in plans)
        self.log.info("OK: partition plan %s: %d tables, %d steps, %d findings, %d tables in error%s", self.target,
                      len(plans), steps, sum(len(p.findings) for p in plans), sum(bool(p.error) for p in plans),
                      "; dry run: stopping here" if dry_run else "", steps=steps)
        return result


class PartitionsApplyOperator(_PartitionsOperator):
    """Apply the plan table by table (re-inspected now, so a retry sees what an earlier try did): first, for
    every table, finish or undo the moves out of DEFAULT an earlier run left half done; then create
    partitions (moving their rows out of DEFAULT), finish pending detaches, retire, and finish retirements
    earlier runs left. Every step is recorded in ``dbops.partition_steps``. When the target connection is
    lost mid-step (a terminated backend), it reconnects, puts back the rows of a move the loss cut short and
    goes on with the next table.

    A step whose lock is not granted after the retries is skipped with its reason and the run goes on;
    the task then ends failed so that it is retried (Airflow backoff) and, on its last try, the run is red.
    A failed step (a drop refused because the dump could not be verified, a table that cannot be managed)
    fails the task at once after every other table was done. With the ``dry_run`` Param it does nothing.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config, policy = self._setup()
        if context.get("params", {}).get("dry_run"):
            self.log.info("OK: dry run: nothing applied")
            return {"dry_run": True}
        with job_lock(config.ops_conn_id, self.target, "partitions", wait_seconds=LOCK_WAIT_SECONDS):
            return self._apply(context, config, policy)

    def _apply(self, context: Context, config: DbopsConfig, policy: PartitionsPolicy) -> dict[str, Any]:
        from contextlib import ExitStack, closing
        from functools import partial

        from dbops.backup.staging import held_staging
        from dbops.core.errors import classify
        from dbops.core.processes import tool_timeout
        from dbops.core.runs import run_date
        from dbops.core.scratch import empty
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.partitions import record
        from dbops.partitions.apply import Drop, apply_plan, recover_moves
        from dbops.partitions.plan import retention_cutoff
        from dbops.partitions.report import summarize

        logical_date = run_date(context)
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)

        def step(table: str, kind: str, partition: str, status: str, **fields: Any) -> None:
            with ops.transaction() as conn:
                record.record_step(conn, self.target, logical_date, context["run_id"], table, kind, partition,
                                   status, **fields)

        def retired(table: str, mode: str, schema: str, name: str, lower: str, upper: str, status: str,
                    **fields: Any) -> None:
            with ops.transaction() as conn:
                record.record_retirement(conn, self.target, table, schema, name, lower, upper, mode, status, **fields)

        staging = config.staging_path / f"partitions__{self.target}"
        drop = Drop(config, self.target, context, staging, tool_timeout(self.execution_timeout))
        errors = []
        try:
            with held_staging(staging, "partitions__*"), ExitStack() as connections:
                empty(staging)  # a killed run's partial dumps: nothing of them is reused
                conn = connections.enter_context(closing(self._connect(config, policy)))
                results = self._inspect_all(config, policy, conn, logical_date)
                for _, plan in results:
                    if plan.error:
                        errors.append(plan.error)
                        self.log.error("%s", plan.error)
                managed = [(found, plan) for found, plan in results if not plan.error]
                recovered = {}
                for found, plan in managed:  # first thing: moves out of DEFAULT earlier runs left half done
                    recovered[found.table] = recover_moves(conn, found, plan, policy, partial(step, found.table))
                    conn = self._reconnect_if_lost(conn, connections, config, policy)
                for found, plan in managed:
                    table_policy = policy.tables[found.table]
                    with ops.transaction() as oconn:
                        unfinished = record.unfinished_retirements(oconn, self.target, found.table,
                                                                   retention_cutoff(logical_date, table_policy))
                    apply_plan(conn, found, plan, policy, table_policy, drop, partial(step, found.table),
                               partial(retired, found.table, table_policy.retire), unfinished,
                               recovered[found.table])
                    if conn.closed or conn.broken:  # killed mid-step: put back the rows of a move it cut short
                        conn = self._reconnect_if_lost(conn, connections, config, policy)
                        recover_moves(conn, found, plan, policy, partial(step, found.table), finish=False)
                    conn.autocommit = False
        except Exception as err:
            raise classify(err, f"partition management of {self.target} failed") from err
        with ops.transaction() as conn:
            figures = summarize(record.steps_of_run(conn, self.target, logical_date, context["run_id"]))
        failed = errors + [f"{t}: {f}" for t, v in figures.items() for f in v["failed"]]
        skipped = [f"{t}: {s}" for t, v in figures.items() for s in v["skipped"]]
        for table, f in figures.items():
            self.log.info("%s: created %d, moved %d rows, retired %d, freed %d bytes", table, f["created"],
                          f["moved_rows"], f["retired"], f["bytes_freed"])
        if failed:
            raise AirflowFailException(f"partitions of {self.target}: {len(failed)} failed: {'; '.join(failed)}")
        if skipped:
            raise AirflowException(f"partitions of {self.target}: {len(skipped)} steps skipped (lock not granted; "
                                   f"retried by the next try or run): {'; '.join(skipped)}")
        self.log.info("OK: partitions of %s applied: %d tables", self.target, len(policy.tables))
        return figures

    def _reconnect_if_lost(self, conn: psycopg.Connection, connections: Any, config: DbopsConfig,
                           policy: PartitionsPolicy) -> psycopg.Connection:
        """The same connection, or a new one when it was lost (a terminated backend): the other tables go on."""
        from contextlib import closing

        if not (conn.closed or conn.broken):
            return conn
        self.log.error("the connection to %s was lost (terminated backend?); reconnecting", self.target)
        return connections.enter_context(closing(self._connect(config, policy)))


class PartitionsReportOperator(_PartitionsOperator):
    """The run's last word: re-inspect every table (rows exact with the ``exact_counts`` Param, else
    estimates), store per partition bounds, rows, bytes and last vacuum/analyze (``dbops.partition_status``)
    and the run's report (``dbops.partition_runs``), and log one summary line per table."""

    def execute(self, context: Context) -> dict[str, Any]:
        from contextlib import closing

        from dbops.core.errors import classify
        from dbops.core.runs import run_date
        from dbops.hooks.ops import OpsDatabaseHook
        from dbops.partitions import record
        from dbops.partitions.tree import as_dict
        from dbops.partitions.plan import covered_until, floor
        from dbops.partitions.report import empty_figures, summarize, summary_line

        config, policy = self._setup()
        logical_date = run_date(context)
        exact = bool(context.get("params", {}).get("exact_counts"))
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        try:
            with closing(self._connect(config, policy)) as conn:
                results = self._inspect_all(config, policy, conn, logical_date, exact)
            with ops.transaction() as conn:
                retired = record.retired_ranges(conn, self.target)
                figures = summarize(record.steps_of_run(conn, self.target, logical_date, context["run_id"]))
                report: dict[str, Any] = {"exact_counts": exact, "tables": {}}
                for found, plan in results:
                    if found is None:
                        report["tables"][plan.table] = {"error": plan.error}
                        self.log.error("FAILED: partitions %s %s: %s", self.target, plan.table, plan.error)
                        continue
                    table_policy = policy.tables[found.table]
                    covered = covered_until(found, floor(logical_date, table_policy.interval))
                    record.record_status(conn, self.target, found, table_policy, logical_date, covered)
                    mine = figures.get(found.table) or empty_figures()
                    parts = [as_dict(p) for p in found.partitions] + ([as_dict(found.default)] if found.default
                                                                       else [])
                    recorded = {(r.schema, r.name) for r in retired.get(found.table, ())}
                    strays = [t for t in found.lookalikes if (t.schema, t.name) not in recorded]
                    report["tables"][found.table] = {
                        **mine, "default_rows": found.default_rows,
                        "covered_until": covered.isoformat() if covered else None, "findings": plan.findings,
                        "not_attached": [{"table": t.qualified, "rows": t.rows, "bytes": t.bytes} for t in strays],
                        "half_done_moves": [{"table": h.qualified, "rows": h.rows, "lower": h.lower.isoformat(),
                                             "upper": h.upper.isoformat()} for h in found.half_done],
                        "partitions": parts}
                    for part in parts:
                        self.log.info("  %s [%s, %s) rows %s%s, %d bytes, vacuum %s, analyze %s", part["partition"],
                                      part["lower"] or ("DEFAULT" if part["default"] else "MINVALUE"),
                                      part["upper"] or "", part["rows"], "" if part["rows_exact"] else " (estimate)",
                                      part["bytes"], part["last_vacuum"] or "-", part["last_analyze"] or "-")
                    for note in plan.findings:
                        self.log.warning("  ! %s", note)
                    self.log.info("%s", summary_line(self.target, found.table, mine, found.default_rows,
                                                     covered.strftime("%Y-%m-%d") if covered else "NOT COVERED",
                                                     not_attached=len(strays), half_done=len(found.half_done)),
                                  created=mine["created"], moved_rows=mine["moved_rows"], retired=mine["retired"],
                                  bytes_freed=mine["bytes_freed"], seconds=mine["seconds"])
                record.record_report(conn, self.target, logical_date, report)
        except Exception as err:
            raise classify(err, f"reporting the partitions of {self.target} failed") from err
        return {t: {k: v for k, v in r.items() if k != "partitions"} for t, r in report["tables"].items()}
