"""Alert evaluation of one target, and delivery of its queued notifications."""

from __future__ import annotations

import logging
from contextlib import closing
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import psycopg

from dbops.alerting.cycle import Alert
from dbops.alerting.evaluate import Evaluation, Metric, Sample, evaluate
from dbops.alerting.notify import change_line
from dbops.alerting.rules import RULE_FAILED, TARGET_DOWN, Rule, rules_for
from dbops.alerting.record import Pending, deliver_outbox, latest_values, oldest_undelivered, record_cycle
from dbops.core.schema import ConfigError
from dbops.core.errors import classify
from dbops.hooks.ops import OpsDatabaseHook
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.core.locks import job_lock
from dbops.notifications.channels import Notification, send
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import DagRunProtocol

    from dbops.alerting.policy import AlertPolicy

# A run whose time is older than this is a catch-up (a cleared old run, a late backfill): alerts
# describe the present, so it does not evaluate. Scheduled runs start within seconds of their time
# and a run times out after 4 minutes (dagrun_timeout), so a current run is never this old.
MAX_RUN_AGE = timedelta(minutes=15)
SKIPPED_METRIC = "rule_skipped"  # a sample per rule skipped for a lasting reason (logged once)
TARGET_IS_DOWN = "target down"


class AlertEvaluationOperator(TargetOperator):
    """Evaluate a target's alert rules and commit the cycle: alert states, events, samples, outbox.

    Target rules run read-only with the policy's timeouts; a rule that fails is an evaluation error
    (alert ``RuleEvaluationFailed``), never a task failure. An unreachable target fires ``TargetDown``
    and holds the state of its other alerts. The task fails when the ops database cannot be used, and
    at once when the target's rule packs are invalid. Alerts describe the present, so a backfill run or
    a run for a time older than ``MAX_RUN_AGE`` is skipped and leaves alert state alone; one run at a
    time per target evaluates (``job_lock``), another waits ``lock_wait`` seconds, then is skipped.

    :param target: the target's key in dbops.yaml.
    :param lock_wait: seconds to wait for another run of this target's evaluation to finish.
    """

    def __init__(self, *, lock_wait: float = 20.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock_wait = lock_wait

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        past = _past_run(context["dag_run"])
        if past:
            raise AirflowSkipException(f"alerts of {self.target} not evaluated: {past}; alerts describe the present, "
                                       "only a current run evaluates them (alert state left as it is)")
        config = self.load_config()
        policy = config.targets[self.target].alerts
        try:
            rules = rules_for(config, self.target)
        except ConfigError as err:
            raise AirflowFailException(f"alert rules of {self.target} are invalid, no rule is evaluated: {err}. "
                                       "Fix the rule pack or the target's alerts.thresholds in dbops.yaml") from err
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        try:
            with job_lock(config.ops_conn_id, self.target, "alerts", wait_seconds=self.lock_wait), \
                    closing(ops.get_conn()) as state_conn, closing(ops.get_conn()) as read_conn:
                previous = latest_values(state_conn, self.target,
                                         {r.query for r in rules if r.counter} | {SKIPPED_METRIC})
                on_target = self._evaluate_target(config.targets[self.target].conn_id, policy,
                                                  [r for r in rules if r.database == "target"], previous)
                on_ops = evaluate(read_conn, [r for r in rules if r.database == "ops"], **_limits(policy),
                                  params={"target": self.target}, previous=previous)
                samples, metrics, unevaluated = _combine(on_target, on_ops, rules)
                skips = _lasting_skips({**on_target.skipped, **on_ops.skipped})
                metrics += skips
                cycle = record_cycle(
                    state_conn, target=self.target, run_id=context["run_id"],
                    rules={r.name: r for r in [*rules, TARGET_DOWN, RULE_FAILED]}, samples=samples, metrics=metrics,
                    unevaluated=unevaluated, channels=policy.notify,
                    pg_notify_channel=config.notifications.pg_notify_channel if "pg_notify" in policy.notify else None,
                    sample_retention_seconds=policy.sample_retention)
        except psycopg.Error as err:
            raise classify(err, "ops database (alert state)", "check the ops_conn_id connection") from err
        for change in cycle.changes:
            self.log.log(logging.INFO if change.kind == "resolved" else logging.WARNING, "%s", change_line(change))
        for error in on_target.errors + on_ops.errors:
            self.log.warning("rule %s: evaluation %s: %s", error.rule, error.kind, error.message)
        for skip in skips:  # logged the first time only: it is the same every five minutes
            if skip.key not in previous:
                self.log.info("rule %s skipped: %s (said once; skipped in every run while this holds)",
                              skip.labels["rule"], skip.labels["why"])
        for ignored in cycle.ignored_silences:
            self.log.warning("%s", ignored)
        up = not _target_down(on_target)
        result = {
            "rules": len(rules), "samples": len(metrics), "errors": len(on_target.errors) + len(on_ops.errors),
            "skipped": len(on_target.skipped) + len(on_ops.skipped), "target_up": up,
            "firing": sum(a.state.status == "firing" for a in cycle.alerts),
            "pending": sum(a.state.status == "pending" for a in cycle.alerts),
            "notified": [c.kind for c in cycle.changes],
            "ignored_silences": cycle.ignored_silences,
            "db_seconds": round(on_target.db_seconds + on_ops.db_seconds, 3),
        }
        firing = sorted(_alert_name(a) for a in cycle.alerts if a.state.status == "firing")
        self.log.info("alerts %s: %s; %d pending; %d rules, %d samples, %d evaluation errors, %d skipped; "
                      "%d changes notified; %d silences ignored; %.3f s in queries", self.target,
                      f"{len(firing)} firing ({', '.join(firing)})" if firing else "nothing firing",
                      result["pending"], result["rules"], result["samples"], result["errors"], result["skipped"],
                      len(cycle.changes), len(cycle.ignored_silences), result["db_seconds"],
                      firing=firing, rules=result["rules"], errors=result["errors"])
        return result

    def _evaluate_target(self, conn_id: str, policy: AlertPolicy, rules: list[Rule],
                         previous: dict[tuple[str, str], float]) -> Evaluation:
        hook = DbopsPostgresHook(postgres_conn_id=conn_id, connect_timeout=policy.connect_timeout)
        try:
            with closing(hook.get_conn()) as conn:
                result = evaluate(conn, rules, **_limits(policy), previous=previous)
        except psycopg.OperationalError as err:  # refused, timed out, or lost mid-evaluation
            message = " ".join(str(err).split()) or type(err).__name__
            self.log.error("target %s does not answer: %s", self.target, message)
            down = Evaluation(samples=[Sample(TARGET_DOWN.name, {}, 0.0, True, message)],
                              metrics=[Metric("target_up", {}, 0.0)])
            down.skipped.update({r.name: TARGET_IS_DOWN for r in rules})
            return down
        result.samples.append(Sample(TARGET_DOWN.name, {}, 1.0, False))
        result.metrics.append(Metric("target_up", {}, 1.0))
        return result


def _past_run(dag_run: DagRunProtocol) -> str | None:
    """Why a run must not evaluate: a backfill, or a run whose time is more than MAX_RUN_AGE ago."""
    if dag_run.run_type == "backfill":  # DagRunType.BACKFILL_JOB, a str enum
        return "a backfill run"
    as_of = dag_run.data_interval_end or dag_run.run_after
    age = timedelta(seconds=round((datetime.now(timezone.utc) - as_of).total_seconds()))
    if age > MAX_RUN_AGE:
        return f"the run is for {as_of.isoformat(timespec='minutes')}, {age} ago"
    return None


def _lasting_skips(skipped: dict[str, str]) -> list[Metric]:
    """Rules skipped for a reason that lasts (a missing extension), as samples: the log says each once."""
    return [Metric(SKIPPED_METRIC, {"rule": rule, "why": why}, 1.0) for rule, why in sorted(skipped.items())
            if why != TARGET_IS_DOWN]


def _alert_name(alert: Alert) -> str:
    labels = ",".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
    return f"{alert.rule}{{{labels}}}" if labels else alert.rule


def _limits(policy: AlertPolicy) -> dict[str, int]:
    return {"statement_timeout_ms": int(policy.statement_timeout * 1000),
            "lock_timeout_ms": int(policy.lock_timeout * 1000)}


def _target_down(on_target: Evaluation) -> bool:
    return any(s.rule == TARGET_DOWN.name and s.breaching for s in on_target.samples)


def _combine(on_target: Evaluation, on_ops: Evaluation, rules: list[Rule]
             ) -> tuple[list[Sample], list[Metric], set[str]]:
    """Samples and metrics of both databases plus one RuleEvaluationFailed per failed rule; what stays unknown."""
    errors = on_target.errors + on_ops.errors
    failed = [Sample(RULE_FAILED.name, {"failed_rule": e.rule}, 1.0, True, f"{e.kind}: {e.message}") for e in errors]
    unevaluated = {e.rule for e in errors}
    if _target_down(on_target):
        unevaluated |= {r.name for r in rules if r.database == "target"} | {RULE_FAILED.name}
    return on_target.samples + on_ops.samples + failed, on_target.metrics + on_ops.metrics, unevaluated


class AlertDeliveryOperator(TargetOperator):
    """Deliver the target's queued alert notifications (email, Slack), oldest first, each once.

    Each notification is claimed before it is sent and marked after (see :func:`deliver_outbox`): a
    notification whose send outlived its run's record (ops database lost, worker killed) is sent again
    once its claim is ``claim_expiry`` seconds old, never sooner. A channel that fails keeps its
    notifications for the next run and the task succeeds; it fails (so the DAG's failure notifier
    speaks up) once a notification has waited longer than the policy's ``undelivered_alarm``.

    :param target: the target's key in dbops.yaml.
    :param claim_expiry: seconds after which a claimed, unrecorded notification is sent again; longer
        than the task's ``execution_timeout``.
    """

    def __init__(self, *, claim_expiry: float = 600.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.execution_timeout and claim_expiry <= self.execution_timeout.total_seconds():
            raise ValueError(f"{self.task_id}: claim_expiry ({claim_expiry:g} s) must be longer than the "
                             f"execution_timeout ({self.execution_timeout}), or a slow send is repeated")
        self.claim_expiry = claim_expiry

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowException

        config = self.load_config()
        policy = config.targets[self.target].alerts

        def deliver(pending: Pending) -> str | None:
            notification = Notification(pending.title, pending.body, pending.severity, self.target)
            outcome = send(notification, [pending.channel], config.notifications)[pending.channel]
            return None if outcome == "sent" else outcome

        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        try:
            with closing(ops.get_conn()) as conn:
                done = deliver_outbox(conn, self.target, deliver, self.claim_expiry)
                oldest = oldest_undelivered(conn, self.target)
                now = conn.execute("SELECT now()").fetchone()[0]
        except psycopg.Error as err:
            raise classify(err, "ops database (notification outbox)", "check the ops_conn_id connection") from err
        for pending, error in done.failures:
            self.log.warning("notification %d (%s, created %s) not delivered via %s, kept for the next run: %s",
                             pending.id, pending.title, pending.created_at.isoformat(), pending.channel, error)
        for pending in done.in_flight:
            self.log.warning("notification %d (%s, created %s) via %s is claimed by another run, or by one that "
                             "ended before recording whether it was sent: sent again once the claim is %g s old",
                             pending.id, pending.title, pending.created_at.isoformat(), pending.channel,
                             self.claim_expiry)
        self.log.info("target %s: %d notifications delivered, %d channels failing, %d in flight", self.target,
                      done.delivered, len(done.failures), len(done.in_flight))
        if oldest and now - oldest[0] > timedelta(seconds=policy.undelivered_alarm):
            raise AirflowException(
                f"alert notifications for {self.target} undelivered via {oldest[1]} since {oldest[0].isoformat()}: "
                f"{oldest[2] or 'no error recorded'}. Fix the channel (its Airflow connection, the server); "
                "they are sent on the next run.")
        return {"delivered": done.delivered, "failed": len(done.failures), "in_flight": len(done.in_flight)}
