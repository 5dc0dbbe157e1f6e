"""One target's alert cycle, as the per-target and the group DAGs run it: evaluate and commit, then deliver.

Both functions are the whole of a task's work for one target; :class:`~dbops.operators.alerting.
AlertEvaluationOperator` calls them for its target, the group operator for each target of its group, so
state, pending → firing → resolved, silences, TargetDown and the outbox are this code either way.
"""

from __future__ import annotations

import logging
from contextlib import closing
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.alerting.cycle import SKIPPED_METRIC, combine, lasting_skips, reachable, target_down, unreachable
from dbops.alerting.evaluate import Evaluation, evaluate
from dbops.alerting.notify import change_line
from dbops.alerting.record import Pending, deliver_outbox, latest_values, oldest_undelivered, record_cycle
from dbops.alerting.rules import RULE_FAILED, TARGET_DOWN, Rule, rules_for
from dbops.core.errors import classify
from dbops.core.locks import job_lock
from dbops.core.schema import ConfigError
from dbops.hooks.ops import OpsDatabaseHook
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.notifications.channels import Notification, send

if TYPE_CHECKING:
    from dbops.alerting.policy import AlertPolicy
    from dbops.core.config import DbopsConfig


def evaluate_target(config: DbopsConfig, target: str, run_id: str, log: Any, lock_wait: float = 20.0) -> dict[str, Any]:
    """Evaluate ``target``'s alert rules and commit the cycle (alert states, events, samples, outbox).

    :raises AirflowFailException: the target's rule packs are invalid.
    :raises JobBusy: another run evaluates this target (waited ``lock_wait`` seconds).
    :raises AirflowException: (classified) the ops database cannot be used.
    """
    policy = config.targets[target].alerts
    try:
        rules = rules_for(config, target)
    except ConfigError as err:
        raise AirflowFailException(f"alert rules of {target} are invalid, no rule is evaluated: {err}. "
                                   "Fix the rule pack or the target's alerts.thresholds in dbops.yaml") from err
    ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
    try:
        with job_lock(config.ops_conn_id, target, "alerts", wait_seconds=lock_wait), \
                closing(ops.get_conn()) as state_conn, closing(ops.get_conn()) as read_conn:
            previous = latest_values(state_conn, target, {r.query for r in rules if r.counter} | {SKIPPED_METRIC})
            on_target = (_evaluate_mongo if config.targets[target].engine == "mongodb" else _evaluate_postgres)(
                target, config.targets[target].conn_id, policy, [r for r in rules if r.database == "target"],
                previous, log)
            on_ops = evaluate(read_conn, [r for r in rules if r.database == "ops"], **policy.query_limits(),
                              params={"target": target}, previous=previous)
            samples, metrics, unevaluated = combine(on_target, on_ops, rules)
            skips = lasting_skips({**on_target.skipped, **on_ops.skipped})
            metrics += skips
            cycle = record_cycle(
                state_conn, target=target, run_id=run_id,
                rules={r.name: r for r in [*rules, TARGET_DOWN, RULE_FAILED]}, samples=samples, metrics=metrics,
                unevaluated=unevaluated, channels=policy.notify,
                pg_notify_channel=config.notifications.pg_notify_channel if "pg_notify" in policy.notify else None,
                sample_retention_seconds=policy.sample_retention)
    except psycopg.Error as err:
        raise classify(err, "ops database (alert state)", "check the ops_conn_id connection") from err
    for change in cycle.changes:
        log.log(logging.INFO if change.kind == "resolved" else logging.WARNING, "%s", change_line(change))
    for error in on_target.errors + on_ops.errors:
        log.warning("%s: rule %s: evaluation %s: %s", target, error.rule, error.kind, error.message)
    for skip in skips:  # logged the first time only: it is the same every five minutes
        if skip.key not in previous:
            log.info("%s: rule %s skipped: %s (said once; skipped in every run while this holds)",
                     target, skip.labels["rule"], skip.labels["why"])
    for ignored in cycle.ignored_silences:
        log.warning("%s", ignored)
    result = {
        "rules": len(rules), "samples": len(metrics), "errors": len(on_target.errors) + len(on_ops.errors),
        "skipped": len(on_target.skipped) + len(on_ops.skipped), "target_up": not target_down(on_target),
        "firing": sum(a.state.status == "firing" for a in cycle.alerts),
        "pending": sum(a.state.status == "pending" for a in cycle.alerts),
        "notified": [c.kind for c in cycle.changes],
        "ignored_silences": cycle.ignored_silences,
        "db_seconds": round(on_target.db_seconds + on_ops.db_seconds, 3),
    }
    firing = sorted(a.name for a in cycle.alerts if a.state.status == "firing")
    log.info("alerts %s: %s; %d pending; %d rules, %d samples, %d evaluation errors, %d skipped; "
             "%d changes notified; %d silences ignored; %.3f s in queries", target,
             f"{len(firing)} firing ({', '.join(firing)})" if firing else "nothing firing",
             result["pending"], result["rules"], result["samples"], result["errors"], result["skipped"],
             len(cycle.changes), len(cycle.ignored_silences), result["db_seconds"],
             firing=firing, rules=result["rules"], errors=result["errors"])
    return result


def _evaluate_postgres(target: str, conn_id: str, policy: AlertPolicy, rules: list[Rule],
                       previous: dict[tuple[str, str], float], log: Any) -> Evaluation:
    """The PostgreSQL target's rules; a server that does not answer is down."""
    hook = DbopsPostgresHook(postgres_conn_id=conn_id, connect_timeout=policy.connect_timeout)
    try:
        with closing(hook.get_conn()) as conn:
            result = evaluate(conn, rules, **policy.query_limits(), previous=previous)
    except psycopg.OperationalError as err:  # refused, timed out, or lost mid-evaluation
        message = " ".join(str(err).split()) or type(err).__name__
        log.error("target %s does not answer: %s", target, message)
        return unreachable(rules, message)
    return reachable(result)


def _evaluate_mongo(target: str, conn_id: str, policy: AlertPolicy, rules: list[Rule],
                    previous: dict[tuple[str, str], float], log: Any) -> Evaluation:
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
        log.error("target %s does not answer: %s", target, message)
        return unreachable(rules, message)
    return reachable(result)


def deliver_target(config: DbopsConfig, target: str, claim_expiry: float, log: Any) -> dict[str, Any]:
    """Deliver ``target``'s queued notifications (see :func:`deliver_outbox`).

    :raises AirflowException: a notification has waited longer than the policy's ``undelivered_alarm``,
        or (classified) the ops database cannot be used.
    """
    policy = config.targets[target].alerts

    def deliver(pending: Pending) -> str | None:
        notification = Notification(pending.title, pending.body, pending.severity, target)
        outcome = send(notification, [pending.channel], config.notifications)[pending.channel]
        return None if outcome == "sent" else outcome

    ops = OpsDatabaseHook(postgres_conn_id=config.ops_conn_id)
    try:
        with closing(ops.get_conn()) as conn:
            done = deliver_outbox(conn, target, deliver, claim_expiry)
            oldest = oldest_undelivered(conn, target)
            now = conn.execute("SELECT now()").fetchone()[0]
    except psycopg.Error as err:
        raise classify(err, "ops database (notification outbox)", "check the ops_conn_id connection") from err
    for pending, error in done.failures:
        log.warning("notification %d (%s, created %s) not delivered via %s, kept for the next run: %s",
                    pending.id, pending.title, pending.created_at.isoformat(), pending.channel, error)
    for pending in done.in_flight:
        log.warning("notification %d (%s, created %s) via %s is claimed by another run, or by one that "
                    "ended before recording whether it was sent: sent again once the claim is %g s old",
                    pending.id, pending.title, pending.created_at.isoformat(), pending.channel, claim_expiry)
    log.info("target %s: %d notifications delivered, %d channels failing, %d in flight", target,
             done.delivered, len(done.failures), len(done.in_flight))
    if oldest and now - oldest[0] > timedelta(seconds=policy.undelivered_alarm):
        raise AirflowException(
            f"alert notifications for {target} undelivered via {oldest[1]} since {oldest[0].isoformat()}: "
            f"{oldest[2] or 'no error recorded'}. Fix the channel (its Airflow connection, the server); "
            "they are sent on the next run.")
    return {"delivered": done.delivered, "failed": len(done.failures), "in_flight": len(done.in_flight)}
