"""Alerting: db_alerts__<target> (every five minutes, per target with an `alerts` policy and no `alerts.group`),
db_alerts_group__<group> (one task evaluates all the targets of an `alerts.group`) and db_alert_silence (on
demand). A target whose rule packs are invalid keeps its DAG: its evaluate task
fails loudly every run and the parse logs the error. Runbooks: include/runbooks/.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import DAG, Param

from dbops.alerting.rules import rules_for
from dbops.core.config import alert_groups, load_config
from dbops.core.schema import ConfigError
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_groups, own_targets
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.alerting import AlertDeliveryOperator, AlertEvaluationOperator, AlertGroupDeliveryOperator, \
    AlertGroupEvaluationOperator, AlertSilenceOperator
from dbops.operators.base import fail_run_on_any_failure

config = load_config()
QUICK = {"retries": 1, "retry_delay": timedelta(seconds=15)}  # the next run comes in 5 minutes anyway


def rules_problem(target: str) -> str | None:
    """Why the target's rule packs are invalid (logged), or None; its DAG is still built and its evaluation fails
    loudly with this error."""
    try:
        rules_for(config, target)
    except ConfigError as err:
        problem = f"Alert rules of {target} are invalid, no rule is evaluated: {err}"
        logging.error("alerts of %s: %s", target, problem)
        return problem
    return None


for target, settings in own_targets(config.targets.items()):
    if settings.alerts is None or settings.alerts.group is not None:
        continue
    problem = rules_problem(target)
    with DAG(
        dag_id=f"db_alerts__{target}",
        schedule=settings.alerts.schedule,
        description=f"BROKEN: {problem}" if problem else f"Alert rules of {target}, evaluated every five minutes",
        doc_md=f"**BROKEN:** {problem}\n\n{runbook('db_alerts', target)}" if problem else runbook("db_alerts", target),
        dagrun_timeout=timedelta(minutes=4),
        **dag_kwargs(tags=["alerts", target],
                     on_failure=DbopsFailureNotifier(target=target, channels=settings.alerts.people,
                                                     repeat=settings.alerts.failure_repeat)),
    ) as alerts_dag:
        evaluate = AlertEvaluationOperator(task_id="evaluate", target=target, execution_timeout=timedelta(minutes=2),
                                           **QUICK)
        deliver = AlertDeliveryOperator(task_id="deliver", target=target, trigger_rule="all_done",
                                        execution_timeout=timedelta(minutes=1), **QUICK)
        evaluate >> deliver
        fail_run_on_any_failure(alerts_dag)  # deliver runs after a failed evaluation: the run must still fail

for group, members in own_groups("db_alerts_group", alert_groups(config).items()):
    policies = [config.targets[member].alerts for member in members]
    broken = [problem for problem in map(rules_problem, members) if problem]
    summary = f"Alert rules of the {len(members)} targets of group {group}, evaluated together"  # listed in doc_md
    # each failed target's people are told by the task itself; the run's own failure goes to every member's people
    with DAG(
        dag_id=f"db_alerts_group__{group}",
        schedule=policies[0].schedule,  # one schedule per group (config validation)
        description=f"BROKEN ({len(broken)} of {len(members)}): {summary}" if broken else summary,
        doc_md="\n\n".join([*(f"**BROKEN:** {problem}" for problem in broken),
                             runbook("db_alerts_group", group).replace("{targets}", ", ".join(members))]),
        dagrun_timeout=timedelta(minutes=4),
        **dag_kwargs(tags=["alerts", f"alerts_group:{group}", *members],
                     on_failure=DbopsFailureNotifier(
                         target=group, channels=sorted({c for policy in policies for c in policy.people}),
                         repeat=min(policy.failure_repeat for policy in policies))),
    ) as group_dag:
        evaluate = AlertGroupEvaluationOperator(task_id="evaluate", group=group, targets=members,
                                                execution_timeout=timedelta(minutes=2), **QUICK)
        deliver = AlertGroupDeliveryOperator(task_id="deliver", group=group, targets=members, trigger_rule="all_done",
                                             execution_timeout=timedelta(minutes=1), **QUICK)
        evaluate >> deliver
        fail_run_on_any_failure(group_dag)

alert_targets = [target for target, settings in config.targets.items() if settings.alerts]
with DAG(
    dag_id="db_alert_silence",
    schedule=None,
    description="Silence alerts for planned work (or end a silence early); lists the active silences",
    doc_md=runbook("db_alert_silence"),
    params={
        "target": Param("all", type="string", enum=["all", *alert_targets], description="the target, or all"),
        "rule": Param("", type="string", description="regular expression on the alert name (empty: any rule)"),
        "labels": Param({}, type="object", description='label -> regular expression, e.g. {"datname": "appdb"}'),
        "duration": Param("2h", type="string", description="how long, e.g. 30min, 2h, 1d (at most 30d)"),
        "comment": Param(type="string", minLength=3, description="why (who reads it: the on-call engineer)"),
        "end_silence_id": Param(0, type="integer", minimum=0, description="end this silence now instead"),
    },
    **dag_kwargs(tags=["alerts", "silence"]),
):
    AlertSilenceOperator(task_id="silence", execution_timeout=timedelta(minutes=2))
