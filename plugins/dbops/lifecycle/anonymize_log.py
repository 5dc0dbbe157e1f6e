"""The anonymization trail in the ops database: ``dbops.anonymized_users`` (one row per anonymized user)
and ``dbops.anonymization_events`` (one row per request or policy anonymization). No personal data: the
user key is the target's own pseudonymous id, kept so that anonymizations can be applied again after a
restore of an older backup.

Every function takes a connection from :meth:`OpsDatabaseHook.transaction`; a write commits with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg


def record_anonymized(conn: psycopg.Connection, target: str, user_keys: Sequence[str], anonymized_at: datetime,
                      run_id: str, source: str, reason: str) -> None:
    """Record users as anonymized; a user recorded earlier keeps its first record."""
    conn.execute(
        "INSERT INTO dbops.anonymized_users (target, user_key, anonymized_at, run_id, source, reason) "
        "SELECT %s, k, %s, %s, %s, %s FROM unnest(%s::text[]) k ON CONFLICT (target, user_key) DO NOTHING",
        (target, anonymized_at, run_id, source, reason, list(user_keys)))


def anonymized_at(conn: psycopg.Connection, target: str, user_key: str) -> datetime | None:
    """When the user was first recorded as anonymized; None when it is not recorded."""
    row = conn.execute("SELECT anonymized_at FROM dbops.anonymized_users WHERE target = %s AND user_key = %s",
                       (target, user_key)).fetchone()
    return row[0] if row else None


def record_event(conn: psycopg.Connection, target: str, run_id: str, source: str, outcome: str, reason: str,
                 user_keys: Sequence[str], rows: dict[str, int], backups: list[dict[str, Any]]) -> None:
    """One audit event: who was anonymized (keys only), rows per table, backups still holding the data."""
    conn.execute(
        "INSERT INTO dbops.anonymization_events (target, run_id, source, outcome, reason, user_keys, rows, backups) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (target, run_id, source, outcome, reason, list(user_keys), json.dumps(rows), json.dumps(backups)))
