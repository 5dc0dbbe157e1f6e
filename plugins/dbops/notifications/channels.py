"""Deliver dbops notifications to the channels a target's ``notify`` list names.

:func:`send` tries every channel and reports each outcome; a channel that fails is logged at ERROR
and never stops the others. :class:`DbopsFailureNotifier` turns a failed task or DAG run into a
notification (use it as ``on_failure_callback``); with a repeat interval it speaks once per incident
(:func:`first_of_incident`). Email and Slack go through the providers' hooks, imported when a message
is sent, never at DAG parse time.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from airflow.sdk import BaseNotifier

from dbops.core.config import load_config

if TYPE_CHECKING:
    import psycopg
    from airflow.sdk import Context

    from dbops.core.config import NotificationsConfig

log = logging.getLogger("dbops.notify")
# slack_sdk's client logs the whole webhook URL, token included: at DEBUG on every request, at INFO on a
# retry, at ERROR when the URL is malformed. It gets this silent logger instead of the hook's: whatever
# fails is raised, and send() reports it with the URL taken out.
_slack_client_log = logging.getLogger("dbops.notify.slack_client")
_slack_client_log.setLevel(logging.CRITICAL)

SEVERITY_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}


@dataclass(frozen=True)
class Notification:
    """One message for people.

    :param title: one line, e.g. ``pg_backup__appdb failed: verify_restore``.
    :param body: plain text: what failed, the error, the run, the log link, what to do.
    :param severity: ``info``, ``warning`` or ``critical``.
    :param target: the target's key in dbops.yaml.
    """

    title: str
    body: str
    severity: str
    target: str

    def __post_init__(self) -> None:
        if self.severity not in SEVERITY_LEVELS:
            raise ValueError(f"severity must be one of {', '.join(SEVERITY_LEVELS)}, got {self.severity!r}")


class ChannelNotConfigured(Exception):
    """The channel is unknown or its ``notifications`` section is missing."""


class DeliveryFailed(Exception):
    """A channel's delivery failed; the message is the cause, with secrets taken out."""


def send(notification: Notification, channels: Sequence[str], config: NotificationsConfig) -> dict[str, str]:
    """Deliver ``notification`` to every channel; return ``{channel: "sent" | "failed: <reason>"}``.

    Delivery failures raise nothing: each is logged at ERROR on ``dbops.notify`` and reported in the
    result, and the remaining channels are still tried.
    """
    results: dict[str, str] = {}
    for channel in dict.fromkeys(channels):
        try:
            deliver = _DELIVERERS.get(channel)
            if deliver is None:
                raise ChannelNotConfigured(
                    f"unknown channel {channel!r} (this notifier delivers to: {', '.join(_DELIVERERS)})")
            deliver(notification, config)
        except Exception as err:
            reason = _describe(err)
            log.error("notification %r (target %s) not delivered via %s: %s",
                      notification.title, notification.target, channel, reason)
            results[channel] = f"failed: {reason}"
        else:
            results[channel] = "sent"
    return results


def _describe(err: Exception) -> str:
    if isinstance(err, (ChannelNotConfigured, DeliveryFailed)):
        return str(err)
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def _to_log(notification: Notification, config: NotificationsConfig) -> None:
    log.log(SEVERITY_LEVELS[notification.severity], "%s\n%s", notification.title, notification.body)


def _to_email(notification: Notification, config: NotificationsConfig) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    if config.email is None:
        raise ChannelNotConfigured("channel 'email' needs a notifications.email section in the config")
    with SmtpHook(smtp_conn_id=config.email.smtp_conn_id) as hook:
        hook.send_email_smtp(
            to=config.email.to,
            subject=notification.title,
            html_content=f"<pre>{html.escape(notification.body)}</pre>",
            from_email=config.email.from_email,
        )


def _to_slack(notification: Notification, config: NotificationsConfig) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    if config.slack is None:
        raise ChannelNotConfigured("channel 'slack' needs a notifications.slack section in the config")
    hook = SlackWebhookHook(slack_webhook_conn_id=config.slack.slack_webhook_conn_id, logger=_slack_client_log,
                            retry_handlers=_slack_retry_handlers())
    url = hook.client.url  # holds the token (which Airflow's log masking already hides)
    try:
        hook.send(text=f"*{_slack_escape(notification.title)}*\n{_slack_escape(notification.body)}")
    except Exception as err:  # slack_sdk names the whole URL in some errors ("Invalid URL detected: ...")
        raise DeliveryFailed(_describe(err).replace(url, "<webhook URL>")) from None


def _slack_retry_handlers() -> list:
    """Retry once, after a short backoff, on a connection error and on HTTP 500 / 503. Not HTTP 429: slack_sdk
    would sleep for whatever Retry-After says, holding the task or callback."""
    from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, ServerErrorRetryHandler

    return [ConnectionErrorRetryHandler(), ServerErrorRetryHandler()]


def _slack_escape(text: str) -> str:
    """Escape the three characters Slack's mrkdwn treats as control (so error text cannot @-mention)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_DELIVERERS: dict[str, Callable[[Notification, NotificationsConfig], None]] = {
    "log": _to_log,
    "email": _to_email,
    "slack": _to_slack,
}


class DbopsFailureNotifier(BaseNotifier):
    """Tell people a dbops task or DAG run failed: what, the error, the run, the log link, what to do.

    Use as ``on_failure_callback`` of a DAG or a task. Delivery failures are logged by :func:`send`
    and never raise, so a broken channel cannot hide the original failure.

    :param target: the target's key in dbops.yaml.
    :param channels: where to deliver (``log``, ``email``, ``slack``), usually the target's ``notify``.
    :param config_path: the config file; default ``$DBOPS_CONFIG`` or include/config/dbops.yaml.
    :param repeat: seconds; when set, a task failing again with the error last notified is not notified
        again until ``repeat`` seconds have passed (once per incident; remembered in the ops database).
        None: every failure is notified.
    """

    template_fields: Sequence[str] = ("target", "channels")

    def __init__(self, *, target: str, channels: list[str], config_path: str | None = None,
                 repeat: float | None = None) -> None:
        super().__init__()
        self.target = target
        self.channels = channels
        self.config_path = config_path
        self.repeat = repeat

    def notify(self, context: Context) -> None:
        config = load_config(self.config_path)
        notification = failure_notification(context, target=self.target)
        if self.repeat is not None and not self._first_of_incident(context, config.ops_conn_id):
            self.log.info("failure notification %r not sent: the same error was notified less than %g s ago "
                          "(dbops.failure_notifications)", notification.title, self.repeat)
            return
        results = send(notification, self.channels, config.notifications)
        self.log.info("failure notification %r: %s", notification.title,
                      ", ".join(f"{channel} {outcome}" for channel, outcome in results.items()))

    def _first_of_incident(self, context: Context, ops_conn_id: str) -> bool:
        """Whether this failure starts an incident; True when the ops database cannot tell (never lose one)."""
        from contextlib import closing

        from dbops.hooks.ops import OpsDatabaseHook

        dag_id, task_id = _failed(context)
        try:
            with closing(OpsDatabaseHook(postgres_conn_id=ops_conn_id).get_conn()) as conn:
                return first_of_incident(conn, dag_id, task_id or "", self.target, error_text(context), self.repeat)
        except Exception as err:
            self.log.warning("the last failure notification of %s could not be read from the ops database (%s): "
                             "notifying", dag_id, _describe(err))
            return True


def first_of_incident(conn: psycopg.Connection, dag_id: str, task_id: str, target: str, error: str,
                      repeat: float) -> bool:
    """Record a failure of ``dag_id``/``task_id``; True when it is to be notified: its error differs from
    the one last notified, or that was ``repeat`` seconds ago or more (then it becomes the last notified)."""
    with conn.transaction():
        notified = conn.execute(
            "INSERT INTO dbops.failure_notifications AS f (dag_id, task_id, target, error, notified_at) "
            "VALUES (%s, %s, %s, %s, now()) ON CONFLICT (dag_id, task_id) DO UPDATE SET target = EXCLUDED.target, "
            "error = EXCLUDED.error, notified_at = now(), suppressed = 0 "
            "WHERE f.error <> EXCLUDED.error OR f.notified_at <= now() - make_interval(secs => %s) RETURNING 1",
            (dag_id, task_id, target, error, repeat)).fetchone()
        if notified is None:
            conn.execute("UPDATE dbops.failure_notifications SET suppressed = suppressed + 1 "
                         "WHERE dag_id = %s AND task_id = %s", (dag_id, task_id))
    return notified is not None


def _failed(context: Context) -> tuple[str, str | None]:
    """The DAG id and (for a task-level failure) the task id of a failure callback's context."""
    ti = context.get("ti")
    return getattr(ti, "dag_id", None) or getattr(context.get("dag"), "dag_id", "unknown DAG"), \
        getattr(ti, "task_id", None)


def error_text(context: Context) -> str:
    """The error of a failure callback's context, in one line of text."""
    error = context.get("exception")
    if error is not None:
        return _describe(error)
    return context.get("reason") or "no exception in the callback context: see the task log"


# What to do after a failure, unless the exception says otherwise (its ``what_to_do``).
_RERUN = ("read the log, fix the cause the error names, then clear the failed task in the Airflow UI to run it "
          "again (dbops tasks are safe to re-run).")


def failure_notification(context: Context, *, target: str) -> Notification:
    """Build the ``critical`` notification for a failure callback's context (task- or DAG-level)."""
    ti = context.get("ti")
    dag_id, task_id = _failed(context)
    logical_date = context.get("logical_date")
    dag_run = context.get("dag_run")
    if logical_date is not None:
        when = f"logical date {logical_date.isoformat()}"
    elif getattr(dag_run, "run_after", None) is not None:
        when = f"run after {dag_run.run_after.isoformat()}"
    else:
        when = "no logical date"
    what = f"task {task_id} of DAG {dag_id}" if task_id else f"DAG {dag_id}"
    try_number = getattr(ti, "try_number", None)
    log_url = getattr(ti, "log_url", None)
    lines = [
        f"Target {target}: {what} failed" + (f" (try {try_number})." if try_number else "."),
        f"Error: {error_text(context)}",
        f"Run: {context.get('run_id')} ({when})",
        f"Log: {log_url}" if log_url else "Log: open the run in the Airflow UI",
        f"What to do: {getattr(context.get('exception'), 'what_to_do', None) or _RERUN}",
    ]
    return Notification(
        title=f"{dag_id} failed: {task_id}" if task_id else f"{dag_id} failed",
        body="\n".join(lines),
        severity="critical",
        target=target,
    )
