"""Alerting operators: evaluate a target's rules, deliver its queued notifications, set or end a silence."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from datetime import datetime, timezone
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from dbops.alerting.cycle import why_not_current
from dbops.alerting.run import deliver_target, evaluate_target
from dbops.core.config import load_config
from dbops.core.schema import ConfigError
from dbops.hooks.ops import OpsDatabaseHook
from dbops.notifications.channels import DbopsFailureNotifier
from dbops.operators.base import TargetOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.core.config import DbopsConfig


def check_claim_expiry(task: BaseOperator, claim_expiry: float) -> None:
    """A claim must outlive the delivering task, or a slow send is repeated."""
    if task.execution_timeout and claim_expiry <= task.execution_timeout.total_seconds():
        raise ValueError(f"{task.task_id}: claim_expiry ({claim_expiry:g} s) must be longer than the "
                         f"execution_timeout ({task.execution_timeout}), or a slow send is repeated")



def skip_unless_current(context: Context, what: str) -> None:
    """Skip a backfill run or one for a time long past: alerts describe the present (alert state left as it is)."""
    dag_run = context["dag_run"]
    past = why_not_current(dag_run.run_type, dag_run.data_interval_end or dag_run.run_after, datetime.now(timezone.utc))
    if past:
        raise AirflowSkipException(f"alerts of {what} not evaluated: {past}; alerts describe the present, only a "
                                   "current run evaluates them (alert state left as it is)")

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
        skip_unless_current(context, self.target)
        return evaluate_target(self.load_config(), self.target, context["run_id"], self.log, self.lock_wait)


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
        check_claim_expiry(self, claim_expiry)
        self.claim_expiry = claim_expiry

    def execute(self, context: Context) -> dict[str, Any]:
        return deliver_target(self.load_config(), self.target, self.claim_expiry, self.log)


class _AlertGroupOperator(BaseOperator):
    """One task for every target of an alert group (``alerts.group``): the per-target work, a few targets at a time.

    Each target runs in its own thread with its own lock, connections and timeouts; whatever it raises is that
    target's verdict only. The task logs one line per target, and once every target is done it fails naming each
    failed target and why; each failed target's people channels are notified as ``db_alerts__<target>``'s would be
    (once per incident, ``failure_repeat``), under the task id ``<task>[<target>]``.

    :param group: the group's name.
    :param targets: its targets' keys in dbops.yaml.
    :param workers: targets at a time.
    :param config_path: the config file; default ``$DBOPS_CONFIG`` or include/config/dbops.yaml.
    """

    template_fields: Sequence[str] = ("group",)
    work = ""  # what is done per target, for the log

    def __init__(self, *, group: str, targets: list[str], workers: int = 4, config_path: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.group = group
        self.targets = targets
        self.workers = workers
        self.config_path = config_path

    def run_target(self, config: DbopsConfig, target: str, context: Context) -> dict[str, Any]:
        raise NotImplementedError

    def execute(self, context: Context) -> dict[str, Any]:
        from concurrent.futures import ThreadPoolExecutor

        config = load_config(self.config_path)

        def one(target: str) -> dict[str, Any] | BaseException:
            try:
                return self.run_target(config, target, context)
            except AirflowSkipException as skip:  # another run holds this target's lock
                self.log.warning("%s of %s: skipped: %s", self.work, target, skip)
                return {"skipped": str(skip)}
            except Exception as err:
                self.log.error("%s of %s: FAILED: %s", self.work, target, err)
                return err

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix=self.task_id) as pool:
            verdicts = dict(zip(self.targets, pool.map(one, self.targets)))
        failed = {target: err for target, err in verdicts.items() if isinstance(err, BaseException)}
        self.log.info("%s of group %s: %d targets, %d failed%s", self.work, self.group, len(verdicts), len(failed),
                      f" ({', '.join(failed)})" if failed else "")
        if not failed:
            return verdicts
        permanent = all(isinstance(err, AirflowFailException) for err in failed.values())
        ti = context.get("ti")
        if permanent or ti is None or ti.try_number > self.retries:  # the last try: told, as a DAG's failure is
            for target, err in failed.items():
                self._notify_failure(context, config, target, err)
        why = "; ".join(f"{target}: {err}" for target, err in failed.items())
        message = (f"{self.work} failed for {len(failed)} of {len(verdicts)} targets of alert group {self.group} "
                   f"(the others are done): {why}")
        if permanent:
            raise AirflowFailException(message)
        raise AirflowException(message)  # something transient among them: retried, as db_alerts__<target>

    def _notify_failure(self, context: Context, config: DbopsConfig, target: str, err: BaseException) -> None:
        """The failure notification ``db_alerts__<target>`` would send, for this target's task only."""
        policy = config.targets[target].alerts
        ti = context.get("ti")
        task = SimpleNamespace(dag_id=self.dag_id, task_id=f"{self.task_id}[{target}]",
                               try_number=getattr(ti, "try_number", None), log_url=getattr(ti, "log_url", None))
        DbopsFailureNotifier(target=target, channels=policy.people, config_path=self.config_path,
                             repeat=policy.failure_repeat).notify({**context, "ti": task, "exception": err})


class AlertGroupEvaluationOperator(_AlertGroupOperator):
    """Evaluate every target of an alert group as :class:`AlertEvaluationOperator` does one (see
    :class:`_AlertGroupOperator`); a past or backfill run is skipped as a whole.

    :param lock_wait: seconds to wait for another run of a target's evaluation; then that target is skipped.
    """

    work = "alerts"

    def __init__(self, *, lock_wait: float = 20.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lock_wait = lock_wait

    def execute(self, context: Context) -> dict[str, Any]:
        skip_unless_current(context, f"group {self.group}")
        return super().execute(context)

    def run_target(self, config: DbopsConfig, target: str, context: Context) -> dict[str, Any]:
        return evaluate_target(config, target, context["run_id"], self.log, self.lock_wait)


class AlertGroupDeliveryOperator(_AlertGroupOperator):
    """Deliver every target's queued notifications of an alert group as :class:`AlertDeliveryOperator` does one.

    :param claim_expiry: as :class:`AlertDeliveryOperator`'s.
    """

    work = "delivery"

    def __init__(self, *, claim_expiry: float = 600.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_claim_expiry(self, claim_expiry)
        self.claim_expiry = claim_expiry

    def run_target(self, config: DbopsConfig, target: str, context: Context) -> dict[str, Any]:
        return deliver_target(config, target, self.claim_expiry, self.log)


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
