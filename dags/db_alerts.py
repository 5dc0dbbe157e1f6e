"""Alerting: db_alerts__<target> (every five minutes, per target with an `alerts` policy) and
db_alert_silence (on demand). A target whose rule packs are invalid keeps its DAG: its evaluate task
fails loudly every run and the parse logs the error. Runbooks: include/runbooks/.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import DAG, Param

from dbops.alerting.rules import rules_for
from dbops.core.config import load_config
from dbops.core.schema import ConfigError
from dbops.core.dag_defaults import dag_kwargs, runbook
from dbops.core.parsing import own_targets
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.alerting import AlertDeliveryOperator, AlertEvaluationOperator, AlertSilenceOperator
from dbops.operators.base import fail_run_on_any_failure

config = load_config()

for target, settings in own_targets(config.targets.items()):
    if settings.alerts is None:
        continue
    try:
        rules_for(config, target)
        problem = None
    except ConfigError as err:  # the DAG is still built: its evaluate task fails loudly with this error
        problem = f"Alert rules of {target} are invalid, no rule is evaluated: {err}"
        logging.error("db_alerts__%s: %s", target, problem)
    # pg_notify carries alert transitions only; a failure of the DAG itself goes to the people channels
    people = [channel for channel in settings.alerts.notify if channel != "pg_notify"]
    with DAG(
        dag_id=f"db_alerts__{target}",
        schedule=settings.alerts.schedule,
        description=f"BROKEN: {problem}" if problem else f"Alert rules of {target}, evaluated every five minutes",
        doc_md=f"**BROKEN:** {problem}\n\n{runbook('db_alerts', target)}" if problem else runbook("db_alerts", target),
        dagrun_timeout=timedelta(minutes=4),
        **dag_kwargs(tags=["alerts", target],
                     on_failure=DbopsFailureNotifier(target=target, channels=people,
                                                     repeat=settings.alerts.failure_repeat)),
    ) as alerts_dag:
        quick = {"retries": 1, "retry_delay": timedelta(seconds=15)}  # the next run comes in 5 minutes anyway
        evaluate = AlertEvaluationOperator(task_id="evaluate", target=target, execution_timeout=timedelta(minutes=2),
                                           **quick)
        deliver = AlertDeliveryOperator(task_id="deliver", target=target, trigger_rule="all_done",
                                        execution_timeout=timedelta(minutes=1), **quick)
        evaluate >> deliver
        fail_run_on_any_failure(alerts_dag)  # deliver runs after a failed evaluation: the run must still fail

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
