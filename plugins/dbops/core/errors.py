"""Sort failures into transient (retry with backoff) and permanent (fail now, say what to fix)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg

# SQLSTATEs worth a retry: connection trouble, serialization/deadlock, lock timeout, shutdown, overload.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300", "53400"}
_TRANSIENT_BOTOCORE_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                              "ConnectionClosedError"}
# MongoDB: AuthenticationFailed, Unauthorized; and interrupted, not primary, shutting down, snapshot too old.
_PERMANENT_MONGO_CODES = {13, 18}
_TRANSIENT_MONGO_CODES = {11600, 11602, 10107, 13435, 189, 91, 239, 246, 262}
_PERMANENT_CONNECT_MESSAGES = ("authentication failed", "does not exist", "no pg_hba.conf entry", "permission denied")


def is_transient(error: BaseException) -> bool:
    """True when the same call may succeed later without anyone changing anything."""
    if isinstance(error, psycopg.Error):
        sqlstate = error.sqlstate or ""
        if sqlstate.startswith("08") or sqlstate in _TRANSIENT_SQLSTATES:
            return True
        if isinstance(error, psycopg.OperationalError) and not sqlstate:
            message = str(error).lower()
            return not any(text in message for text in _PERMANENT_CONNECT_MESSAGES)
        return False
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    if type(error).__module__.startswith("pymongo."):
        return _pymongo_transient(error)
    if type(error).__name__ in _TRANSIENT_BOTOCORE_ERRORS:
        return True
    response = getattr(error, "response", None)
    if isinstance(response, dict):  # botocore ClientError: retry throttling and server errors
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code >= 500 or code == 429
    return False


def _pymongo_transient(error: BaseException) -> bool:
    """Network trouble, no primary, and errors the server labels transient; never authentication."""
    from pymongo.errors import ConnectionFailure, OperationFailure

    if isinstance(error, OperationFailure) and error.code in _PERMANENT_MONGO_CODES:
        return False
    labelled = any(error.has_error_label(label) for label in ("TransientTransactionError", "RetryableWriteError"))
    return isinstance(error, ConnectionFailure) or labelled or getattr(error, "code", None) in _TRANSIENT_MONGO_CODES


def retries_left(context: Mapping[str, Any] | None = None) -> bool | None:
    """Whether Airflow runs the task again if this try fails (as its API server decides: the try number
    is at most ``max_tries``). ``context`` defaults to the running task's; None when there is no task."""
    if context is None:
        from airflow.sdk import get_current_context

        try:
            context = get_current_context()
        except RuntimeError:  # not inside a running task
            return None
    ti = context.get("ti")
    try_number, max_tries = getattr(ti, "try_number", None), getattr(ti, "max_tries", None)
    if try_number is None or max_tries is None:
        return None
    return max_tries != 0 and try_number <= max_tries


_RETRY_NOTES = {True: "transient; will retry", False: "transient, but no retry is left", None: "transient"}


def classify(error: BaseException, what: str, fix: str = "") -> Exception:
    """An Airflow exception for ``error``: retried if transient, failed at once (with ``fix``) otherwise.

    A transient error's message says whether the running task will be retried (see :func:`retries_left`).
    """
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    message = f"{what}: {' '.join(str(error).split()) or type(error).__name__}"
    if is_transient(error) or getattr(error, "transient", False):
        return AirflowException(f"{message} ({_RETRY_NOTES[retries_left()]})")
    return AirflowFailException(f"{message}. {fix}".strip() if fix else message)


def dump_permission_fix(message: str) -> str:
    """What to grant when pg_dump's ``message`` is a permission error ('' when it is none).

    ``pg_read_all_data`` covers tables, views, sequences and schemas, not large objects.
    """
    if "permission denied for large object" in message:
        return ("Large objects need their own grant (pg_read_all_data does not cover them): run "
                "GRANT SELECT ON LARGE OBJECT <oid> TO <backup role> for each (the error names one), set "
                "lo_compat_privileges = on, or back up as the role that owns them.")
    if "permission denied" in message:
        return "Grant the backup role read access to every table (e.g. pg_read_all_data)."
    return ""
