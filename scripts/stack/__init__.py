"""The local stack that `scripts/devstack.py` drives: embedded PostgreSQL 18, its databases and Airflow.

paths: where everything lives and which ports; credentials: generated secrets; postgres: the server,
databases, ops migrations and demo data; airflow: environment, CLI, pools and services; bootstrap:
bringing it all up; demo: every DAG once.
"""

from __future__ import annotations


def log(message: str) -> None:
    """One progress line of the local stack."""
    print(f"[devstack] {message}", flush=True)
