"""One run at a time per target and job: a session advisory lock in the ops database.

Airflow's ``max_active_runs`` does not stop a backfill's run from running beside a scheduled one (a
backfill has its own limit), so every task that changes state (alert evaluation, retention, DDL)
holds ``job_lock(target, job)`` while it works. The lock lives on its own ops-database connection:
it is released when the block ends, and by the server when the worker dies (kill -9 included).
A second run waits ``wait_seconds``, then skips with a line naming who holds the lock; a task whose work
must not be dropped (an erasure request, a lifecycle run) asks ``retry_when_busy`` and fails instead, to
be retried by Airflow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import closing, contextmanager

from airflow.sdk.exceptions import AirflowException, AirflowSkipException

_NAMESPACE = "dbops.job"
_POLL_SECONDS = 0.5
DEFAULT_WAIT_SECONDS = 30.0


class JobBusy(AirflowSkipException):
    """Another run holds the lock of this target and job."""


class JobBusyRetry(AirflowException):
    """Another run holds the lock of this target and job; this try fails and Airflow retries it."""


@contextmanager
def job_lock(ops_conn_id: str, target: str, job: str, wait_seconds: float | None = None,
             retry_when_busy: bool = False, shared: bool = False) -> Iterator[None]:
    """Hold the (``target``, ``job``) lock of the ops database while the block runs.

    :param ops_conn_id: the ops database connection.
    :param target: the target's key in dbops.yaml.
    :param job: what is serialized, e.g. ``alerts``, ``retention``, ``restore``.
    :param wait_seconds: how long to wait for another run to finish before giving up (default 30 s).
    :param retry_when_busy: give up with :class:`JobBusyRetry` (a failed try, retried) instead of skipping.
    :param shared: a shared lock: runs holding it shared go together; an exclusive holder waits for them all.
    :raises JobBusy: the lock stayed taken for ``wait_seconds`` (the task ends skipped).
    :raises JobBusyRetry: the same, with ``retry_when_busy`` (the try fails; nothing was done).
    """
    from dbops.hooks.ops import OpsDatabaseHook

    key = f"{target}/{job}"
    wait_seconds = DEFAULT_WAIT_SECONDS if wait_seconds is None else wait_seconds
    with closing(OpsDatabaseHook(postgres_conn_id=ops_conn_id).get_conn()) as conn:
        conn.autocommit = True
        deadline = time.monotonic() + wait_seconds
        mode = "_shared" if shared else ""
        while not conn.execute(f"SELECT pg_try_advisory_lock{mode}(hashtext(%s), hashtext(%s))",
                               (_NAMESPACE, key)).fetchone()[0]:
            if time.monotonic() >= deadline:
                busy = (f"{job} of {target} is already running in another run ({holder(conn, key)}); "
                        f"waited {wait_seconds:g} s")
                if retry_when_busy:
                    raise JobBusyRetry(f"{busy}; nothing was done, failing this try: {_retry_note()}")
                raise JobBusy(f"{busy}, skipping this one")
            time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            if not conn.closed:
                conn.execute(f"SELECT pg_advisory_unlock{mode}(hashtext(%s), hashtext(%s))", (_NAMESPACE, key))


def _retry_note() -> str:
    """Whether Airflow retries the running task, for the message of :class:`JobBusyRetry`."""
    from dbops.core.errors import retries_left

    if retries_left() is False:
        return "no retry is left, run it again once the other run has finished"
    return "Airflow retries it once its retry delay has passed"


def holder(conn, key: str) -> str:
    """Who holds the lock of ``key``: backend pid and application name, never query text."""
    row = conn.execute(
        "SELECT a.pid, a.application_name, a.backend_start FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::int = hashtext(%s) "
        "AND l.objid::int = hashtext(%s) LIMIT 1", (_NAMESPACE, key)).fetchone()
    if row is None:
        return "holder gone"
    pid, application, started = row
    return f"ops-database backend pid {pid}, application {application or '-'}, connected since {started:%H:%M:%S}"
