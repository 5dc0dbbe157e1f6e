"""Backup and verification restore against plain pg_dump / pg_restore, on the same data, interleaved.

A database ``bench_backup_<N>`` on the local server is filled once by scripts/demo_data.py (reused
while its comment says it is complete at that size; ``appdb`` is never touched). Then, per round:

- ours: ``dump_database`` (snapshot, row counts, ``pg_dump -Fc -Z0`` piped into zstd at the policy's default level + sha256)
  into a staging directory, ``LocalStore.put_file`` into a store directory, and the read-back check
  (size + sha256) the backup operator does;
- ``pg_dump -Fc -f file`` (its default gzip compression, the seeds' way): time and bytes;
- ``pg_dump -Fc -Z0 > /dev/null``: what extracting the data costs at the least;
- ours verify: what the verify task does, :func:`dbops.backup.verify.restore_and_check` in a throwaway
  cluster on the worker (:mod:`dbops.backup.throwaway`): initdb and start, fetch from the store (size,
  sha256, decompress), roles, extensions and locales checked, ``pg_restore --jobs=2``, row counts,
  constraints and ``pg_amcheck``; the cluster stopped and deleted;
- ``pg_restore --jobs=2 -d db file`` of the ``pg_dump -Fc`` file into a fresh database of the ordinary local
  server.

The dumps run in a rotating order and the two restores alternate, so a noisy machine hits all
sides alike. Medians over rounds; one JSON object per metric on stdout, progress on stderr.

    python bench/backup.py [--size-mb 50] [--rounds 3]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from scripts.bench_output import bench_postgres, emit, json_stdout, medians, round_args, progress_printer  # noqa: E402
from scripts.stack.paths import VAR  # noqa: E402
from scripts.stack.postgres import admin_connection, conn_uri, libpq_conninfo, libpq_env  # noqa: E402

CONN_ID = "bench_backup"
from dbops.backup.policy import BackupPolicy  # noqa: E402

LEVEL = BackupPolicy(storage="bench").compression_level  # the policy's defaults
RESTORE_JOBS = BackupPolicy(storage="bench").jobs


progress = progress_printer("backup")


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


def prepare_database(size_mb: int) -> str:
    """``bench_backup_<N>`` filled by demo_data.py; reused when its comment marks it complete."""
    import psycopg
    from psycopg import sql

    name = f"bench_backup_{size_mb}"
    marker = f"dbops bench data: demo_data.py --size-mb {size_mb}, complete"
    with admin_connection() as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (name,)).fetchone()
        if row is not None and row[0] == marker:
            progress(f"reusing database {name}")
            return name
        progress(f"creating database {name} and loading about {size_mb} MB of demo data")
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_data.py"), "--size-mb", str(size_mb)],
                   check=True, stdout=sys.stderr, env={**os.environ, **libpq_env(name)})
    with psycopg.connect(libpq_conninfo(name), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(marker)))
    return name


def run_tool(argv: list[str], env: dict[str, str], stdout=subprocess.DEVNULL) -> None:
    result = subprocess.run(argv, env=env, stdout=stdout, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{Path(argv[0]).name} exited with {result.returncode}: {result.stderr.strip()[-2000:]}")


class Round:
    """One round's work; every method returns seconds (and records what the later steps need)."""

    def __init__(self, index: int, database: str, work: Path, tools: dict, hook, admin):
        self.index, self.database, self.work, self.tools, self.hook, self.admin = (
            index, database, work, tools, hook, admin)
        self.figures: dict[str, float] = {}
        self.scratch_plain = f"bench_backup_scratch_{os.getpid()}_plain"

    # -- dumps -------------------------------------------------------------------------------------
    def ours_dump(self) -> None:
        from dbops.backup.dump import dump_database
        from dbops.hooks.store import LocalStore
        from dbops.backup.store_io import verify_stored
        from dbops.operators.backup import DUMP_FILE

        staging, self.store_root = self.work / "staging", self.work / "store"
        staging.mkdir()
        self.store = LocalStore(self.store_root)
        self.prefix = f"bench/full/round{self.index}"
        key = f"{self.prefix}/{DUMP_FILE}"
        started = time.perf_counter()
        dump = dump_database(self.hook, self.tools["pg_dump"], staging / DUMP_FILE, LEVEL)
        t_dump = time.perf_counter() - started
        t_put, _ = timed(self.store.put_file, dump.path, key)
        t_check, _ = timed(verify_stored, self.store, key, dump.bytes, dump.sha256)
        total = time.perf_counter() - started
        dump.path.unlink()  # the operator removes staging after the manifest
        self.dump = dump
        self.figures.update(ours_dump=total, ours_dump_stage=t_dump, ours_put=t_put, ours_readback=t_check,
                            ours_bytes=dump.bytes, raw_bytes=dump.raw_bytes)
        progress(f"round {self.index}: ours dump+store {total:.2f} s (dump {t_dump:.2f}, put {t_put:.2f}, "
                 f"read-back {t_check:.2f}); {dump.bytes} bytes stored, {dump.raw_bytes} raw, "
                 f"{sum(dump.tables.values())} rows in {len(dump.tables)} tables")

    def plain_dump(self) -> None:
        self.plain_file = self.work / "plain.pgc"
        with self.hook.cli_environment() as env:
            seconds, _ = timed(run_tool, [self.tools["pg_dump"].path, "--format=custom", "--no-password",
                                          f"--file={self.plain_file}"], env)
        self.figures.update(plain_dump=seconds, plain_bytes=self.plain_file.stat().st_size)
        progress(f"round {self.index}: pg_dump -Fc {seconds:.2f} s, {self.figures['plain_bytes']} bytes")

    def limit_dump(self) -> None:
        with self.hook.cli_environment() as env, open(os.devnull, "wb") as devnull:
            seconds, _ = timed(run_tool, [self.tools["pg_dump"].path, "--format=custom", "--compress=0",
                                          "--no-password"], env, stdout=devnull)
        self.figures["limit_dump"] = seconds
        progress(f"round {self.index}: pg_dump -Fc -Z0 > /dev/null {seconds:.2f} s")

    # -- restores ----------------------------------------------------------------------------------
    def ours_verify(self) -> None:
        from dbops.backup.restore import create_database
        from dbops.backup.throwaway import throwaway_cluster
        from dbops.backup.verify import restore_and_check
        from dbops.core.config import DbopsConfig
        from dbops.core.manifest import FileEntry, Manifest
        from dbops.operators.backup import DUMP_FILE

        dump = self.dump
        manifest = Manifest(
            backup_id=self.prefix, target="bench", kind="full", logical_date="", run_id="bench",
            location=self.store.describe(), server_version=dump.server_version, tool=dump.tool,
            snapshot_id=dump.snapshot_id, files=[FileEntry(DUMP_FILE, dump.bytes, dump.sha256, dump.raw_bytes)],
            tables=dump.tables, constraints=dump.constraints, timings={}, compression={})
        config = DbopsConfig(ops_conn_id=CONN_ID, storage={}, targets={}, staging_dir=str(self.work / "verify"))
        policy = BackupPolicy(storage="bench")
        started = time.perf_counter()
        with throwaway_cluster(config, "bench", f"round{self.index}", dump.server_version, policy.jobs,
                               3600) as cluster:
            t_cluster = time.perf_counter() - started
            create_database(cluster, "bench_verify")
            outcome = restore_and_check(config, policy, self.store, manifest, cluster, "bench_verify",
                                        run_amcheck=True, owners=True, create_roles=True, timeout=3600,
                                        server="the throwaway cluster")
        total = time.perf_counter() - started
        if not outcome["ok"]:
            raise SystemExit(f"verification of our backup failed: {outcome['error']}")
        self.figures.update(ours_verify=total, ours_cluster=t_cluster, ours_restore=outcome["restore_seconds"])
        progress(f"round {self.index}: ours verify {total:.2f} s (throwaway cluster up {t_cluster:.2f}, "
                 f"pg_restore -j{policy.jobs} {outcome['restore_seconds']:.2f}, fetch, checks and amcheck the rest)")

    def plain_verify(self) -> None:
        from dbops.backup.restore import create_database

        create_database(self.admin, self.scratch_plain, replace=True)
        with self.admin.cli_environment(self.scratch_plain) as env:
            seconds, _ = timed(run_tool, [self.tools["pg_restore"].path, "--no-password", f"--jobs={RESTORE_JOBS}",
                                          f"--dbname={self.scratch_plain}", str(self.plain_file)], env)
        self.figures["plain_verify"] = seconds
        progress(f"round {self.index}: pg_restore --jobs={RESTORE_JOBS} {seconds:.2f} s")

    def cleanup(self) -> None:
        from dbops.backup.restore import drop_database

        drop_database(self.admin, self.scratch_plain)
        shutil.rmtree(self.work, ignore_errors=True)

    def run(self) -> dict[str, float]:
        dumps = [self.ours_dump, self.plain_dump, self.limit_dump]
        shift = self.index % len(dumps)
        try:
            for step in dumps[shift:] + dumps[:shift]:
                step()
            verifies = [self.ours_verify, self.plain_verify]
            for step in verifies if self.index % 2 == 0 else verifies[::-1]:
                step()
        finally:
            self.cleanup()
        return self.figures


def main() -> None:
    args = round_args(__doc__, rounds=3)

    # stdout carries the JSON lines only: everything else writing to fd 1 (Airflow's logging, tools) goes
    # to stderr.
    out = json_stdout()
    with bench_postgres():
        database = prepare_database(args.size_mb)
        os.environ[f"AIRFLOW_CONN_{CONN_ID.upper()}"] = conn_uri(database)

        from dbops.hooks.postgres import DbopsPostgresHook
        from dbops.hooks.tools import find_tool

        hook = DbopsPostgresHook(postgres_conn_id=CONN_ID)
        admin = DbopsPostgresHook(postgres_conn_id=CONN_ID, database="postgres")
        version = hook.server_version_num()
        tools = {name: find_tool(name, version) for name in ("pg_dump", "pg_restore")}
        progress(f"{database}: {hook.get_first('SELECT pg_database_size(current_database())')[0] / 2**20:.0f} MiB, "
                 f"tools {tools['pg_dump'].path} {tools['pg_dump'].version}; {args.rounds} rounds")
        rounds = []
        for index in range(args.rounds):
            work = Path(tempfile.mkdtemp(prefix="bench-backup-", dir=VAR))
            work.chmod(0o755)  # the throwaway cluster's server runs as another system user when this is root
            rounds.append(Round(index, database, work, tools, hook, admin).run())

    med = medians(rounds, progress)
    n = args.size_mb
    emit(out, "backup", n, "dump_seconds", med["ours_dump"], "s", "pg_dump -Fc", med["plain_dump"])
    emit(out, "backup", n, "dump_limit_seconds", med["ours_dump"], "s", "pg_dump -Fc -Z0 > /dev/null", med["limit_dump"])
    emit(out, "backup", n, "dump_bytes", med["ours_bytes"], "bytes", "pg_dump -Fc", med["plain_bytes"])
    emit(out, "backup", n, "verify_seconds", med["ours_verify"], "s", f"pg_restore --jobs={RESTORE_JOBS}",
         med["plain_verify"])


if __name__ == "__main__":
    main()
