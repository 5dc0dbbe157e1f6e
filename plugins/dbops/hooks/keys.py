"""Encryption keys, kept as the password of an Airflow connection."""

from __future__ import annotations

import base64

from airflow.sdk.exceptions import AirflowFailException


def encryption_key(conn_id: str | None) -> bytes | None:
    """The AES-256 key: the password of Airflow connection ``conn_id``, base64 of 32 bytes."""
    if not conn_id:
        return None
    from airflow.sdk import BaseHook

    secret = BaseHook.get_connection(conn_id).password or ""
    try:
        key = base64.b64decode(secret, validate=True)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise AirflowFailException(f"connection {conn_id!r}: the password must be a base64-encoded 32-byte key "
                                   "(e.g. `openssl rand -base64 32`)")
    return key
