"""Point-in-time recovery from the store: the newest full base backup and its incrementals are fetched
(sha256 checked), combined (``pg_combinebackup``), verified (``pg_verifybackup``) and recovered in a
scratch data directory on a scratch port with ``recovery_target_time``; then promoted.

``restore_command`` fetches each segment recovery asks for from the store, through this task
(:mod:`dbops.backup.wal_serve`): checked against the sha256 recorded when it was shipped, so a corrupt
segment fails the recovery naming it, and only the WAL up to the target is downloaded. The server
process needs neither Python nor the store's credentials, only curl.

The scratch server listens on a Unix socket in its own private directory only (no TCP) and trusts
local connections there. A server refuses to run as root: when the worker is root, the server runs as
``$DBOPS_PG_SYSTEM_USER`` (default ``embedded_postgres``), which then owns the scratch directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from dbops.backup.basebackup import ARCHIVE
from dbops.backup.wal_serve import SegmentUnusable, WalArchive, restore_command, serving
from dbops.core.processes import run, supervised
from dbops.core.streams import ChecksumMismatch, decompressed

if TYPE_CHECKING:
    from dbops.backup.pitr_catalog import BaseBackup
    from dbops.core.store import BackupStore

_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_STOPPING = re.compile(r"recovery stopping [^\n]*")
_UNREACHED = "recovery ended before configured recovery target was reached"
_LAST_COMMIT = re.compile(r"last completed transaction was at log time ([^\n]+)")
AUTO_CONF = "postgresql.auto.conf"
_MARK = "# dbops point-in-time recovery (removed once recovered)\n"
RESTORE_MARKER = "dbops_restore.json"  # in a data directory a restore is making: which run, removed once done
_KEEP_ARCHIVING_OFF = ("# dbops: a restored copy must not archive into the source's WAL archive; turn on "
                       "deliberately\narchive_mode = 'off'\n")


class RecoveryFailed(Exception):
    """The backup chain or the archive cannot recover to the target: the message says what failed."""


def write_marker(data: Path, marker: dict[str, str]) -> None:
    """Mark ``data`` as made by a restore that has not finished (removed once it has)."""
    (data / RESTORE_MARKER).write_text(json.dumps(marker))


def read_marker(data: Path) -> dict[str, str] | None:
    """The marker of a data directory a restore made and did not finish, or None."""
    try:
        return json.loads((data / RESTORE_MARKER).read_text())
    except (OSError, ValueError):
        return None


def lsn_bytes(lsn: str) -> int:
    high, low = (int(part, 16) for part in lsn.split("/"))
    return (high << 32) | low


def chain_for(backups: list[BaseBackup], target_time: datetime | None, target: str) -> list[BaseBackup]:
    """The chain (full first) of the newest base backup finished before ``target_time`` (any if None).

    :raises RecoveryFailed: none is; the message says the earliest time the store can reach, or to take a
        base backup when there is no complete one.
    """
    from dbops.backup.pitr_catalog import chain_of

    complete = []
    for backup in backups:
        try:
            chain = chain_of(backups, backup.backup_id)
        except LookupError:
            continue
        if target_time is None or stop_time(backup) < target_time:
            return chain
        complete.append(backup)
    if not complete:
        raise RecoveryFailed(f"no base backup of {target} with a complete chain in the catalog: take one "
                             f"(trigger pg_basebackup__{target})")
    earliest = min(complete, key=stop_time)
    inside = next((b for b in complete if b.taken_at <= target_time < stop_time(b)), None)
    if inside is not None:
        why = (f"{target_time.isoformat()} is inside base backup {inside.backup_id}'s own span "
               f"({inside.taken_at.isoformat()} to {stop_time(inside).isoformat()}): recovery from a base backup "
               "reaches only times after it ended")
    else:
        why = (f"{target_time.isoformat()} is before the oldest base backup kept ({earliest.backup_id}; older ones and "
               "their WAL were deleted by retention, pitr.full_retention)")
    raise RecoveryFailed(f"no base backup of {target} finished before {target_time.isoformat()}: {why}. The "
                         f"earliest time reachable is {stop_time(earliest).isoformat()} (the end of "
                         f"{earliest.backup_id}); a new base backup cannot reach an earlier time")


def stop_time(backup: BaseBackup) -> datetime:
    """When the base backup ended (the server's clock): recovery from it reaches times after this."""
    return datetime.fromisoformat(backup.manifest.extra["stop_time"])


def unreached(segments: dict[str, tuple[bool, str, str]], newest: BaseBackup, target_time: datetime) -> str:
    """Why recovery from ``newest`` ended before ``target_time``, and what to do: a timeline switch in the
    archive that recovery cannot follow (its history file is not stored), or WAL not shipped yet."""
    from dbops.backup.wal_ship import SEGMENT

    timeline, target = int(newest.manifest.extra["timeline"]), newest.manifest.target
    newer = sorted({name[:8] for name in segments if SEGMENT.match(name) and int(name[:8], 16) > timeline})
    if newer:
        first = min(name for name in segments if SEGMENT.match(name) and name[:8] == newer[0])
        switch = (f"the WAL archive switches from timeline {timeline} (base backup {newest.backup_id}) to timeline "
                  f"{int(newer[0], 16)} at segment {first} (a failover or promotion)")
        missing = [f"{tli}.history" for tli in newer if f"{tli}.history" not in segments]
        if missing:
            return (f"{switch}, and the timeline history file {', '.join(missing)} is not in the store, "
                    "so recovery cannot follow the switch. Recover to a time before "
                    f"the switch, or trigger pg_basebackup__{target} with full=true and recover to times after that "
                    "backup")
        return (f"{switch}; recovery followed it but the shipped WAL ends before {target_time.isoformat()}: run "
                f"pg_wal_ship__{target} and try again, or choose an earlier time")
    return (f"the shipped WAL ends before {target_time.isoformat()}: run pg_wal_ship__{target} and "
            "try again, or choose an earlier time")


def fetch_and_extract(store: BackupStore, backup: BaseBackup, dest: Path, timeout: float,
                      key: bytes | None = None) -> int:
    """Download a base backup's archive and unpack it into ``dest`` (sha256 checked; decrypted with ``key`` when
    its manifest says encrypted); return raw bytes."""
    entry = next(f for f in backup.manifest.files if f.name == ARCHIVE)
    if backup.manifest.encryption and key is None:
        raise RecoveryFailed(f"{backup.backup_id} is encrypted and pitr.encryption_conn_id is not set")
    packed = dest.with_name(f"{dest.name}.tar.zst")
    store.get_file(f"{backup.backup_id}/{ARCHIVE}", packed)
    try:
        dest.mkdir(mode=0o700, parents=True)
        content = decompressed(packed, entry.sha256, key if backup.manifest.encryption else None)
        # GNU tar unpacks faster than tarfile; it gets the stream decompressed here
        with supervised(["tar", "-x", "-f", "-", "-C", str(dest)], timeout, stdin=subprocess.PIPE,
                        stderr=subprocess.PIPE) as proc:
            try:
                for data in content:
                    proc.stdin.write(data)
                proc.stdin.close()
            except BrokenPipeError:  # tar gave up: reading on names a corrupt archive as such
                for _ in content:
                    pass
            stderr = proc.stderr.read()
        if proc.returncode != 0:
            raise RecoveryFailed(f"unpacking {backup.backup_id}/{ARCHIVE} failed: {stderr.decode(errors='replace')}")
    except ChecksumMismatch as err:
        raise ChecksumMismatch(f"{backup.backup_id}/{ARCHIVE} ({err})") from None
    finally:
        packed.unlink(missing_ok=True)
    return entry.raw_bytes


def combine_and_verify(bin_dir: Path, parts: list[Path], out: Path, timeout: float,
                       marker: dict[str, str] | None = None) -> dict[str, Any]:
    """``pg_combinebackup`` the parts (full first) into ``out`` (a lone full is moved), then
    ``pg_verifybackup`` it (files against backup_manifest, and the WAL it needs). ``marker`` is written into
    ``out`` as :data:`RESTORE_MARKER` as soon as it exists (a lone full carries it when moved)."""
    started = time.monotonic()
    if len(parts) == 1:
        if marker is not None:
            write_marker(parts[0], marker)
        shutil.move(parts[0], out)
    else:
        done = run([str(bin_dir / "pg_combinebackup"), "--output", str(out), *map(str, parts)], timeout, server_env())
        if done.returncode != 0:
            raise RecoveryFailed(f"pg_combinebackup failed: {done.stderr.strip()[-1500:]}")
        if marker is not None:
            write_marker(out, marker)
        for part in parts:
            shutil.rmtree(part, ignore_errors=True)
    combined = time.monotonic()
    done = run([str(bin_dir / "pg_verifybackup"), "--quiet", f"--ignore={RESTORE_MARKER}", str(out)], timeout,
               server_env())
    if done.returncode != 0:
        raise RecoveryFailed(f"pg_verifybackup failed: {(done.stdout + done.stderr).strip()[-1500:]}")
    return {"combine_seconds": round(combined - started, 3), "verify_seconds": round(time.monotonic() - combined, 3)}


def server_env() -> dict[str, str]:
    """The environment of server binaries: a few harmless variables (the worker's holds secrets, AIRFLOW_CONN_*)."""
    return {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")}


def hand_to_server_user(paths: Iterable[Path], recursive: bool = False) -> None:
    """Make ``paths`` private (0700) and, when this process is root (PostgreSQL refuses to run as root), owned by
    the system user the server runs as (with everything below them when ``recursive``)."""
    user = server_user()
    for top in paths:
        top.chmod(0o700)
        if user:
            for path in (top, *top.rglob("*")) if recursive else (top,):
                shutil.chown(path, user, user)


def free_port(first: int, last: int) -> int:
    """The first port of ``first``..``last`` nothing listens on at 127.0.0.1."""
    for port in range(first, last + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RecoveryFailed(f"no free scratch port in {first}-{last} (pitr.scratch_ports)")


def check_wal_compression(bin_dir: Path, values: set[str]) -> None:
    """Fail, saying what to do, when the server in ``bin_dir`` was built without a ``wal_compression`` method the
    source used (lz4, zstd): recovery would fail at the first full-page image compressed with it."""
    for value in sorted(values - {"on", "off", "pglz", ""}):
        with tempfile.TemporaryDirectory(prefix="dbops-probe-") as probe:
            Path(probe, "postgresql.conf").touch()
            if server_user():
                shutil.chown(probe, server_user(), server_user())
            done = subprocess.run([str(bin_dir / "postgres"), "-D", probe, "-C", "wal_compression", "-c",
                                   f"wal_compression={value}"], env=server_env(), capture_output=True, text=True,
                                  user=server_user(), timeout=60, check=False)
        if done.returncode != 0:
            hint = next((line.split("HINT:", 1)[1].strip() for line in done.stderr.splitlines() if "HINT:" in line), "")
            raise RecoveryFailed(
                f"the source writes WAL with wal_compression = {value}, and the PostgreSQL server in {bin_dir} was "
                f"built without {value} ({hint or done.stderr.strip()[-300:]}): recovery would fail at the first "
                f"compressed full-page image. Set tools.bin_dir to a server build with {value}, or set wal_compression "
                "= pglz (or off) on the source and take a full base backup")


def server_user() -> str | None:
    """The system user a server runs as when this process is root (PostgreSQL refuses root)."""
    return os.environ.get("DBOPS_PG_SYSTEM_USER", "embedded_postgres") if os.geteuid() == 0 else None


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


@dataclass
class ScratchServer:
    """A recovering cluster in ``root/data``: its socket, hba, log and WAL index live in ``root``."""

    root: Path
    bin_dir: Path
    port: int
    data_dir: Path | None = None  # default root/data

    @property
    def data(self) -> Path:
        return self.data_dir or self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """A short private directory for the socket (Unix socket paths hold at most 107 bytes)."""
        record = self.root / "socket_dir"
        if not record.exists():
            record.write_text(tempfile.mkdtemp(prefix="dbops-pitr-"))
        return Path(record.read_text())

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    @property
    def wal_socket(self) -> Path:
        """Where this task serves the WAL archive to ``restore_command``."""
        return self.socket_dir / "wal.sock"

    def configure(self, target_time: datetime | None, timeout: float) -> None:
        """Write the hba and the recovery settings (to ``target_time``, or to the end of the archive when None,
        following timeline switches the archive's history files name); ``recovery.signal``."""
        curl = shutil.which("curl")
        if curl is None:
            raise RecoveryFailed("curl is not installed on this worker: restore_command needs it to fetch WAL")
        (self.root / "pg_hba.conf").write_text("local all all trust\n")
        command = restore_command(curl, self.wal_socket, timeout)
        settings = {"port": str(self.port), "listen_addresses": "", "unix_socket_directories": str(self.socket_dir),
                    "hba_file": str(self.root / "pg_hba.conf"), "restore_command": command,
                    "recovery_target_timeline": "latest",
                    "archive_mode": "off", "cluster_name": "dbops_pitr",
                    "logging_collector": "off", "shared_preload_libraries": "", "shared_buffers": "128MB"}
        if int((self.data / "PG_VERSION").read_text()) >= 17:  # the setting exists from 17 (older servers refuse it)
            settings["summarize_wal"] = "off"  # the source summarizes for its incremental backups; a copy does not
        if target_time is not None:  # without a target, recovery replays all the archive holds, then promotes
            settings.update(recovery_target_time=target_time.isoformat(), recovery_target_action="promote")
        (self.data / "postgresql.conf").touch()  # a source whose configuration lives elsewhere (/etc) has none
        with open(self.data / AUTO_CONF, "a") as conf:
            conf.write("\n" + _MARK + "".join(f"{k} = {_quote(v)}\n" for k, v in settings.items()))
        (self.data / "standby.signal").unlink(missing_ok=True)
        (self.data / "recovery.signal").touch()
        hand_to_server_user({self.root, self.data, self.socket_dir}, recursive=True)

    def _ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data), *args], env=server_env(),
                              timeout=timeout, capture_output=True, text=True, user=server_user(), check=False)

    def start(self, timeout: float) -> float:
        """Start recovery; return the seconds until the server accepts connections (consistent)."""
        started = time.monotonic()
        done = self._ctl("-l", str(self.log_path), "-w", "-t", str(int(timeout)), "start", timeout=timeout + 30)
        if done.returncode != 0:
            raise RecoveryFailed(f"the scratch server did not become consistent: {self.failure()}")
        return time.monotonic() - started

    def connect(self, user: str, database: str) -> psycopg.Connection:
        return psycopg.connect(host=str(self.socket_dir), port=self.port, user=user, dbname=database, autocommit=True,
                               connect_timeout=10)

    def wait_promoted(self, user: str, database: str, timeout: float) -> None:
        """Wait until recovery reached its target and the server was promoted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self.connect(user, database) as conn:
                    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return
            except psycopg.OperationalError:
                if not (self.data / "postmaster.pid").exists():
                    raise RecoveryFailed(f"the scratch server stopped during recovery: {self.failure()}") from None
            time.sleep(0.3)
        raise RecoveryFailed(f"recovery did not reach its target within {timeout:.0f} s: {self.failure()}")

    def failure(self) -> str:
        """Why recovery failed: the server log's last errors, else its last lines."""
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.exists() else []
        errors = [line for line in lines if "FATAL" in line or "ERROR" in line or "PANIC" in line]
        return " | ".join(errors[-3:] or lines[-5:]) or "the server wrote no log"

    def log_tail(self, lines: int = 40) -> str:
        """The server log's last ``lines`` (for the task log: the scratch directory is deleted afterwards)."""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:]) if self.log_path.exists() else ""

    def replay_figures(self, start_lsn: str) -> dict[str, Any]:
        """What the log says about recovery: where it stopped and how much WAL it replayed."""
        log = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        redo = _REDO_DONE.findall(log)
        stopping = _STOPPING.findall(log)
        last = _LAST_COMMIT.findall(log)
        return {"redo_done_at": redo[-1] if redo else None, "last_transaction_at": last[-1].strip() if last else None,
                "wal_replayed_bytes": lsn_bytes(redo[-1]) - lsn_bytes(start_lsn) if redo else None,
                "stopped": stopping[-1] if stopping else None}

    def stop(self, timeout: float = 120) -> None:
        """Stop the server (if it runs) and remove its socket directory."""
        if self._running():
            self._ctl("-m", "fast", "-w", "-t", str(int(timeout)), "stop", timeout=timeout + 30)
        record = self.root / "socket_dir"
        if record.exists():
            socket_dir = self.socket_dir
            ours = socket_dir.parent == Path(tempfile.gettempdir()) and socket_dir.name.startswith("dbops-pitr-")
            if ours and socket_dir.is_dir() and not socket_dir.is_symlink():  # never what a rewritten record names
                shutil.rmtree(socket_dir, ignore_errors=True)
            record.unlink()

    def _running(self) -> bool:
        """True when the process ``postmaster.pid`` names runs in this data directory: after a kill -9 the file
        stays, and its pid may belong to another process by now (pg_ctl would signal that one)."""
        if not Path("/proc/self/cwd").exists():  # no /proc: trust the file
            return (self.data / "postmaster.pid").exists()
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            return Path(os.readlink(f"/proc/{pid}/cwd")) == self.data.resolve()
        except (OSError, ValueError):
            return False

    def forget_recovery_settings(self) -> None:
        """Take our settings out of postgresql.auto.conf: the directory starts as the source's cluster,
        except that archiving stays off, so it never writes into the source's WAL archive."""
        conf = self.data / AUTO_CONF
        text = conf.read_text()
        if _MARK in text:
            conf.write_text(text[:text.index(_MARK)].rstrip("\n") + "\n" + _KEEP_ARCHIVING_OFF)


def remove_scratch(root: Path, bin_dir: Path | None, data_dir: Path | None = None, keep: bool = False) -> bool:
    """Stop a scratch server left in ``root`` (its data in ``data_dir`` when not ``root/data``), remove its socket
    directory and delete ``root`` (only its content with ``keep``: a claimed directory keeps its lock); True when
    there was one."""
    from dbops.core.scratch import empty

    if not root.exists():
        return False
    if bin_dir is not None:
        ScratchServer(root, bin_dir, 0, data_dir=data_dir).stop()
    if keep:
        empty(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return True


def recover(store: BackupStore, chain: list[BaseBackup], segments: dict[str, tuple[bool, str, str]],
            server: ScratchServer, target_time: datetime | None, user: str, database: str, timeout: float,
            lookup: Callable[[str], tuple[bool, str, str] | None] | None = None,
            key: bytes | None = None, marker: dict[str, str] | None = None) -> dict[str, Any]:
    """Fetch, combine and verify ``chain`` into ``server.data``, recover it to ``target_time`` (None: to the end of
    the archive) and promote it.
    ``segments`` are the stored WAL segments from the chain's start; ``lookup`` reads one's current entry;
    ``key`` decrypts what was stored encrypted; ``marker`` marks the data directory (:func:`combine_and_verify`).

    The server is left running; the caller checks it and stops it. Figures: bytes fetched, seconds to
    consistent and to promoted, WAL replayed.
    """
    started = time.monotonic()
    work = server.root / "parts"
    work.mkdir(parents=True, exist_ok=True)
    parts, raw = [], 0
    for i, backup in enumerate(chain):
        parts.append(work / f"{i:02d}")
        raw += fetch_and_extract(store, backup, parts[-1], timeout, key)
    fetched = time.monotonic()
    figures: dict[str, Any] = {"chain": [b.backup_id for b in chain], "bytes": raw,
                               "fetch_seconds": round(fetched - started, 3),
                               **combine_and_verify(server.bin_dir, parts, server.data, timeout, marker)}
    shutil.rmtree(work, ignore_errors=True)
    server.configure(target_time, timeout)
    recovery_started = time.monotonic()
    archive = WalArchive(store, segments, server.root / "wal", lookup, key)
    with serving(archive, server.wal_socket, server_user()):
        try:
            figures["seconds_to_consistent"] = round(server.start(timeout), 3)
            server.wait_promoted(user, database, timeout)
        except RecoveryFailed as err:
            if isinstance(archive.failure, SegmentUnusable):
                raise RecoveryFailed(str(archive.failure)) from archive.failure
            if archive.failure is not None:  # e.g. the store unreachable: the task is retried
                raise archive.failure from None
            if _UNREACHED in str(err) and target_time is not None:
                raise RecoveryFailed(f"{err} -- {unreached(segments, chain[-1], target_time)}") from err
            raise
    figures["seconds_to_promoted"] = round(time.monotonic() - recovery_started, 3)
    figures["wal_fetched_bytes"] = archive.served_bytes
    figures["wal_segments_fetched"] = len(archive.served)
    figures["total_seconds"] = round(time.monotonic() - started, 3)
    figures.update(server.replay_figures(chain[-1].start_lsn))
    return figures
