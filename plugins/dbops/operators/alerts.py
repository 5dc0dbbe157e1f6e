"""Alert evaluation of one target, and delivery of its queued notifications."""

from __future__ import annotations

import logging
from contextlib import closing
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from dbops.alerting.evaluate import Evaluation, Metric, Sample, evaluate
from dbops.alerting.notify import change_line
from dbops.alerting.rules import RULE_FAILED, TARGET_DOWN, Rule, rules_for
from dbops.alerting.store import Pending, deliver_outbox, latest_values, oldest_undelivered, record_cycle
from dbops.errors import classify
from dbops.hooks.ops import OpsDatabaseHook
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.notifiers.channels import Notification, send
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.config import AlertPolicy


class AlertEvaluationOperator(TargetOperator):
    """Evaluate a target's alert rules and commit the cycle: alert states, events, samples, outbox.

    Target rules run read-only with the policy's timeouts; a rule that fails is an evaluation error
    (alert ``RuleEvaluationFailed``), never a task failure. An unreachable target fires ``TargetDown``
    and holds the state of its other alerts. The task fails only when the ops database cannot be used.

    :param target: the target's key in dbops.yaml.
    """

    def execute(self, context: Context) -> dict[str, Any]:
        config = self.load_config()
        policy = config.targets[self.target].alerts
        rules = rules_for(config, self.target)
        ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
        try:
            with closing(ops.get_conn()) as state_conn, closing(ops.get_conn()) as read_conn:
                previous = latest_values(state_conn, self.target, {r.query for r in rules if r.counter})
                on_target = self._evaluate_target(config.targets[self.target].conn_id, policy,
                                                  [r for r in rules if r.database == "target"], previous)
                on_ops = evaluate(read_conn, [r for r in rules if r.database == "ops"], **_limits(policy),
                                  params={"target": self.target}, previous=previous)
                samples, metrics, unevaluated = _combine(on_target, on_ops, rules)
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
        for rule, why in {**on_target.skipped, **on_ops.skipped}.items():
            self.log.info("rule %s skipped: %s", rule, why)
        up = not _target_down(on_target)
        result = {
            "rules": len(rules), "samples": len(metrics), "errors": len(on_target.errors) + len(on_ops.errors),
            "skipped": len(on_target.skipped) + len(on_ops.skipped), "target_up": up,
            "firing": sum(a.state.status == "firing" for a in cycle.alerts),
            "pending": sum(a.state.status == "pending" for a in cycle.alerts),
            "notified": [c.kind for c in cycle.changes],
            "db_seconds": round(on_target.db_seconds + on_ops.db_seconds, 3),
        }
        self.log.info("target %s: %d rules, %d samples, %d evaluation errors, %d skipped; %d firing, %d pending; "
                      "%d changes to notify; %.3f s in queries", self.target, result["rules"], result["samples"],
                      result["errors"], result["skipped"], result["firing"], result["pending"],
                      len(cycle.changes), result["db_seconds"])
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
            down.skipped.update({r.name: "target down" for r in rules})
            return down
        result.samples.append(Sample(TARGET_DOWN.name, {}, 1.0, False))
        result.metrics.append(Metric("target_up", {}, 1.0))
        return result


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
    """Deliver the target's queued alert notifications (email, Slack), oldest first, each exactly once.

    A channel that fails keeps its notifications for the next run and the task succeeds; it fails
    (so the DAG's failure notifier speaks up) once a notification has waited longer than the policy's
    ``undelivered_alarm``.

    :param target: the target's key in dbops.yaml.
    """

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
                delivered, failures = deliver_outbox(conn, self.target, deliver)
                oldest = oldest_undelivered(conn, self.target)
                now = conn.execute("SELECT now()").fetchone()[0]
        except psycopg.Error as err:
            raise classify(err, "ops database (notification outbox)", "check the ops_conn_id connection") from err
        for pending, error in failures:
            self.log.warning("notification %d (%s, created %s) not delivered via %s, kept for the next run: %s",
                             pending.id, pending.title, pending.created_at.isoformat(), pending.channel, error)
        self.log.info("target %s: %d notifications delivered, %d channels failing", self.target, delivered,
                      len(failures))
        if oldest and now - oldest[0] > timedelta(seconds=policy.undelivered_alarm):
            raise AirflowException(
                f"alert notifications for {self.target} undelivered via {oldest[1]} since {oldest[0].isoformat()}: "
                f"{oldest[2]}. Fix the channel (its Airflow connection, the server); they are sent on the next run.")
        return {"delivered": delivered, "failed": len(failures)}
