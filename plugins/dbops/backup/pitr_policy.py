"""The ``pitr`` section of a target: physical base backups, WAL shipping, recovery tests, retention."""

from __future__ import annotations

from dataclasses import dataclass, field

from dbops.core.schema import ByteSize, Cron, Invalid


@dataclass(frozen=True)
class PitrPolicy:
    """Point-in-time recovery of a target's cluster.

    ``schedule`` runs ``pg_basebackup__<target>``: each run takes an incremental backup on top of the
    newest verified one, or a full when ``full_schedule`` ticked since the newest full (or no verified
    parent exists). ``full_retention`` full backups are kept with their incrementals and WAL.
    """

    storage: str
    replication_conn_id: str | None = None  # a role with REPLICATION; default the target's conn_id
    schedule: Cron | None = "0 1 * * *"
    full_schedule: Cron = "0 1 * * 0"
    wal_ship_schedule: Cron | None = "*/5 * * * *"
    full_retention: int = 2
    max_retained_wal: ByteSize = 10 * 1024**3
    scratch_ports: list[int] = field(default_factory=lambda: [55700, 55799])
    compression_level: int = 3
    encryption_conn_id: str | None = None  # AES-256-GCM key of base backups and WAL, as backup.encryption_conn_id
    notify: list[str] = field(default_factory=lambda: ["log"])


MAX_IDENTIFIER = 63  # bytes of a PostgreSQL name, replication slots included


def slot_name(target: str) -> str:
    """The physical replication slot that holds the target's WAL until it is stored (never streamed from)."""
    return f"dbops_wal_{target}"


def receive_slot_name(target: str) -> str:
    """The disposable physical slot ``pg_receivewal`` streams through, copied from the hold slot each run."""
    return f"{slot_name(target)}_recv"


def check_pitr(policy: PitrPolicy, key: str, storage: dict, target: str, backups_encrypted: bool = False) -> None:
    """What the types cannot say: the store exists, retention keeps a full, the port range is sane, the
    target's replication slot names fit PostgreSQL's limit, physical backups are encrypted when the logical
    ones are."""
    if backups_encrypted and not policy.encryption_conn_id:
        raise Invalid(f"{key}.encryption_conn_id", "backup.encryption_conn_id is set, so this target's backups are "
                                                   "encrypted; base backups and WAL hold the same data: set it here "
                                                   "too (the same connection works)")
    if len(receive_slot_name(target).encode()) > MAX_IDENTIFIER:
        raise Invalid(key, f"the target name is too long for its replication slot {receive_slot_name(target)!r} "
                           f"(at most {MAX_IDENTIFIER} bytes): use a target name of at most "
                           f"{MAX_IDENTIFIER - len(receive_slot_name('').encode())} characters")
    if policy.storage not in storage:
        raise Invalid(f"{key}.storage", f"unknown storage {policy.storage!r} (defined: {', '.join(storage) or 'none'})")
    if policy.full_retention < 1:
        raise Invalid(f"{key}.full_retention", "must keep at least 1 full backup")
    if policy.max_retained_wal <= 0:
        raise Invalid(f"{key}.max_retained_wal", "must be greater than 0 (e.g. 10GB)")
    if not 1 <= policy.compression_level <= 19:
        raise Invalid(f"{key}.compression_level", "must be a zstd level from 1 to 19")
    ports = policy.scratch_ports
    if len(ports) != 2 or not 1024 < ports[0] <= ports[1] < 65536:
        raise Invalid(f"{key}.scratch_ports", f"expected [first, last] with 1024 < first <= last < 65536, got {ports}")
