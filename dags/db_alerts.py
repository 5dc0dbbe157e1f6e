"""
### Alert evaluation every five minutes

`db_alerts__<target>`, one DAG per target with an `alerts` policy in `include/config/dbops.yaml`:

1. **evaluate** — every rule of the target's packs (`include/config/rules/`, queries in
   `include/sql/queries/`) runs in a READ ONLY transaction with `statement_timeout` and
   `lock_timeout`. A rule that fails or times out fires `RuleEvaluationFailed` and the others still
   run; an unreachable target fires `TargetDown` and holds its other alerts as they were. Alert state
   (pending → firing → resolved, with `for`, repeat interval and silences), the transitions, every
   evaluated value (`dbops.metric_samples`) and the grouped notification are committed together in
   the ops database; a `pg_notify` message goes out on commit.
2. **deliver** — email and Slack notifications queued by this or earlier runs, oldest first, each
   once. A channel that is down keeps its messages for the next run; the task fails (and the failure
   notifier speaks) once one has waited longer than `alerts.undelivered_alarm`.

Alerts are data, not task failures: the DAG fails only when it cannot evaluate or record at all,
or when the target's rule packs are invalid (then **evaluate** fails at once with the error, every
run, and the failure notifier speaks; the error is also logged when this file is parsed and shown at
the top of this description). Alerts describe the present: a backfill run, or a run for a time more
than 15 minutes ago, skips **evaluate** and leaves alert state alone. Runs never overlap
(`max_active_runs=1`, and a lock per target in the ops database that a backfill cannot bypass: a
second run waits 20 s, then skips) and each task has a short timeout, so a stuck run shows up as a
failure instead of silently stopping alerting.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from airflow.sdk import DAG, Param

from dbops.alerting.rules import rules_for
from dbops.core.config import load_config
from dbops.core.schema import ConfigError
from dbops.core.dag_defaults import dag_kwargs
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.alerting import AlertDeliveryOperator, AlertEvaluationOperator, AlertSilenceOperator
from dbops.operators.base import fail_run_on_any_failure

config = load_config()

for target, settings in config.targets.items():
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
        description=f"BROKEN: {problem}" if problem else None,
        doc_md=f"**BROKEN:** {problem}\n\n{__doc__}" if problem else __doc__,
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
    doc_md="""
### Silence alerts without SQL

Trigger with Params: **target** (`all` or one target), **rule** (a regular expression on the alert
name, e.g. `long_running_queries_.*`), **labels** (label name → regular expression, e.g.
`{"datname": "appdb"}`), **duration** (`30min`, `2h`, at most `30d`) and **comment** (why: the
on-call engineer reads it). Matchers are full-match regular expressions; at least one is needed.
Silenced alerts still change state; they are not notified. To end a silence early, set
**end_silence_id** to its id. The log lists every active silence, one line each.

If the task fails: the log names the Param to fix (an invalid regular expression, an unknown target,
a missing comment); nothing was changed.
""",
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
