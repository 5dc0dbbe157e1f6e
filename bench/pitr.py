"""Point-in-time recovery against the plain tools, on the same data, interleaved.

A cluster of its own (``var/bench-pitr-<N>``, scripts/stack/cluster.py) holds one database filled by
scripts/demo_data.py (reused while its comment says it is complete at that size); the ops database is
the local stack's (WAL segments are recorded there under the target ``bench_pitr``, removed at the end).
A ``pg_dump -Fc`` of the database is made once, untimed. Then, per round:

- ours base backup: ``take_basebackup`` (pg_basebackup tar stream piped into zstd at the policy's default
  level + sha256 + backup_manifest), ``LocalStore.put_file`` and the read-back check (size + sha256);
- ``pg_basebackup -D dir -Ft -z -X fetch`` (its gzip), alone;
- heartbeat markers and WAL shipping (untimed), then ours recovery to the marker time: fetch and unpack
  (sha256), ``pg_verifybackup``, WAL fetched and checked, recovery on a scratch port until promoted: a
  usable database;
- ``pg_restore --jobs=2`` of the dump into a fresh database of the same cluster (the logical verification
  restore): a usable database.

Base backups and recoveries alternate their order per round. Medians; one JSON object per metric on
stdout, progress on stderr.

    python bench/pitr.py [--size-mb 50] [--rounds 2]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

from scripts.bench_output import bench_postgres, emit, json_stdout, medians, round_args  # noqa: E402
from scripts.stack.cluster import cluster  # noqa: E402
from scripts.stack.paths import VAR, port_taken  # noqa: E402

from dbops.backup.pitr_policy import PitrPolicy  # noqa: E402

TARGET = "bench_pitr"
DATABASE = "bench"
PASSWORD = "bench-pitr-Pw-41"
LEVEL = PitrPolicy(storage="bench").compression_level
RESTORE_JOBS = 2  # backup.jobs default: the logical verification restore


def progress(message: str) -> None:
    print(f"[bench pitr] {message}", file=sys.stderr, flush=True)


def free_port(start: int = 56100) -> int:
    return next(port for port in range(start, start + 200) if not port_taken(port))


def prepare(made, size_mb: int) -> None:
    """The bench database filled by demo_data.py; reused when its comment marks it complete."""
    import psycopg

    marker = f"dbops bench data: demo_data.py --size-mb {size_mb}, complete"
    with psycopg.connect(made.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                           (DATABASE,)).fetchone()
        if row is not None and row[0] == marker:
            progress("reusing the bench database")
            return
        conn.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    progress(f"loading about {size_mb} MB of demo data")
    env = {**os.environ, "PGHOST": "127.0.0.1", "PGPORT": str(made.port), "PGUSER": "postgres",
           "PGPASSWORD": made.password, "PGDATABASE": DATABASE}
    subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_data.py"), "--size-mb", str(size_mb)],
                   check=True, stdout=sys.stderr, env=env)
    with psycopg.connect(made.dsn(), autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        conn.execute(f"COMMENT ON DATABASE {DATABASE} IS '{marker}'")


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


class Round:
    def __init__(self, index: int, made, work: Path, hook, ops, tools: dict, dump: Path):
        self.index, self.made, self.work, self.hook, self.ops, self.tools, self.dump = (
            index, made, work, hook, ops, tools, dump)
        self.figures: dict[str, float] = {}

    def ours_backup(self) -> None:
        from dbops.backup.basebackup import ARCHIVE, take_basebackup
        from dbops.backup.store_io import verify_stored
        from dbops.backup.wal_ship import ensure_slot, slot_name
        from dbops.hooks.store import LocalStore

        staging = self.work / "staging"
        staging.mkdir()
        self.store = LocalStore(self.work / "store")
        self.backup_id = f"{TARGET}/basebackup/round{self.index}"
        ensure_slot(self.hook, slot_name(TARGET))  # as the operator does: shipping holds the backup's WAL
        started = time.perf_counter()
        with self.hook.cli_environment() as env:
            self.result = take_basebackup(self.tools["pg_basebackup"], env, staging / ARCHIVE, LEVEL)
        key = f"{self.backup_id}/{ARCHIVE}"
        self.store.put_file(self.result.path, key)
        verify_stored(self.store, key, self.result.bytes, self.result.sha256)
        total = time.perf_counter() - started
        self.result.path.unlink()
        self.figures.update(ours_backup=total, ours_bytes=self.result.bytes, raw_bytes=self.result.raw_bytes)
        progress(f"round {self.index}: ours base backup + store {total:.2f} s, {self.result.bytes} bytes "
                 f"({self.result.raw_bytes} raw)")

    def plain_backup(self) -> None:
        target = self.work / "plain"
        with self.hook.cli_environment() as env:
            seconds, done = timed(subprocess.run, [self.tools["pg_basebackup"].path, "-D", str(target), "-Ft", "-z",
                                                   "-X", "fetch", "--checkpoint=fast", "--no-password"], env=env,
                                  capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"pg_basebackup -Ft -z failed: {done.stderr}")
        size = sum(p.stat().st_size for p in target.iterdir())
        shutil.rmtree(target)
        self.figures.update(plain_backup=seconds, plain_bytes=size)
        progress(f"round {self.index}: pg_basebackup -Ft -z {seconds:.2f} s, {size} bytes")

    def ours_recovery(self) -> None:
        from dbops.backup import pitr_catalog
        from dbops.backup.basebackup import ARCHIVE
        from dbops.backup.heartbeat import write_markers
        from dbops.backup.pitr import ScratchServer, free_port as scratch_port, recover
        from dbops.backup.wal_ship import ship_wal
        from dbops.core.manifest import FileEntry, Manifest
        from dbops.hooks.tools import embedded_bin_dir

        import psycopg

        with psycopg.connect(self.made.dsn(DATABASE)) as conn:  # the superuser: the heartbeat table is created
            markers = write_markers(conn, f"bench-{self.index}")
        ship_wal(self.hook, self.tools["pg_receivewal"], self.ops, self.store, TARGET, self.work / "wal", LEVEL, 3600)
        manifest = Manifest(
            backup_id=self.backup_id, target=TARGET, kind="basebackup", logical_date="", run_id="bench",
            location="", server_version="", tool="", snapshot_id="", files=[FileEntry(
                ARCHIVE, self.result.bytes, self.result.sha256, self.result.raw_bytes)], tables={}, constraints=[],
            timings={}, compression={}, extra={"start_lsn": self.result.start_lsn, "timeline": self.result.timeline})
        backup = pitr_catalog.BaseBackup(self.backup_id, "basebackup", datetime.now(timezone.utc), True, manifest)
        from dbops.operators.pitr import needed_segments

        segments = needed_segments(self.ops, self.hook, TARGET, backup)
        server = ScratchServer(self.work / "scratch", embedded_bin_dir(), scratch_port(56300, 56400))
        server.root.mkdir()
        try:
            figures = recover(self.store, [backup], segments, server, markers.target_time, "postgres", DATABASE, 3600)
            with server.connect("postgres", DATABASE) as conn:
                found = conn.execute("SELECT count(*) FROM dbops_pitr_heartbeat WHERE id IN (%s, %s)",
                                     (markers.before, markers.after)).fetchone()[0]
        finally:
            server.stop()
        if found != 1:
            raise SystemExit(f"recovery did not stop between the markers ({found} of 2 found)")
        self.figures.update(ours_recovery=figures["total_seconds"], ours_fetch=figures["fetch_seconds"],
                            ours_verifybackup=figures["verify_seconds"], ours_promoted=figures["seconds_to_promoted"])
        progress(f"round {self.index}: ours recovery {figures['total_seconds']:.2f} s (fetch+unpack "
                 f"{figures['fetch_seconds']:.2f}, pg_verifybackup {figures['verify_seconds']:.2f}, recovery to "
                 f"promoted {figures['seconds_to_promoted']:.2f}, WAL replayed {figures['wal_replayed_bytes']} bytes)")

    def plain_restore(self) -> None:
        import psycopg

        name = f"bench_restored_{self.index}"
        with psycopg.connect(self.made.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
        started = time.perf_counter()
        with psycopg.connect(self.made.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        env = {**os.environ, "PGPASSWORD": self.made.password}
        done = subprocess.run([self.tools["pg_restore"].path, "-h", "127.0.0.1", "-p", str(self.made.port), "-U",
                               "postgres", f"--jobs={RESTORE_JOBS}", "--no-owner", "--no-privileges", "-d", name,
                               str(self.dump)], env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        with psycopg.connect(self.made.dsn(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
        if done.returncode != 0:
            raise SystemExit(f"pg_restore failed: {done.stderr[-2000:]}")
        self.figures["plain_restore"] = seconds
        progress(f"round {self.index}: pg_restore --jobs={RESTORE_JOBS} {seconds:.2f} s")

    def run(self) -> dict[str, float]:
        backups = [self.ours_backup, self.plain_backup]
        restores = [self.ours_recovery, self.plain_restore]
        order = 1 if self.index % 2 == 0 else -1
        try:
            for step in backups[::order] + restores[::order]:
                step()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
        return self.figures


def main() -> None:
    args = round_args(__doc__, rounds=2)
    out = json_stdout()
    root = VAR / f"bench-pitr-{args.size_mb}"
    with bench_postgres():
        with cluster(root, free_port(), PASSWORD, "shared_buffers = 256MB\nmax_wal_size = 4GB", keep=True) as made:
            prepare(made, args.size_mb)
            os.environ["AIRFLOW_CONN_BENCH_PITR"] = made.uri(DATABASE, "dbops_repl")
            from dbops.hooks.ops import OpsDatabaseHook
            from dbops.hooks.postgres import DbopsPostgresHook
            from dbops.hooks.tools import find_tool

            hook = DbopsPostgresHook(postgres_conn_id="bench_pitr")
            ops = OpsDatabaseHook(postgres_conn_id="dbops_state")
            version = hook.server_version_num()
            tools = {n: find_tool(n, version) for n in ("pg_basebackup", "pg_receivewal", "pg_dump", "pg_restore")}
            dump = VAR / f"bench-pitr-{args.size_mb}.pgc"
            env = {**os.environ, "PGPASSWORD": made.password}
            subprocess.run([tools["pg_dump"].path, "-h", "127.0.0.1", "-p", str(made.port), "-U", "postgres", "-Fc",
                            "-f", str(dump), DATABASE], check=True, env=env)
            rounds = []
            try:
                for index in range(args.rounds):
                    work = Path(tempfile.mkdtemp(prefix="bench-pitr-", dir=VAR))
                    work.chmod(0o755)  # the scratch server's user must reach its directory inside
                    rounds.append(Round(index, made, work, hook, ops, tools, dump).run())
            finally:
                dump.unlink(missing_ok=True)
                hook.run("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots")
                with ops.transaction() as conn:
                    conn.execute("DELETE FROM dbops.wal_segments WHERE target = %s", (TARGET,))
    med = medians(rounds, progress)
    n = args.size_mb
    emit(out, "pitr", n, "basebackup_seconds", med["ours_backup"], "s", "pg_basebackup -Ft -z", med["plain_backup"])
    emit(out, "pitr", n, "basebackup_bytes", med["ours_bytes"], "bytes", "pg_basebackup -Ft -z", med["plain_bytes"])
    emit(out, "pitr", n, "recovery_seconds", med["ours_recovery"], "s", f"pg_restore --jobs={RESTORE_JOBS}",
         med["plain_restore"])


if __name__ == "__main__":
    main()
