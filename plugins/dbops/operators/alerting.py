"""Alerting operators: evaluate a target's rules, deliver its queued notifications, set or end a silence."""

from __future__ import annotations

import logging
from contextlib import closing
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import psycopg
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from dbops.alerting.cycle import SKIPPED_METRIC, combine, lasting_skips, reachable, target_down, unreachable, \
    why_not_current
from dbops.alerting.evaluate import Evaluation, evaluate
from dbops.alerting.notify import change_line
from dbops.alerting.record import Pending, deliver_outbox, latest_values, oldest_undelivered, record_cycle
from dbops.alerting.rules import RULE_FAILED, TARGET_DOWN, Rule, rules_for
from dbops.core.config import load_config
from dbops.core.errors import classify
from dbops.core.locks import job_lock
from dbops.core.schema import ConfigError
from dbops.hooks.ops import OpsDatabaseHook
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.notifications.channels import Notification, send
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.alerting.policy import AlertPolicy


class AlertEvaluationOperator(TargetOperator):
    """Evaluate a target's alert rules and commit the cycle: alert states, events, samples, outbox.

    Target rules run read-only with the policy's timeouts; a rule that fails is an evaluation error
    (alert ``RuleEvaluationFailed``), never a task failure. An unreachable target fires ``TargetDown``
    and holds the state of its other alerts. The task fails when the ops database cannot be used, and
    at once when the target's rule packs are invalid. Alerts describe the present, so a backfill run or
    a run for a time more than 15 minutes ago (:func:`~dbops.alerting.cycle.why_not_current`) is skipped
    and leaves alert state alone; one run at a time per target evaluates (``job_lock``), another waits
    ``lock_wait`` seconds, then is skipped.

    :param target: the target's key in dbops.yaml.
    :param lock_wait: seconds to wait for another run of this target's evaluation to finish.
    """

    def __init__(self, *, lock_wait: float = 20.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock_wait = lock_wait

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow.sdk.exceptions import AirflowSkipException

        dag_run = context["dag_run"]
        past = why_not_current(dag_run.run_type, dag_run.data_interval_end or dag_run.run_after,
                               datetime.now(timezone.utc))
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
                on_target = (self._evaluate_mongo if config.targets[self.target].engine == "mongodb" else
                             self._evaluate_target)(config.targets[self.target].conn_id, policy,
                                                    [r for r in rules if r.database == "target"], previous)
                on_ops = evaluate(read_conn, [r for r in rules if r.database == "ops"], **policy.query_limits(),
                                  params={"target": self.target}, previous=previous)
                samples, metrics, unevaluated = combine(on_target, on_ops, rules)
                skips = lasting_skips({**on_target.skipped, **on_ops.skipped})
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
        up = not target_down(on_target)
        result = {
            "rules": len(rules), "samples": len(metrics), "errors": len(on_target.errors) + len(on_ops.errors),
            "skipped": len(on_target.skipped) + len(on_ops.skipped), "target_up": up,
            "firing": sum(a.state.status == "firing" for a in cycle.alerts),
            "pending": sum(a.state.status == "pending" for a in cycle.alerts),
            "notified": [c.kind for c in cycle.changes],
            "ignored_silences": cycle.ignored_silences,
            "db_seconds": round(on_target.db_seconds + on_ops.db_seconds, 3),
        }
        firing = sorted(a.name for a in cycle.alerts if a.state.status == "firing")
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
                result = evaluate(conn, rules, **policy.query_limits(), previous=previous)
        except psycopg.OperationalError as err:  # refused, timed out, or lost mid-evaluation
            message = " ".join(str(err).split()) or type(err).__name__
            self.log.error("target %s does not answer: %s", self.target, message)
            return unreachable(rules, message)
        return reachable(result)

    def _evaluate_mongo(self, conn_id: str, policy: AlertPolicy, rules: list[Rule],
                        previous: dict[tuple[str, str], float]) -> Evaluation:
        """The MongoDB target's rules (:mod:`dbops.mongo.rules`); a server that does not answer is down."""
        from pymongo.errors import ConnectionFailure, OperationFailure

        from dbops.hooks.mongo import DbopsMongoHook
        from dbops.mongo.rules import evaluate_commands

        timeout_ms = int(policy.connect_timeout * 1000)
        hook = DbopsMongoHook(mongo_conn_id=conn_id)
        hook.extras.update(serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms,
                           socketTimeoutMS=int(policy.statement_timeout * 1000))
        try:
            with hook:
                result = evaluate_commands(hook.get_conn(), hook.database, rules, previous)
        except (ConnectionFailure, OperationFailure) as err:  # refused, timed out, lost, or refused our login
            message = " ".join(str(err).split()) or type(err).__name__
            self.log.error("target %s does not answer: %s", self.target, message)
            return unreachable(rules, message)
        return reachable(result)


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


class AlertSilenceOperator(BaseOperator):
    """Add a silence (or end one early) in the ops database, then log every active silence.

    It reads the DAG run's Params: ``target`` (a target or ``all``), ``rule`` (a regular expression on
    the alert name), ``labels`` (label name -> regular expression), ``duration`` (e.g. ``2h``, at most
    30 days), ``comment`` (why), ``end_silence_id`` (end that silence instead). A retried task finds
    the silence its first try added and adds no second one.

    :param config_path: the config file; default ``$DBOPS_CONFIG`` or include/config/dbops.yaml.
    """

    def __init__(self, *, config_path: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config_path = config_path

    def execute(self, context: Context) -> dict[str, Any]:
        from dbops.alerting.silences import ALL_TARGETS, active_silences, add_silence, end_silence, silence_request

        config = load_config(self.config_path)
        targets = sorted(name for name, target in config.targets.items() if target.alerts)
        try:
            request = silence_request(dict(context["params"]), targets)
        except ConfigError as err:
            raise AirflowFailException(str(err)) from None
        who = getattr(context["dag_run"], "triggering_user_name", None) or "airflow"
        with closing(OpsDatabaseHook(postgres_conn_id=config.ops_conn_id).get_conn()) as conn:
            if request.end_silence_id:
                ended = end_silence(conn, request.end_silence_id)
                if ended is None:
                    raise AirflowFailException(f"no active silence has id {request.end_silence_id}; the active "
                                               "ones are listed in this DAG's last successful run")
                self.log.info("ended %s", ended.line())
                result = {"ended": ended.id}
            else:
                target = None if request.target == ALL_TARGETS else request.target
                try:
                    silence = add_silence(conn, target=target, matchers=request.matchers, seconds=request.duration,
                                          created_by=who, comment=request.comment)
                except ValueError as err:
                    raise AirflowFailException(f"silence not added: {err}") from None
                self.log.info("added %s", silence.line())
                result = {"added": silence.id}
            active = active_silences(conn)
        for row in active:
            self.log.info("active: %s", row.line())
        self.log.info("%d active silences", len(active))
        return {**result, "active": len(active)}
