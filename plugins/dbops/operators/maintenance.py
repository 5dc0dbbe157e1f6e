"""Weekly and daily maintenance: scan and plan, one mapped task per planned object, report."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from dbops.maintenance.plan import Action
from dbops.core.units import human_bytes
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.core.config import DbopsConfig
    from dbops.hooks.ops import OpsDatabaseHook
    from dbops.maintenance.execute import Outcome
    from dbops.maintenance.policy import MaintenancePolicy

KINDS = ("weekly", "daily")
LOCK_WAIT_SECONDS = 60  # an action of an overlapping run waits this long for the other, then skips


class _MaintenanceOperator(TargetOperator):
    """A target operator that needs the target's maintenance policy and the ops database (maintenance log).

    :param kind: ``weekly`` (VACUUM FULL / REINDEX by measured bloat, and the light work) or ``daily``.
    """

    def __init__(self, *, kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind

    def _setup(self) -> tuple[DbopsConfig, MaintenancePolicy, OpsDatabaseHook]:
        from dbops.hooks.ops import OpsDatabaseHook

        config = self.load_config()
        if self.target not in config.targets:
            raise AirflowFailException(f"target {self.target!r} is not in {config.path}")
        policy = config.targets[self.target].maintenance
        if policy is None:
            raise AirflowFailException(f"target {self.target!r} has no maintenance policy in {config.path}")
        return config, policy, OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)


class MaintenancePlanOperator(_MaintenanceOperator):
    """Scan every table and index of the target, plan one action per object with its reason, log the plan.

    Returns the executable actions (the mapped task's input; empty when the run's ``dry_run`` Param is
    set) and pushes the whole plan, with the unused / duplicate index reports, as XCom ``plan`` (also
    stored in ``dbops.maintenance_runs``). Objects finished earlier for the same logical date
    (maintenance log) are not planned again.

    :param dry_run: plan only (overrides the ``dry_run`` Param when not None).
    """

    template_fields: Sequence[str] = ("target",)

    def __init__(self, *, dry_run: bool | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dry_run = dry_run

    def execute(self, context: Context) -> list[dict[str, Any]]:
        from dbops.core.errors import classify
        from dbops.core.runs import run_date
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.maintenance import log
        from dbops.maintenance.plan import format_plan, plan_daily, plan_result, plan_weekly, reclaimable_bytes, \
            summary_line
        from dbops.maintenance.scan import StandbyError, scan

        config, policy, ops = self._setup()
        logical_date = run_date(context)
        dry_run = self.dry_run if self.dry_run is not None else bool(context.get("params", {}).get("dry_run"))
        try:
            with ops.transaction() as conn:
                done = log.finished(conn, self.target, self.kind, logical_date)
        except Exception as err:
            raise classify(err, "reading the maintenance log in the ops database failed") from err
        hook = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        try:
            with hook.get_conn() as conn:
                measured = scan(conn, policy, hook.connection.host)
        except StandbyError as err:
            raise AirflowFailException(f"{self.target}: {err}; point conn_id at the primary") from err
        except Exception as err:
            raise classify(err, f"scanning {self.target} failed") from err
        plan = (plan_weekly if self.kind == "weekly" else plan_daily)(measured, policy, set(done))
        self.log.info("%s maintenance plan for %s (logical date %s)%s:\n%s", self.kind, self.target,
                      logical_date.isoformat(), " - DRY RUN, nothing will be executed" if dry_run else "",
                      format_plan(plan))
        for blocker in measured.blockers:
            self.log.warning("rewrites wait for: %s", blocker)
        result = plan_result(self.target, self.kind, logical_date, dry_run, measured, plan, policy)
        try:
            with ops.transaction() as conn:
                log.record_plan(conn, self.target, self.kind, logical_date, context["run_id"], dry_run, result)
        except Exception as err:
            raise classify(err, "recording the plan in the ops database failed") from err
        context["ti"].xcom_push(key="plan", value=result)
        self.log.info("%s", summary_line(result, plan), actions=len(plan.actions), reported_only=len(plan.notes),
                      blockers=len(measured.blockers), reclaimable_bytes=reclaimable_bytes(plan))
        planned_at = datetime.now(timezone.utc).isoformat()
        return [] if dry_run else [{**a.to_dict(), "planned_at": planned_at} for a in plan.actions]


class MaintenanceActionOperator(_MaintenanceOperator):
    """Execute one planned action (mapped: one task instance per object), recorded in the maintenance log.

    A lock not granted within ``lock_timeout`` is transient: the task is retried (Airflow retries with
    backoff) and, on its last try, skipped with the reason and who held the lock, so the run goes on. A
    connection lost mid-statement is retried and fails on the last try. An action this logical date
    already finished is not redone.

    :param item: the planned :class:`~dbops.maintenance.plan.Action` as a dict (from the plan's ``actions``).
    """

    template_fields: Sequence[str] = ("target", "item")

    def __init__(self, *, item: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.item = item

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.locks import job_lock

        config, policy, ops = self._setup()
        # the target's pool serializes these already; the lock holds even if someone widens the pool
        with job_lock(config.ops_conn_id, self.target, "maintenance", wait_seconds=LOCK_WAIT_SECONDS):
            return self._execute(context, config, policy, ops)

    def _execute(self, context: Context, config: DbopsConfig, policy: MaintenancePolicy,
                 ops: OpsDatabaseHook) -> dict[str, Any]:
        from dbops.core.errors import classify, retries_left
        from dbops.core.runs import run_date
        from dbops.maintenance import log

        action = Action.from_dict(self.item)
        logical_date = run_date(context)
        try_number = int(getattr(context["ti"], "try_number", 1) or 1)
        try:
            with ops.transaction() as conn:
                earlier = log.finished(conn, self.target, self.kind, logical_date).get(
                    (action.schema_name, action.name, action.action))
                other = None if earlier or not action.planned_at else log.done_since(
                    conn, self.target, action, datetime.fromisoformat(action.planned_at))
                entry = None if earlier or other else log.start(conn, self.target, self.kind, logical_date,
                                                                context["run_id"], try_number, action)
        except Exception as err:
            raise classify(err, "writing the maintenance log in the ops database failed") from err
        if other:  # e.g. backfilled runs planned side by side: one rewrite is enough
            self.log.info("%s: done by run %s at %s, after this run planned it; not redoing it", action.label,
                          other["run_id"], other["finished_at"].isoformat())
            return _result(action, "done", other["bytes_before"], other["bytes_after"], 0.0,
                           f"done by run {other['run_id']} after this run planned it")
        if earlier:
            self.log.info("%s: already done for this logical date (%s -> %s in %.1f s); not redoing it",
                          action.label, human_bytes(earlier["bytes_before"]), human_bytes(earlier["bytes_after"]),
                          earlier["seconds"] or 0.0)
            return _result(action, "done", earlier["bytes_before"], earlier["bytes_after"],
                           earlier["seconds"] or 0.0, "done earlier for this logical date")
        self.log.info("%s (try %d of %d): %s; lock_timeout %.1f s, statement_timeout %.0f s", action.label,
                      try_number, (self.retries or 0) + 1, action.reason, policy.lock_timeout,
                      action.statement_timeout)
        outcome = self._run(config, policy, ops, entry, action, last_try=not retries_left(context))
        if outcome.status == "skipped":
            self.log.info("%s skipped: %s", action.label, outcome.reason)
            raise AirflowSkipException(f"{action.label}: {outcome.reason}")
        reclaimed = (outcome.bytes_before or 0) - (outcome.bytes_after or 0)
        self.log.info("OK: %s done: %s -> %s (reclaimed %s) in %.2f s", action.label,
                      human_bytes(outcome.bytes_before), human_bytes(outcome.bytes_after), human_bytes(reclaimed),
                      outcome.seconds, bytes_before=outcome.bytes_before, bytes_after=outcome.bytes_after,
                      reclaimed_bytes=reclaimed)
        return _result(action, "done", outcome.bytes_before, outcome.bytes_after, outcome.seconds, "")

    def _run(self, config: DbopsConfig, policy: MaintenancePolicy, ops: OpsDatabaseHook, entry: int,
             action: Action, last_try: bool) -> Outcome:
        """Execute the action on the target and record its outcome (or why it failed) in the maintenance log."""
        import psycopg

        from dbops.core.errors import classify
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.maintenance.execute import LOCK_NOT_AVAILABLE, LeftoverError, execute_action, failure_reason

        def record(status: str, error: str | None) -> None:
            self._record(ops, entry, status, error=error)

        hook = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        conn = None
        try:
            conn = hook.get_conn()
            outcome = execute_action(conn, action, policy)
        except psycopg.Error as err:
            why = failure_reason(conn, err, action, policy)
            if err.sqlstate == LOCK_NOT_AVAILABLE:
                if last_try:
                    record("skipped", why)
                    self.log.warning("%s skipped after %d tries: %s", action.label, (self.retries or 0) + 1, why)
                    raise AirflowSkipException(f"{action.label}: skipped: {why}") from err
                record("retry", why)
                raise AirflowException(f"{action.label}: {why} (transient; will retry)") from err
            if why:
                record("failed", why)
                raise AirflowFailException(f"{action.label}: {why}") from err
            failure = classify(err, f"{action.label} on {self.target} failed")
            record("retry" if not isinstance(failure, AirflowFailException) and not last_try else "failed",
                   " ".join(str(err).split()))
            raise failure from err
        except LeftoverError as err:
            record("retry" if not last_try else "failed", str(err))
            if last_try:
                raise AirflowFailException(f"{action.label}: {err}. Drop it by hand with "
                                           "DROP INDEX CONCURRENTLY once nothing holds the table") from err
            raise AirflowException(f"{action.label}: {err} (transient; will retry)") from err
        except Exception as err:
            failure = classify(err, f"{action.label} on {self.target} failed")
            record("failed" if last_try or isinstance(failure, AirflowFailException) else "retry",
                   " ".join(str(err).split()))
            raise failure from err
        finally:
            if conn is not None and not conn.closed:
                conn.close()
        self._record(ops, entry, outcome.status, outcome.bytes_before, outcome.bytes_after,
                     round(outcome.seconds, 3), outcome.reason or None)
        return outcome

    @staticmethod
    def _record(ops: OpsDatabaseHook, entry: int, status: str, bytes_before: int | None = None,
                bytes_after: int | None = None, seconds: float | None = None, error: str | None = None) -> None:
        from dbops.maintenance import log

        with ops.transaction() as conn:
            log.finish(conn, entry, status, bytes_before, bytes_after, seconds, error)


def _result(action: Action, status: str, before: int | None, after: int | None, seconds: float,
            note: str) -> dict[str, Any]:
    return {"object": f"{action.schema_name}.{action.name}", "action": action.action, "status": status,
            "bytes_before": before, "bytes_after": after,
            "reclaimed_bytes": (before or 0) - (after or 0), "seconds": round(seconds, 3), "note": note}


class MaintenanceReportOperator(_MaintenanceOperator):
    """The run's last word, from the maintenance log: per object bytes reclaimed, seconds, what was skipped
    and why, what failed; the unused and duplicate index reports as data (no index is ever dropped).

    Fails when any planned action failed (so the run is red), after reporting everything.

    :param plan_task_id: the task that returned the plan.
    """

    def __init__(self, *, plan_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.core.errors import classify
        from dbops.core.runs import run_date
        from dbops.maintenance import log
        from dbops.maintenance.report import build_report, detail_lines, failures, summary_line

        _, _, ops = self._setup()
        result = context["ti"].xcom_pull(task_ids=self.plan_task_id, key="plan")
        if not result:
            raise AirflowFailException(f"no plan for {self.target}: the {self.plan_task_id} task failed; see its log")
        logical_date = run_date(context)
        try:
            with ops.transaction() as conn:
                attempts = log.attempts(conn, self.target, self.kind, logical_date)
        except Exception as err:
            raise classify(err, "reading the maintenance log in the ops database failed") from err
        report = build_report(result, attempts)
        try:
            with ops.transaction() as conn:
                log.record_report(conn, self.target, self.kind, logical_date, report)
        except Exception as err:
            raise classify(err, "recording the report in the ops database failed") from err
        for line in detail_lines(result, report):
            self.log.info("%s", line)
        totals = report["totals"]
        self.log.info("%s", summary_line(result, report), done=totals["done"], skipped=totals["skipped"],
                      failed=totals["failed"], reclaimed_bytes=totals["reclaimed_bytes"], seconds=totals["seconds"])
        failed = failures(report)
        if failed:
            raise AirflowFailException(f"maintenance of {self.target}: {'; '.join(failed)}")
        return report
