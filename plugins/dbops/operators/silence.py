"""Set or end an alert silence without SQL, and list the active silences."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from dbops.core.config import DbopsConfig, load_config
from dbops.core.schema import ConfigError, Seconds, build_section

if TYPE_CHECKING:
    from airflow.sdk import Context

MAX_SILENCE_SECONDS = 30 * 86400.0  # a forgotten silence must not hide alerts for ever


@dataclass(frozen=True)
class SilenceRequest:
    """The Params of ``db_alert_silence``, validated like dbops.yaml."""

    target: str
    duration: Seconds
    comment: str
    rule: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    end_silence_id: int = 0


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
        from dbops.alerting.silences import ALL_TARGETS, active_silences, add_silence, end_silence
        from dbops.hooks.ops import OpsDatabaseHook

        config = load_config(self.config_path)
        request = self._validated(config, dict(context["params"]))
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
                matchers = {**request.labels, **({"alertname": request.rule} if request.rule else {})}
                target = None if request.target == ALL_TARGETS else request.target
                try:
                    silence = add_silence(conn, target=target, matchers=matchers, seconds=request.duration,
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

    def _validated(self, config: DbopsConfig, params: dict[str, Any]) -> SilenceRequest:
        from dbops.alerting.silences import ALL_TARGETS

        where = "db_alert_silence: Params"
        try:
            request = build_section(SilenceRequest, params, Path("db_alert_silence"), "Params")
        except ConfigError as err:
            raise AirflowFailException(str(err)) from None
        targets = sorted(name for name, target in config.targets.items() if target.alerts)
        if request.target not in [ALL_TARGETS, *targets]:
            raise AirflowFailException(f"{where}: target {request.target!r} has no alerts; choose one of "
                                       f"{', '.join([ALL_TARGETS, *targets])}")
        if not request.end_silence_id:
            if not 0 < request.duration <= MAX_SILENCE_SECONDS:
                raise AirflowFailException(f"{where}: duration must be more than 0 and at most 30d")
            if len(request.comment.strip()) < 3:
                raise AirflowFailException(f"{where}: say why in comment (who will read it: the on-call engineer)")
        return request
