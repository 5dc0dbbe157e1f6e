"""Ship a target's WAL to the store through physical replication slots, losing no segment whatever is killed.

Design. Two physical slots per target. The *hold* slot ``dbops_wal_<target>`` marks what is stored: no
client ever streams from it, and dbops moves it only with ``pg_replication_slot_advance`` once every
segment before the new position is stored and recorded. The server keeps all WAL from it on, so WAL that
is not in the store is never recycled, whatever happens to a worker or its disk. ``pg_receivewal`` streams
through a disposable *receive* slot ``dbops_wal_<target>_recv`` instead: the flush position it confirms
(on its status interval, or when the server asks) moves only that slot.

Each run: the receive slot is dropped, finished segments a killed run left in the staging directory
(``<staging_dir>/<target>__wal``) are stored, the directory is emptied and the receive slot copied from
the hold slot (``pg_copy_physical_replication_slot``, same ``restart_lsn``). With an empty directory
``pg_receivewal --slot <receive> --endpos <current LSN>`` starts at the segment that holds the slot's
``restart_lsn`` (PostgreSQL 15+), i.e. at the first WAL not stored yet. Every finished segment is then
compressed (zstd, in Python), stored, read back (size and sha256), recorded in ``dbops.wal_segments`` and
deleted locally; the unfinished one is stored as ``<segment>.partial.zst`` (replaced each run, deleted
once the segment is finished), so the recovery point is at most one shipping interval old on a quiet
database. A timeline history file ``pg_receivewal`` wrote (after a failover or promotion) is stored and
recorded once: recovery follows the switch with it. Then the hold slot is advanced to the end position
and the receive slot dropped (no idle slot between runs). The hold slot also follows each finished
segment as it is stored, so a run killed or timed out in a large backlog keeps its progress. While a base
backup runs, the hold slot stays where it is, so the server keeps the WAL ``pg_basebackup -X fetch``
reads at its end. So:

* killed at any point, on this worker or another, with or without its staging directory: the next run
  streams again from the hold slot everything not stored yet; a segment already recorded as finished is
  skipped (no duplicate), one stored but not recorded is stored again under the same key (its name);
* store unreachable: a probe write fails before ``pg_receivewal`` starts; the hold slot does not move;
* a killed run's ``pg_receivewal`` still streaming holds the receive slot: dropping it fails, retried.

Staging is scratch space of one run (at most the backlog plus one segment). The hold slot makes the server
keep WAL while shipping stops; still past ``pitr.max_retained_wal`` after a run shipped what it could, the
task fails telling what to do.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from airflow.sdk.exceptions import AirflowFailException

from dbops.backup import pitr_catalog
from dbops.backup.pitr_policy import receive_slot_name, slot_name
from dbops.backup.store_io import verify_stored
from dbops.core.processes import ToolError, run, tool_failed
from dbops.core.streams import CHUNK, write_compressed
from dbops.core.units import human_bytes

if TYPE_CHECKING:
    from dbops.core.store import BackupStore
    from dbops.hooks.ops import OpsDatabaseHook
    from dbops.hooks.postgres import DbopsPostgresHook
    from dbops.hooks.tools import PgTool

SEGMENT = re.compile(r"^[0-9A-F]{24}$")
HISTORY = re.compile(r"^[0-9A-F]{8}\.history$")  # a timeline's history: where it branched off its parent
PARTIAL_SUFFIX = ".partial"


def wal_key(target: str, segment: str, partial: bool = False) -> str:
    return f"{target}/wal/{segment}{PARTIAL_SUFFIX if partial else ''}.zst"


@dataclass
class ShipResult:
    segments: list[str] = field(default_factory=list)  # finished segments stored by this run
    histories: list[str] = field(default_factory=list)  # timeline history files stored by this run
    partial: str | None = None  # the unfinished segment stored as .partial
    bytes: int = 0
    raw_bytes: int = 0
    end_lsn: str | None = None
    retained_bytes: int = 0
    held_for_basebackup: bool = False  # the hold slot was not advanced: a base backup was running
    seconds: float = 0.0


def ensure_slot(hook: DbopsPostgresHook, slot: str) -> bool:
    """Create the physical slot (reserving WAL from now) unless it exists; True when created."""
    if hook.get_first("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", parameters=(slot,)):
        return False
    hook.run("SELECT pg_create_physical_replication_slot(%s, true)", parameters=(slot,))
    return True


def retained_wal(hook: DbopsPostgresHook, slot: str) -> int:
    """Bytes of WAL the slot makes the server keep (0 when the slot is missing or holds nothing)."""
    row = hook.get_first("SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint "
                         "FROM pg_replication_slots WHERE slot_name = %s", parameters=(slot,))
    return int(row[0]) if row else 0


def drop_slot(hook: DbopsPostgresHook, slot: str) -> None:
    """Drop the slot if it exists; a slot a client still streams from fails transiently."""
    try:
        hook.get_first("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                       parameters=(slot,))
    except psycopg.errors.ObjectInUse as err:  # a killed run's pg_receivewal streams to its end position
        raise ToolError(str(err).strip(), transient=True) from err


def _drop_statement(target: str) -> str:
    return ("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name IN "
            f"('{slot_name(target)}', '{receive_slot_name(target)}')")


def check_lost(hook: DbopsPostgresHook, slot: str, target: str) -> None:
    """Fail, saying what to do, when the server dropped WAL the slot held (the archive has a gap)."""
    lost = hook.get_first("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s AND wal_status = 'lost'",
                          parameters=(slot,))
    if lost:
        raise AirflowFailException(
            f"slot {slot} of {target} lost WAL it held (the server's max_slot_wal_keep_size was reached): the "
            f"archive has a gap. Drop the slot and its receive slot ({_drop_statement(target)} on the target), "
            f"then trigger pg_basebackup__{target} with full=true")


def check_retained(retained: int, target: str, cap: int) -> None:
    """Past ``cap`` of WAL retained after a shipping run, fail, saying what the operator can do."""
    if retained > cap:
        raise AirflowFailException(
            f"slot {slot_name(target)} of {target} still retains {human_bytes(retained)} of WAL after shipping, "
            f"over pitr.max_retained_wal ({human_bytes(cap)}): shipping cannot keep up (or a base backup holds "
            f"it) and the server's disk fills. Either raise max_retained_wal in dbops.yaml if the disk can take "
            f"it and let this DAG catch up, or drop the slot and its receive slot ({_drop_statement(target)} on "
            f"the target), then trigger pg_basebackup__{target} for a new full backup: point-in-time recovery "
            "before it is lost")


def ship_wal(hook: DbopsPostgresHook, tool: PgTool, ops: OpsDatabaseHook, store: BackupStore, target: str,
             staging: Path, level: int, timeout: float, key: bytes | None = None) -> ShipResult:
    """Stream from the hold slot's position up to the current LSN, store it all (encrypted with ``key`` when
    given), advance the hold slot; see the module docstring."""
    started = time.monotonic()
    hold, receive = slot_name(target), receive_slot_name(target)
    ensure_slot(hook, hold)
    drop_slot(hook, receive)
    shipment = _Shipment(hook, ops, store, target, staging, level, key, segment_size(hook))
    if staging.is_dir():
        shipment.store_finished()  # a killed run's leftovers need no re-streaming
        shipment.store_histories()
    store.check_writable()  # nothing streamed while the store cannot take it
    shutil.rmtree(staging, ignore_errors=True)  # pg_receivewal must start at the receive slot, not at a file
    staging.mkdir(parents=True)
    hook.get_first("SELECT pg_copy_physical_replication_slot(%s, %s)", parameters=(hold, receive))
    # A committed transaction: even an idle server has a commit record (with its time) in every shipping
    # interval, so recovery to any time up to the last shipping run finds a commit after its target.
    hook.run("SELECT pg_logical_emit_message(true, 'dbops_wal_ship', '')")
    # A tiny WAL record, flushed at once: everything inserted before it (asynchronous commits included)
    # is on disk and can be streamed, and an idle server still has WAL to reach. The function returns the
    # record's end; pg_receivewal stops once it received WAL *past* --endpos, so one byte before it.
    end_lsn = hook.get_first("SELECT pg_logical_emit_message(false, 'dbops_wal_ship', '', true)::text")[0]
    with hook.cli_environment() as env:
        done = run([tool.path, f"--directory={staging}", f"--slot={receive}", f"--endpos={_lsn(_lsn_int(end_lsn) - 1)}",
                    "--no-loop", "--no-password"], timeout, env)
    if done.returncode != 0:
        error = tool_failed("pg_receivewal", done.returncode, done.stderr)
        if "is active for PID" in done.stderr:  # another pg_receivewal took the receive slot meanwhile
            error.transient = True
        raise error
    shipment.store_histories()
    shipment.store_finished()
    shipment.store_partial()
    shipment.release(end_lsn)  # everything up to end_lsn is stored now
    drop_slot(hook, receive)
    shutil.rmtree(staging, ignore_errors=True)
    result = shipment.result
    result.end_lsn = end_lsn
    result.retained_bytes = retained_wal(hook, hold)
    result.seconds = round(time.monotonic() - started, 3)
    return result


@dataclass
class _Shipment:
    """One run's storing of the segments in ``staging``, releasing the hold slot segment by segment."""

    hook: DbopsPostgresHook
    ops: OpsDatabaseHook
    store: BackupStore
    target: str
    staging: Path
    level: int
    key: bytes | None
    segment_size: int
    result: ShipResult = field(default_factory=ShipResult)

    def store_finished(self) -> None:
        """Store the finished segments (oldest first), each followed by the hold slot: a run killed or timed
        out in a large backlog keeps what it stored."""
        names = sorted(p.name for p in self.staging.iterdir() if SEGMENT.match(p.name))
        if not names:
            return
        with self.ops.transaction() as conn:
            known = pitr_catalog.segments(conn, self.target, names[0])
        for name in names:
            if name in known and not known[name][0]:
                (self.staging / name).unlink()  # recorded by an earlier run killed before it advanced the hold slot
                continue
            self._store_one(self.staging / name, name, False)
            self.store.delete(wal_key(self.target, name, partial=True))
            (self.staging / name).unlink()
            self.result.segments.append(name)
            self.release(_lsn((segment_number(name, self.segment_size)[1] + 1) * self.segment_size))

    def store_histories(self) -> None:
        """Store the timeline history files pg_receivewal wrote (it fetches the one of each timeline it streams
        from): recovery needs them to follow a timeline switch. Each is stored once."""
        names = sorted(p.name for p in self.staging.iterdir() if HISTORY.match(p.name))
        if not names:
            return
        with self.ops.transaction() as conn:
            known = pitr_catalog.histories(conn, self.target)
        for name in names:
            if name not in known:
                self._store_one(self.staging / name, name, False)
                self.result.histories.append(name)

    def store_partial(self) -> None:
        for path in sorted(self.staging.glob(f"*{PARTIAL_SUFFIX}")):
            segment = path.name.removesuffix(PARTIAL_SUFFIX)
            if SEGMENT.match(segment):
                self._store_one(path, segment, True)
                self.result.partial = segment

    def release(self, lsn: str) -> None:
        """Let the server recycle the stored WAL before ``lsn``: advance the hold slot (never backwards), unless
        a base backup runs (``pg_basebackup -X fetch`` reads the WAL since its start from the server at its end)."""
        if self.hook.get_first("SELECT count(*) FROM pg_stat_progress_basebackup")[0]:
            self.result.held_for_basebackup = True
            return
        self.hook.get_first("SELECT pg_replication_slot_advance(slot_name, %s::pg_lsn) FROM pg_replication_slots "
                            "WHERE slot_name = %s AND restart_lsn < %s::pg_lsn",
                            parameters=(lsn, slot_name(self.target), lsn))

    def _store_one(self, path: Path, segment: str, partial: bool) -> None:
        packed = path.with_name(f".{path.name}.zst")
        stored_key = wal_key(self.target, segment, partial)
        try:
            with open(path, "rb") as fh:
                stored, raw, sha = write_compressed(iter(lambda: fh.read(CHUNK), b""), packed, self.level, self.key)
            self.store.put_file(packed, stored_key)
            verify_stored(self.store, stored_key, stored, sha)
        finally:
            packed.unlink(missing_ok=True)
        with self.ops.transaction() as conn:
            pitr_catalog.record_segment(conn, self.target, segment, partial, stored_key, stored, raw, sha)
        self.result.bytes += stored
        self.result.raw_bytes += raw


def _lsn_int(lsn: str) -> int:
    high, low = (int(part, 16) for part in lsn.split("/"))
    return (high << 32) | low


def _lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_size(hook: DbopsPostgresHook) -> int:
    """The server's WAL segment size in bytes."""
    return int(hook.get_first("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'")[0])


def recorded_segment_size(backup, hook: DbopsPostgresHook) -> int:
    """The WAL segment size recorded with a base backup (so a restore needs no live source), else the server's."""
    return backup.manifest.extra.get("wal_segment_size") or segment_size(hook)


def segment_number(name: str, segment_size: int) -> tuple[int, int]:
    """(timeline, segment number) of a WAL file name."""
    per_id = 0x100000000 // segment_size
    return int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:], 16)


def segment_name(timeline: int, number: int, segment_size: int) -> str:
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_id:08X}{number % per_id:08X}"


def segment_of_lsn(lsn: str, timeline: int, segment_size: int) -> str:
    return segment_name(timeline, _lsn_int(lsn) // segment_size, segment_size)


def find_gaps(names: list[str], first: str, segment_size: int) -> list[str]:
    """Segments missing between ``first`` and the newest of ``names`` (segments of ``first``'s timeline and of
    later ones: after a timeline switch the newer timeline goes on where the old one stopped)."""
    timeline, start = segment_number(first, segment_size)
    on: dict[int, int] = {}  # segment number -> the newest timeline it is stored on
    for t, n in (segment_number(name, segment_size) for name in names if SEGMENT.match(name)):
        if t >= timeline:
            on[n] = max(t, on.get(n, t))
    if not on:
        return [first]
    gaps, current = [], timeline
    for n in range(start, max(on)):
        if n in on:
            current = on[n]
        else:
            gaps.append(segment_name(current, n, segment_size))
    return gaps
