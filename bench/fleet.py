"""DAG parsing at fleet scale: N targets, half PostgreSQL (copies of the appdb block), half MongoDB (chatdb).

Each generated target has its own Airflow connection (``AIRFLOW_CONN_*``, set here for every process) pointing
at the local stack's databases (appdb, chatdb). Per target count, interleaved with the 1-target config:

- ``parse_all_seconds``: one parse loop over every DAG file as the dag-processor does it: the Airflow modules a
  file imports are imported in the parent, then a forked child parses the file (``BundleDagBag``) and serializes
  its DAGs; wall time from fork to the child's exit, summed over the files (median of --repeat loops);
- ``parse_slowest_seconds``: the slowest file of that loop;
- ``task_start_seconds``: a task process forked as the supervisor forks it (Airflow already imported) doing what
  the task runner does before ``execute()``: parse the task's DAG file under the parsing context (dag_id,
  task_id) the runner sets, find the task; from the fork until the task is in hand (the runner's API
  round-trips do not depend on N);
- ``task_start_cpu_seconds``: that process's CPU time (user + system): what every task, e.g. each of a target's
  two alert tasks every five minutes, costs before its work begins (the supervisor's own cost not included).

Baselines: the issue's aim for ``parse_all_seconds`` (15 s at 500 targets, scaled linearly); for the others the
same figure with 1 target.

    python bench/fleet.py [--targets 100 500] [--repeat 3] [--task db_alerts.py:db_alerts__{target}:evaluate]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from scripts.bench_output import emit, json_stdout, progress_printer  # noqa: E402
from scripts.stack.airflow import airflow_env  # noqa: E402
from scripts.stack.mongo import DEMO_DATABASE, mongo_conn  # noqa: E402
from scripts.stack.postgres import REPLICATION_ROLE, conn_uri  # noqa: E402

DAGS = ROOT / "dags"
BASE_CONFIG = ROOT / "include" / "config" / "dbops.yaml"
PG_TEMPLATE, MONGO_TEMPLATE = "appdb", "chatdb"

progress = progress_printer("fleet")


def target_names(count: int) -> list[tuple[str, str]]:
    """(name, template) for ``count`` targets: the first half PostgreSQL, the rest MongoDB."""
    pg = count - count // 2 if count > 1 else 1
    return ([(f"pg_{i:04d}", PG_TEMPLATE) for i in range(pg)]
            + [(f"mongo_{i:04d}", MONGO_TEMPLATE) for i in range(count - pg)])


def fleet_config(count: int) -> tuple[str, dict[str, str]]:
    """The YAML of a ``count``-target config and the ``AIRFLOW_CONN_*`` variables its targets need."""
    base = yaml.safe_load(BASE_CONFIG.read_text())
    templates = base.pop("targets")
    base["targets"], conns = {}, {}
    for name, template in target_names(count):
        target = copy.deepcopy(templates[template])
        target["conn_id"] = f"{template[:2] if template == PG_TEMPLATE else 'mongo'}_{name}"
        if template == PG_TEMPLATE:
            conns[target["conn_id"]] = conn_uri(PG_TEMPLATE)
            if "pitr" in target:
                target["pitr"]["replication_conn_id"] = f"{target['conn_id']}_replication"
                conns[target["pitr"]["replication_conn_id"]] = conn_uri(PG_TEMPLATE, REPLICATION_ROLE)
        else:
            conns[target["conn_id"]] = mongo_conn(DEMO_DATABASE)
        base["targets"][name] = target
    env = {f"AIRFLOW_CONN_{conn_id.upper()}": uri for conn_id, uri in conns.items()}
    return yaml.safe_dump(base, sort_keys=False), env


def parse_loop(dag_files: list[Path]) -> dict[str, float]:
    """Seconds per file, each parsed and serialized in a forked child as the dag-processor does."""
    import structlog

    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.dag_processing.processor import _pre_import_airflow_modules, _serialize_dags

    log = structlog.get_logger("bench.fleet")
    seconds = {}
    for dag_file in dag_files:
        _pre_import_airflow_modules(str(dag_file), log)
        started = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                bag = BundleDagBag(dag_folder=str(dag_file), bundle_path=DAGS, bundle_name="dags-folder",
                                   load_op_links=False)
                _, errors = _serialize_dags(bag, log)
                code = 2 if bag.import_errors or errors else 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        seconds[dag_file.name] = time.perf_counter() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{dag_file} failed to import or serialize during the benchmark")
    return seconds


def task_start(dag_file: str, dag_id: str, task_id: str) -> tuple[float, float, int]:
    """Seconds from forking a task process (as the supervisor does, from a process with Airflow imported) until it
    holds the task, the child's CPU seconds, and the DAGs it built."""
    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.sdk.definitions._internal.dag_parsing_context import _airflow_parsing_context_manager
    from airflow.sdk.execution_time import task_runner  # noqa: F401  (imported by the supervisor's process)

    read_fd, write_fd = os.pipe()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with _airflow_parsing_context_manager(dag_id=dag_id, task_id=task_id):
                bag = BundleDagBag(dag_folder=str(DAGS / dag_file), safe_mode=False, load_op_links=False,
                                   bundle_path=DAGS, bundle_name="dags-folder")
            bag.dags[dag_id].task_dict[task_id]
            os.write(write_fd, json.dumps([time.perf_counter() - started, len(bag.dags)]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        answer = pipe.read()
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{dag_id}.{task_id} could not be loaded from {dag_file} during the benchmark")
    seconds, dags = json.loads(answer)
    return seconds, usage.ru_utime + usage.ru_stime, dags


def measure(count: int, task: str, repeat: int, tmp: Path) -> dict[str, float]:
    """Medians of ``repeat`` rounds at ``count`` targets, each round interleaved with the 1-target config."""
    dag_files = sorted(DAGS.glob("*.py"))
    rounds: dict[str, list[float]] = {key + suffix: [] for key in ("slowest", "start", "cpu") for suffix in ("", "_1")}
    rounds["all"] = []
    configs = {}
    for n in (count, 1):
        text, conns = fleet_config(n)
        path = tmp / f"dbops_{n}.yaml"
        path.write_text(text)
        configs[n] = (path, conns)
    dag_file, dag_id, task_id = task.format(target=target_names(1)[0][0]).split(":")
    for _ in range(repeat):
        for n in (count, 1):
            path, conns = configs[n]
            os.environ.update({"DBOPS_CONFIG": str(path), **conns})
            suffix = "" if n == count else "_1"
            files = parse_loop(dag_files)
            slowest = max(files, key=files.get)
            if n == count:
                rounds["all"].append(sum(files.values()))
            rounds["slowest" + suffix].append(files[slowest])
            progress(f"{n} targets: parse loop {sum(files.values()):.2f} s, slowest {slowest} {files[slowest]:.2f} s")
            seconds, cpu, built = task_start(dag_file, dag_id, task_id)
            rounds["start" + suffix].append(seconds)
            rounds["cpu" + suffix].append(cpu)
            progress(f"{n} targets: task start of {dag_id}.{task_id} {seconds:.2f} s, {cpu:.2f} s CPU "
                     f"({built} DAGs built)")
    return {key: statistics.median(values) for key, values in rounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=0, help="accepted like every bench; unused")
    parser.add_argument("--targets", type=int, nargs="+", default=[100, 500])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--task", default="db_alerts.py:db_alerts__{target}:evaluate",
                        help="file:dag_id:task_id of the task whose start is timed ({target}: the first target)")
    args = parser.parse_args()
    out = json_stdout()
    for key, value in airflow_env().items():
        os.environ.setdefault(key, value)
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    progress(f"load average at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.targets:
            figures = measure(count, args.task, args.repeat, Path(tmp))
            fleet = {"targets": count}
            emit(out, "fleet", args.size_mb, "parse_all_seconds", figures["all"], "s",
                 "aim: 15 s at 500 targets, linear", 15 * count / 500, extra=fleet)
            emit(out, "fleet", args.size_mb, "parse_slowest_seconds", figures["slowest"], "s",
                 "the slowest file with 1 target", figures["slowest_1"], extra=fleet)
            emit(out, "fleet", args.size_mb, "task_start_seconds", figures["start"], "s",
                 "the same task with 1 target", figures["start_1"], extra=fleet)
            emit(out, "fleet", args.size_mb, "task_start_cpu_seconds", figures["cpu"], "s",
                 "the same task with 1 target", figures["cpu_1"], extra=fleet)
    progress(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
