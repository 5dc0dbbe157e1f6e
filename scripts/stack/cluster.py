"""A throwaway PostgreSQL 18 cluster of its own (embedded binaries) for tests and benchmarks that change
server-wide state (replication slots, WAL switches, base backups) and must not touch the shared server."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dbops.backup.pitr import server_user
from dbops.hooks.tools import embedded_bin_dir

PASSWORD_ROLES = ("postgres", "dbops_repl")  # superuser and a REPLICATION role, same password


@dataclass(frozen=True)
class Cluster:
    root: Path
    port: int
    password: str

    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user={user} password={self.password} dbname={database}"

    def uri(self, database: str, user: str = "postgres") -> str:
        return f"postgresql://{user}:{self.password}@127.0.0.1:{self.port}/{database}"


def _run(*args: str) -> None:
    user = server_user()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, **({"user": user} if user else {}))


@contextmanager
def cluster(root: Path, port: int, password: str, settings: str = "", wal_segsize_mb: int = 16,
            keep: bool = False) -> Iterator[Cluster]:
    """initdb (unless ``root/data`` exists) and start a cluster on 127.0.0.1:``port`` with ``summarize_wal`` and
    a REPLICATION role ``dbops_repl``; stopped at the end, and deleted unless ``keep``."""
    bin_dir = embedded_bin_dir()
    data = root / "data"
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        pwfile = root / "pw"
        pwfile.write_text(password)
        if server_user():
            shutil.chown(root, server_user(), server_user())
            shutil.chown(pwfile, server_user(), server_user())
        _run(str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={pwfile}",
             "--auth-host=scram-sha-256", "--auth-local=trust", f"--wal-segsize={wal_segsize_mb}", "--locale=C",
             "--encoding=UTF8")
        pwfile.unlink()
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                       f"summarize_wal = on\nfsync = off\nsynchronous_commit = off\n{settings}\n")
        created = True
    else:
        created = False
    _run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-o", f"-p {port}", "start")
    try:
        if created:
            import psycopg
            from psycopg import sql

            with psycopg.connect(Cluster(root, port, password).dsn(), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE ROLE dbops_repl LOGIN REPLICATION PASSWORD {}").format(
                    sql.Literal(password)))
        yield Cluster(root, port, password)
    finally:
        subprocess.run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], check=False,
                       stdout=subprocess.DEVNULL, **({"user": server_user()} if server_user() else {}))
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
