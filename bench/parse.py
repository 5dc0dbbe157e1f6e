"""DAG-file parse time with 1 and with 100 configured targets, as the dag-processor sees it.

The dag-processor forks a child per file with Airflow already imported; the child imports the file.
So: import Airflow here once, then per file and per config fork, time DagBag's processing of that one
file in the child, and report the slowest file (median of --repeat runs). There is no tool to compare
with, so the baseline is the issue's aim (0.5 s for 1 target, 2 s for 100) and the ratio is against it.

    python bench/parse.py [--size-mb N (ignored)] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

from airflow.dag_processing.dagbag import DagBag  # noqa: E402  (imported once, as in the dag-processor)

AIMS = {1: 0.5, 100: 2.0}


def config_with_targets(count: int) -> str:
    base = (ROOT / "include" / "config" / "dbops.yaml").read_text()
    head, _, appdb = base.partition("targets:\n")
    body = appdb.replace("  appdb:\n", "  {name}:\n").replace("conn_id: pg_appdb", "conn_id: pg_{name}")
    return head + "targets:\n" + "".join(body.replace("{name}", f"target_{i:03d}") for i in range(count))


def parse_once_in_child(dag_file: Path) -> float:
    """Fork, import the file in the child, return the child's measured seconds."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # Airflow's log lines must not mix with the JSON
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(dag_file))
        elapsed = time.perf_counter() - started
        os.write(write_fd, json.dumps({"seconds": elapsed, "errors": len(bag.import_errors)}).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        result = json.loads(fh.read())
    os.waitpid(pid, 0)
    if result["errors"]:
        raise SystemExit(f"{dag_file} failed to import during the benchmark")
    return result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=None, help="accepted for uniformity; unused")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    dag_files = sorted((ROOT / "dags").glob("*.py"))
    with tempfile.TemporaryDirectory() as tmp:
        for targets, aim in AIMS.items():
            config = Path(tmp) / f"dbops_{targets}.yaml"
            config.write_text(config_with_targets(targets))
            os.environ["DBOPS_CONFIG"] = str(config)
            slowest = max(statistics.median(parse_once_in_child(f) for _ in range(args.repeat)) for f in dag_files)
            metric = f"parse_seconds_{targets}_target" + ("s" if targets > 1 else "")
            print(json.dumps({"bench": "parse", "metric": metric, "value": round(slowest, 4), "unit": "s",
                              "baseline": "aim: parse time budget", "baseline_value": aim,
                              "ratio": round(slowest / aim, 3)}), flush=True)


if __name__ == "__main__":
    main()
