"""Generated secrets of the local stack, one file each under var/secrets/ (mode 0600)."""

from __future__ import annotations

import secrets

from scripts.stack.paths import SECRETS


def secret(name: str) -> str:
    """Return a generated secret, creating it (mode 0600) on first use."""
    path = SECRETS / name
    if not path.exists():
        SECRETS.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(18))
    return path.read_text().strip()


def pg_password() -> str:
    """The PostgreSQL superuser's password."""
    return secret("pg_password")


def mongo_password() -> str:
    """The password of the local MongoDB-compatible server's ``dbops`` user."""
    return secret("mongo_password")


def airflow_admin_password() -> str:
    """The password of the Airflow UI user."""
    return secret("airflow_admin_password")
