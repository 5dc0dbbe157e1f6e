"""The local stack: embedded PostgreSQL 18, the three databases, a MongoDB-compatible server, and Airflow on top.

Usage (the Makefile calls these; see README):
    python scripts/devstack.py run      # set up, then serve Airflow until Ctrl-C
    python scripts/devstack.py demo     # set up, then run every DAG once
    python scripts/devstack.py test     # set up, then run pytest (extra args go to pytest)
    python scripts/devstack.py bench    # set up, then every bench/ script
    python scripts/devstack.py up|down|env
    python scripts/devstack.py pools    # regenerate include/config/pools.json after changing targets

Everything lives under var/: the PostgreSQL data directory, AIRFLOW_HOME, the backup store and
the generated secrets. A second start reuses all of it. The work is done by the package scripts/stack/.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from scripts.stack.airflow import airflow_env, serve, write_pools  # noqa: E402
from scripts.stack.bootstrap import stack, up, up_test_databases  # noqa: E402
from scripts.stack.demo import run_demo  # noqa: E402
from scripts.stack.paths import AIRFLOW_PORT, MONGO_PORT, PG_PORT, require_free_port  # noqa: E402
from scripts.stack.mongo import stop_mongo  # noqa: E402
from scripts.stack.postgres import stop_postgres  # noqa: E402


def run() -> int:
    """Serve Airflow until Ctrl-C, then stop every process this started, the database servers included."""
    require_free_port(AIRFLOW_PORT, "the Airflow UI", "DBOPS_AIRFLOW_PORT")
    with stack():
        return serve()


def demo() -> int:
    with stack():
        return run_demo()


def test(pytest_args: list[str]) -> int:
    with stack():
        up_test_databases()
        env = {**os.environ, **airflow_env(test=True), "DBOPS_PG_PORT": str(PG_PORT),
               "DBOPS_MONGO_PORT": str(MONGO_PORT)}
        return subprocess.run([sys.executable, "-m", "pytest", *pytest_args], cwd=ROOT, env=env).returncode


def bench(args: list[str]) -> int:
    with stack():
        env = {**os.environ, **airflow_env()}
        rc = 0
        for script in sorted((ROOT / "bench").glob("*.py")):
            rc |= subprocess.run([sys.executable, str(script), *args], cwd=ROOT, env=env).returncode
        return rc


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("up", [])
    if command == "up":
        up()
        return 0
    if command == "down":
        stop_mongo()
        stop_postgres()
        return 0
    if command == "pools":  # after adding or removing a target in dbops.yaml
        write_pools()
        return 0
    if command == "env":
        for key, value in airflow_env().items():
            print(f"export {key}={shlex.quote(value)}")
        return 0
    handlers = {"run": run, "demo": demo, "test": lambda: test(rest), "bench": lambda: bench(rest)}
    if command not in handlers:
        print(__doc__, file=sys.stderr)
        return 2
    return handlers[command]()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
