"""Sort failures into transient (retry with backoff) and permanent (fail now, say what to fix)."""

from __future__ import annotations

import psycopg

# SQLSTATEs worth a retry: connection trouble, serialization/deadlock, lock timeout, shutdown, overload.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300", "53400"}
_TRANSIENT_BOTOCORE_ERRORS = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}
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
    if type(error).__name__ in _TRANSIENT_BOTOCORE_ERRORS:
        return True
    response = getattr(error, "response", None)
    if isinstance(response, dict):  # botocore ClientError: retry throttling and server errors
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return code >= 500 or code == 429
    return False


def classify(error: BaseException, what: str, fix: str = "") -> Exception:
    """An Airflow exception for ``error``: retried if transient, failed at once (with ``fix``) otherwise."""
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    message = f"{what}: {' '.join(str(error).split()) or type(error).__name__}"
    if is_transient(error) or getattr(error, "transient", False):
        return AirflowException(f"{message} (transient; will retry)")
    return AirflowFailException(f"{message}. {fix}".strip() if fix else message)
