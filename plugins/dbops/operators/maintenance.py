"""Weekly and daily maintenance: scan and plan, one mapped task per planned object, report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from dbops.maintenance.plan import DUPLICATES_ADVICE, REINDEX, Action, mib
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.core.config import DbopsConfig
    from dbops.maintenance.policy import MaintenancePolicy
    from dbops.maintenance.log import MaintenanceLogHook

KINDS = ("weekly", "daily")
REPORT_LINES = 10  # unused indexes logged one per line; the rest are in the result
LOCK_WAIT_SECONDS = 60  # an action of an overlapping run waits this long for the other, then skips


class _MaintenanceOperator(TargetOperator):
    """A target operator that needs the target's maintenance policy and the maintenance log.

    :param kind: ``weekly`` (VACUUM FULL / REINDEX by measured bloat, and the light work) or ``daily``.
    """

    def __init__(self, *, kind: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        self.kind = kind

    def _setup(self) -> tuple[DbopsConfig, MaintenancePolicy, MaintenanceLogHook]:
        from dbops.maintenance.log import MaintenanceLogHook

        config = self.load_config()
        if self.target not in config.targets:
            raise AirflowFailException(f"target {self.target!r} is not in {config.path}")
        policy = config.targets[self.target].maintenance
        if policy is None:
            raise AirflowFailException(f"target {self.target!r} has no maintenance policy in {config.path}")
        return config, policy, MaintenanceLogHook(postgres_conn_id=config.ops_conn_id)


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
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.maintenance.plan import format_plan, plan_daily, plan_weekly, unused_indexes
        from dbops.maintenance.execute import StandbyError, scan
        from dbops.core.runs import run_date

        config, policy, ops = self._setup()
        logical_date = run_date(context)
        dry_run = self.dry_run if self.dry_run is not None else bool(context.get("params", {}).get("dry_run"))
        try:
            done = ops.done(self.target, self.kind, logical_date)
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
        result = {
            "target": self.target, "kind": self.kind, "logical_date": logical_date.isoformat(), "dry_run": dry_run,
            "scan": {"tables": len(measured.tables), "indexes": len(measured.indexes),
                     "seconds": round(measured.seconds, 3), "blockers": measured.blockers,
                     "free_bytes": measured.free_bytes, "disk_bytes": measured.disk_bytes,
                     "stats_reset": measured.stats_reset.isoformat() if measured.stats_reset else None},
            "plan": plan.to_dict(),
            "unused_indexes": unused_indexes(measured, policy) if self.kind == "weekly" else [],
            "duplicate_indexes": measured.duplicate_indexes if self.kind == "weekly" else [],
        }
        try:
            ops.record_plan(self.target, self.kind, logical_date, context["run_id"], dry_run, result)
        except Exception as err:
            raise classify(err, "recording the plan in the ops database failed") from err
        context["ti"].xcom_push(key="plan", value=result)
        counts: dict[str, int] = {}
        for item in plan.actions:
            counts[item.action] = counts.get(item.action, 0) + 1
        self.log.info(
            "plan %s %s: scanned %d tables and %d indexes in %.2f s; %d actions (%s), %d reported only, "
            "%d need nothing, %d blockers, estimated reclaimable %s%s", self.kind, self.target, len(measured.tables),
            len(measured.indexes), measured.seconds, len(plan.actions),
            ", ".join(f"{k} {v}" for k, v in counts.items()) or "none", len(plan.notes), plan.nothing,
            len(measured.blockers), mib(sum(a.bloat_bytes or 0 for a in plan.actions if a.action in
                                            ("vacuum_full", "reindex_concurrently"))),
            "; dry run: stopping here" if dry_run else "")
        return [] if dry_run else [a.to_dict() for a in plan.actions]


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
                 ops: MaintenanceLogHook) -> dict[str, Any]:
        from dbops.core.errors import classify, retries_left
        from dbops.core.runs import run_date

        action = Action.from_dict(self.item)
        logical_date = run_date(context)
        try_number = int(getattr(context["ti"], "try_number", 1) or 1)
        last_try = not retries_left(context)
        try:
            earlier = ops.done(self.target, self.kind, logical_date).get(
                (action.schema_name, action.name, action.action))
            if earlier:
                self.log.info("%s: already done for this logical date (%s -> %s in %.1f s); not redoing it",
                              action.label, mib(earlier["bytes_before"]), mib(earlier["bytes_after"]),
                              earlier["seconds"] or 0.0)
                return _result(action, "done", earlier["bytes_before"], earlier["bytes_after"],
                               earlier["seconds"] or 0.0, "done earlier for this logical date")
            entry = ops.start(self.target, self.kind, logical_date, context["run_id"], try_number, action)
        except Exception as err:
            raise classify(err, "writing the maintenance log in the ops database failed") from err
        self.log.info("%s (try %d of %d): %s; lock_timeout %.1f s, statement_timeout %.0f s", action.label,
                      try_number, (self.retries or 0) + 1, action.reason, policy.lock_timeout,
                      action.statement_timeout)
        return self._run(config, policy, ops, entry, action, last_try)

    def _run(self, config: DbopsConfig, policy: MaintenancePolicy, ops: MaintenanceLogHook, entry: int,
             action: Action, last_try: bool) -> dict[str, Any]:
        import psycopg

        from dbops.core.errors import classify
        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.maintenance.execute import (
            LOCK_NOT_AVAILABLE,
            QUERY_CANCELED,
            UNIQUE_VIOLATION,
            LeftoverError,
            duplicates_found,
            execute_action,
            lock_holders,
        )

        hook = DbopsPostgresHook(postgres_conn_id=config.targets[self.target].conn_id)
        conn = None
        try:
            conn = hook.get_conn()
            outcome = execute_action(conn, action, policy)
        except psycopg.Error as err:
            message = " ".join(str(err).split())
            if err.sqlstate == LOCK_NOT_AVAILABLE:
                holders = lock_holders(conn, action.schema_name, action.name) if conn and not conn.broken else ""
                why = (f"lock not granted within lock_timeout {policy.lock_timeout:g} s ({message}); "
                       f"held by: {holders}")
                if last_try:
                    ops.finish(entry, "skipped", error=why)
                    self.log.warning("%s skipped after %d tries: %s", action.label, (self.retries or 0) + 1, why)
                    raise AirflowSkipException(f"{action.label}: skipped: {why}") from err
                ops.finish(entry, "retry", error=why)
                raise AirflowException(f"{action.label}: {why} (transient; will retry)") from err
            if err.sqlstate == UNIQUE_VIOLATION and action.action == REINDEX:
                why = f"{message}; {duplicates_found(conn, action)}: {DUPLICATES_ADVICE}"
                ops.finish(entry, "failed", error=why)
                raise AirflowFailException(f"{action.label}: {why}") from err
            if err.sqlstate == QUERY_CANCELED:
                why = (f"statement_timeout {action.statement_timeout:.0f} s (fit to {mib(action.bytes)}) was "
                       f"reached: {message}. Lower maintenance.rewrite_rate or raise statement_timeout")
                ops.finish(entry, "failed", error=why)
                raise AirflowFailException(f"{action.label}: {why}") from err
            failure = classify(err, f"{action.label} on {self.target} failed")
            ops.finish(entry, "retry" if not isinstance(failure, AirflowFailException) and not last_try
                       else "failed", error=message)
            raise failure from err
        except LeftoverError as err:
            ops.finish(entry, "retry" if not last_try else "failed", error=str(err))
            if last_try:
                raise AirflowFailException(f"{action.label}: {err}. Drop it by hand with "
                                           "DROP INDEX CONCURRENTLY once nothing holds the table") from err
            raise AirflowException(f"{action.label}: {err} (transient; will retry)") from err
        except Exception as err:
            failure = classify(err, f"{action.label} on {self.target} failed")
            ops.finish(entry, "failed" if last_try or isinstance(failure, AirflowFailException) else "retry",
                       error=" ".join(str(err).split()))
            raise failure from err
        finally:
            if conn is not None and not conn.closed:
                conn.close()
        ops.finish(entry, outcome.status, outcome.bytes_before, outcome.bytes_after, round(outcome.seconds, 3),
                   outcome.reason or None)
        if outcome.status == "skipped":
            self.log.info("%s skipped: %s", action.label, outcome.reason)
            raise AirflowSkipException(f"{action.label}: {outcome.reason}")
        self.log.info("%s done: %s -> %s (reclaimed %s) in %.2f s", action.label, mib(outcome.bytes_before),
                      mib(outcome.bytes_after), mib((outcome.bytes_before or 0) - (outcome.bytes_after or 0)),
                      outcome.seconds)
        return _result(action, "done", outcome.bytes_before, outcome.bytes_after, outcome.seconds, "")


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

        _, _, ops = self._setup()
        result = context["ti"].xcom_pull(task_ids=self.plan_task_id, key="plan")
        if not result:
            raise AirflowFailException(f"no plan for {self.target}: the {self.plan_task_id} task failed; see its log")
        logical_date = run_date(context)
        try:
            attempts = ops.attempts(self.target, self.kind, logical_date)
        except Exception as err:
            raise classify(err, "reading the maintenance log in the ops database failed") from err
        report = build_report(result, attempts)
        try:
            ops.record_report(self.target, self.kind, logical_date, report)
        except Exception as err:
            raise classify(err, "recording the report in the ops database failed") from err
        for row in report["objects"]:
            self.log.info("%-22s %-10s %s: %s -> %s, reclaimed %s, %.2f s%s", row["action"], row["status"],
                          row["object"], mib(row["bytes_before"]), mib(row["bytes_after"]),
                          mib(row["reclaimed_bytes"]), row["seconds"] or 0.0,
                          f" ({row['why']})" if row["why"] else "")
        for note in result["plan"]["notes"]:
            self.log.info("not executed: %s %s.%s: %s", note["action"], note["schema_name"], note["name"],
                          note["reason"])
        unused = report["unused_indexes"]
        for row in unused[:REPORT_LINES]:
            self.log.info("unused index (report only): %s.%s on %s, %s, %d scans since %s", row["schema"],
                          row["index"], row["table"], mib(row["bytes"]), row["scans"],
                          result["scan"]["stats_reset"] or "the statistics were created")
        if len(unused) > REPORT_LINES:
            self.log.info("... and %d smaller unused indexes (%s): all in this task's result and in "
                          "dbops.maintenance_runs.report", len(unused) - REPORT_LINES,
                          mib(sum(r["bytes"] for r in unused[REPORT_LINES:])))
        for row in report["duplicate_indexes"]:
            self.log.info("duplicate indexes (report only) on %s.%s: %s (%s each)", row["schema_name"],
                          row["table_name"], ", ".join(row["indexes"]), "/".join(mib(b) for b in row["bytes"]))
        totals = report["totals"]
        self.log.info(
            "%s maintenance %s %s%s: %d done, reclaimed %s, %.1f s; %d skipped (%s); %d failed; %d reported only; "
            "%d unused and %d duplicate index sets reported", self.kind, self.target, logical_date.date(),
            " (dry run)" if result["dry_run"] else "", totals["done"], mib(totals["reclaimed_bytes"]),
            totals["seconds"], totals["skipped"], "; ".join(report["skipped_reasons"]) or "none", totals["failed"],
            len(result["plan"]["notes"]), len(report["unused_indexes"]), len(report["duplicate_indexes"]))
        failed = [row for row in report["objects"] if row["status"] not in ("done", "skipped", "planned")]
        if failed:
            raise AirflowFailException("maintenance of " + self.target + ": " + "; ".join(
                f"{row['action']} {row['object']} {row['status']}: {row['why']}" for row in failed))
        return report


def build_report(result: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per planned (or earlier finished) object: its final status and figures from the attempts."""
    last: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in attempts:
        key = (row["schema_name"], row["object_name"], row["action"])
        if last.get(key, {}).get("status") != "done":  # a finished action stays finished
            last[key] = row
    planned = [Action.from_dict(a) for a in result["plan"]["actions"]]
    earlier = [Action.from_dict(a) for a in result["plan"]["done"]]
    objects = []
    for action in planned + earlier:
        row = last.get((action.schema_name, action.name, action.action))
        if row is None:
            status, why = ("planned", "dry run") if result["dry_run"] else ("not run", "its task never ran")
        else:
            status = row["status"]
            why = row["error"] or ("done by an earlier run for this logical date" if action in earlier else "")
        done = row is not None and status == "done"
        objects.append({"object": f"{action.schema_name}.{action.name}", "action": action.action, "status": status,
                        "bytes_before": row["bytes_before"] if done else None,
                        "bytes_after": row["bytes_after"] if done else None,
                        "reclaimed_bytes": (row["bytes_before"] or 0) - (row["bytes_after"] or 0) if done else 0,
                        "seconds": (row["seconds"] or 0.0) if row else 0.0, "why": why})
    skipped = [row for row in objects if row["status"] == "skipped"]
    totals = {"done": sum(r["status"] == "done" for r in objects), "skipped": len(skipped),
              "failed": sum(r["status"] not in ("done", "skipped", "planned") for r in objects),
              "reclaimed_bytes": sum(r["reclaimed_bytes"] for r in objects),
              "seconds": round(sum(r["seconds"] for r in objects), 3)}
    return {"target": result["target"], "kind": result["kind"], "logical_date": result["logical_date"],
            "dry_run": result["dry_run"], "objects": objects, "totals": totals,
            "skipped_reasons": [f"{r['object']}: {r['why']}" for r in skipped],
            "unused_indexes": result["unused_indexes"], "duplicate_indexes": result["duplicate_indexes"]}
