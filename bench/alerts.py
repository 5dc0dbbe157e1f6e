"""Alert evaluation of the default pack on the demo target, against the same queries run bare by psql.

Per round, interleaved and in alternating order:

- ours: connect to ``appdb`` and :func:`dbops.alerting.evaluate.evaluate` every target rule of
  ``appdb``'s packs (each query once, in its own READ ONLY transaction with timeouts);
- baseline: ``psql -X -q -f`` of a script holding the same queries, one after another, in one
  invocation (connection included, as ours).

``evaluation_db_seconds`` is ours' time spent waiting on the queries (aim: under 1 s per target).
``dag_run_seconds`` is one ``airflow dags test db_alerts__appdb`` end to end (process start, both tasks),
without a baseline. Medians over rounds; one JSON object per metric on stdout, progress on stderr.

    python bench/alerts.py [--size-mb N (the demo data as loaded)] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from scripts.bench_output import emit, json_stdout, progress_printer  # noqa: E402
from scripts.stack.airflow import airflow, airflow_env  # noqa: E402
from scripts.stack.bootstrap import up  # noqa: E402
from scripts.stack.paths import AIRFLOW_HOME  # noqa: E402
from scripts.stack.postgres import libpq_env, stop_postgres  # noqa: E402

TARGET = "appdb"
DB_SECONDS_AIM = 1.0


progress = progress_printer("alerts")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=int(os.environ.get("DBOPS_DEMO_SIZE_MB", "50")))
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    out = json_stdout()
    for key, value in airflow_env().items():
        os.environ.setdefault(key, value)
    started_pg = up()
    try:
        figures = measure(args.rounds)
    finally:
        if started_pg:
            stop_postgres()
    n = args.size_mb
    emit(out, "alerts", n, "evaluation_seconds", figures["ours"], "s", "the same queries in one psql invocation",
         figures["psql"])
    emit(out, "alerts", n, "evaluation_db_seconds", figures["db"], "s", "aim", DB_SECONDS_AIM)
    emit(out, "alerts", n, "dag_run_seconds", figures["dag"], "s")


def measure(rounds: int) -> dict[str, float]:
    from dbops.alerting.evaluate import evaluate
    from dbops.alerting.rules import rules_for
    from dbops.core.config import load_config
    from dbops.hooks.postgres import DbopsPostgresHook
    from dbops.hooks.tools import find_tool

    config = load_config()
    rules = [r for r in rules_for(config, TARGET) if r.database == "target"]
    hook = DbopsPostgresHook(postgres_conn_id=config.targets[TARGET].conn_id)
    psql = find_tool("psql", hook.server_version_num()).path
    with closing(hook.get_conn()) as conn:  # warm-up; rules whose extension is missing are skipped on both sides
        skipped = evaluate(conn, rules).skipped
    queries = {r.query: r.sql().strip().rstrip(";") for r in rules if r.name not in skipped}
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("".join(f"{text};\n" for text in queries.values()))
    progress(f"{len(rules)} target rules ({len(skipped)} skipped), {len(queries)} queries; {rounds} rounds")

    def ours() -> float:
        with closing(hook.get_conn()) as conn:
            result = evaluate(conn, rules)
        if result.errors:
            raise SystemExit(f"evaluation errors: {result.errors}")
        return result.db_seconds

    def bare() -> None:
        subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-o", os.devnull, "-f", script.name],
                       env={**os.environ, **libpq_env(TARGET)}, check=True)

    times: dict[str, list[float]] = {"ours": [], "psql": [], "db": []}
    try:
        for index in range(rounds):
            for side in (("ours", "psql") if index % 2 == 0 else ("psql", "ours")):
                started = time.perf_counter()
                db_seconds = ours() if side == "ours" else bare()
                times[side].append(time.perf_counter() - started)
                if side == "ours":
                    times["db"].append(db_seconds)
    finally:
        os.unlink(script.name)
    started = time.perf_counter()
    with open(AIRFLOW_HOME / "logs" / "bench-db_alerts.log", "wb") as log:
        airflow("dags", "test", f"db_alerts__{TARGET}", stdout=log, stderr=subprocess.STDOUT, check=True)
    figures = {side: statistics.median(values) for side, values in times.items()}
    figures["dag"] = time.perf_counter() - started
    progress("medians: " + ", ".join(f"{k}={v:.4f}" for k, v in figures.items()))
    return figures


if __name__ == "__main__":
    main()
