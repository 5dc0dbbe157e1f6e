"""Which backups still hold an anonymized person's data, and when backup retention will have deleted them.

A backup (or tenant export) whose snapshot is older than the anonymization still holds the data. Full
backups leave by grandfather-father-son retention: whether one is promoted to a weekly or monthly slot
depends on the backups taken after it, so the date is forecast by running the real retention plan
(:func:`dbops.backup.retention.plan_retention`) over the catalog plus one verified backup per future
slot of the backup schedule. The forecast holds while every scheduled backup succeeds and is verified:
a period without a verified backup does not count, so a failing backup postpones the deletions.
Tenant exports leave at the first scheduled backup run after ``tenant_retention``.

Other copies: physical base backups (full and incremental) and the shipped WAL of PITR leave once
``pitr.full_retention`` full base backups were taken after the anonymization (forecast from
``pitr.full_schedule``); lifecycle exports of an anonymized table to the store leave when their newest row
is past the table's ``retention``; partition dumps taken before a partition was dropped are kept until
someone deletes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

from dbops.backup import catalog, pitr_catalog
from dbops.backup.pitr_policy import PitrPolicy
from dbops.backup.policy import BackupPolicy
from dbops.backup.retention import BackupRecord, plan_retention
from dbops.lifecycle.export import EXPORTS_TABLE
from dbops.lifecycle.policy import ARCHIVE_SCHEMA, LifecycleSection

MAX_FUTURE_BACKUPS = 20_000  # the forecast gives up (says "not forecast") after this many scheduled backups


@dataclass(frozen=True)
class HoldingBackup:
    """A copy taken before the anonymization, and when retention deletes it (None: not forecast, or never:
    ``note`` says which)."""

    backup_id: str
    kind: str
    taken_at: datetime
    deleted_by: datetime | None
    note: str = ""


def backups_holding(conn: psycopg.Connection, target: str, policy: BackupPolicy | None,
                    anonymized_at: datetime) -> list[HoldingBackup]:
    """The target's complete backups and tenant exports taken before ``anonymized_at``, oldest first."""
    full = catalog.backups(conn, target)
    exports = catalog.backups(conn, target, kind="tenant")
    holding = [(b, "full") for b in full if b.taken_at < anonymized_at]
    holding += [(b, "tenant") for b in exports if b.taken_at < anonymized_at]
    if not holding or policy is None:
        return [HoldingBackup(b.backup_id, kind, b.taken_at, None) for b, kind in holding]
    full_dates = forecast_full(full, policy, {b.backup_id for b, kind in holding if kind == "full"}, anonymized_at)
    expiry = timedelta(seconds=policy.tenant_retention)
    result = [HoldingBackup(b.backup_id, kind, b.taken_at, full_dates.get(b.backup_id) if kind == "full"
                            else next_run_after(policy.schedule, b.taken_at + expiry)) for b, kind in holding]
    return sorted(result, key=lambda h: (h.taken_at, h.backup_id))


def copies_holding(conn: psycopg.Connection, target: str, backup: BackupPolicy | None, pitr: PitrPolicy | None,
                   anonymized_at: datetime, exports: list[HoldingBackup]) -> list[HoldingBackup]:
    """Every copy in the ops catalog taken before ``anonymized_at``, plus ``exports`` (from the target, see
    :func:`exports_holding`) of before then, oldest first."""
    holding = (backups_holding(conn, target, backup, anonymized_at) + pitr_holding(conn, target, pitr, anonymized_at)
               + partition_dumps_holding(conn, target, anonymized_at)
               + [e for e in exports if e.taken_at < anonymized_at])
    return sorted(holding, key=lambda h: (h.taken_at, h.backup_id))


def pitr_holding(conn: psycopg.Connection, target: str, policy: PitrPolicy | None,
                 anonymized_at: datetime) -> list[HoldingBackup]:
    """The base backups taken and the WAL segments shipped before ``anonymized_at``, oldest first.

    PITR retention deletes backups and WAL older than the oldest of the ``full_retention`` newest fulls
    (:mod:`dbops.backup.pitr_retention`): all of these are gone at the ``full_retention``-th scheduled full
    after the anonymization, if every one succeeds and a newer one passes its recovery test (the chain of
    the newest verified recovery is kept). The WAL written up to the anonymization and shipped after it
    leaves at the same time.
    """
    backups = [b for b in pitr_catalog.base_backups(conn, target) if b.taken_at < anonymized_at]
    wal = conn.execute("SELECT min(segment), max(segment), count(*), min(stored_at) FROM dbops.wal_segments "
                       "WHERE target = %s AND stored_at < %s", (target, anonymized_at)).fetchone()
    if not backups and not wal[2]:
        return []
    scheduled = policy is not None and policy.schedule  # fulls are taken by the runs of ``schedule``
    deleted_by = nth_run_after(policy.full_schedule, anonymized_at, policy.full_retention) if scheduled else None
    note = ("" if deleted_by else "PITR retention deletes it only once pitr.full_retention newer full base "
            "backups exist (until the oldest kept full is rotated out)")
    holding = [HoldingBackup(b.backup_id, b.kind, b.taken_at, deleted_by, note) for b in backups]
    if wal[2]:
        holding.append(HoldingBackup(f"WAL {wal[0]}..{wal[1]} ({wal[2]} segments)", "wal", wal[3], deleted_by,
                                     note))
    return sorted(holding, key=lambda h: (h.taken_at, h.backup_id))


def partition_dumps_holding(conn: psycopg.Connection, target: str, anonymized_at: datetime) -> list[HoldingBackup]:
    """Dumps of dropped partitions (``dbops.partition_retirements``) recorded before ``anonymized_at``, of any
    table (a partition holds whatever its rows named); no retention deletes them."""
    rows = conn.execute("SELECT backup_id, updated_at FROM dbops.partition_retirements WHERE target = %s "
                        "AND backup_id IS NOT NULL AND updated_at < %s ORDER BY updated_at, backup_id",
                        (target, anonymized_at)).fetchall()
    return [HoldingBackup(backup_id, "partition", dropped, None,
                          "partition dumps are kept for ever: delete them by hand once they are no longer needed")
            for backup_id, dropped in rows]


def exports_holding(conn: psycopg.Connection, section: LifecycleSection, tables: set[str],
                    anonymized_at: datetime) -> list[HoldingBackup]:
    """Lifecycle export files of ``tables`` (in the store) written before ``anonymized_at``; ``conn`` is the
    target's. The retention purge (``retention_schedule``) deletes a file once its newest row is older than
    the table's retention."""
    exported = {p.table: p for p in section.policies
                if p.exports and (p.table in tables or p.table_name in tables)}
    if not exported:
        return []
    if conn.execute("SELECT to_regclass(%s)", (f"{ARCHIVE_SCHEMA}.dbops_exports",)).fetchone()[0] is None:
        return []
    rows = conn.execute(sql.SQL("SELECT key, table_name, created_at, newest FROM {} WHERE table_name = ANY(%s) "
                                "AND created_at < %s ORDER BY created_at, key").format(EXPORTS_TABLE),
                        (list(exported), anonymized_at)).fetchall()
    holding = []
    for key, table, created, newest in rows:
        retention = exported[table].retention
        if retention is None or newest is None:
            holding.append(HoldingBackup(key, "lifecycle_export", created, None,
                                         f"no retention for {table}: the export is kept until deleted by hand"))
        else:
            expires = newest + timedelta(seconds=retention)
            holding.append(HoldingBackup(key, "lifecycle_export", created,
                                         next_run_after(section.retention_schedule, expires),
                                         "" if section.retention_schedule else
                                         f"its retention ends {expires:%Y-%m-%d}, but no retention_schedule runs "
                                         "the purge: delete it by hand"))
    return holding


def nth_run_after(schedule: str | None, moment: datetime, n: int) -> datetime | None:
    """The ``n``-th run of ``schedule`` after ``moment`` (None without a schedule)."""
    from croniter import croniter

    if not schedule:
        return None
    runs = croniter(schedule, moment.astimezone(timezone.utc))
    return [runs.get_next(datetime) for _ in range(n)][-1]


def forecast_full(catalogued: list[BackupRecord], policy: BackupPolicy, holding: set[str],
                  since: datetime) -> dict[str, datetime]:
    """When each backup of ``holding`` is deleted: the retention run after the scheduled backup that evicts it.

    Backups not evicted within :data:`MAX_FUTURE_BACKUPS` scheduled backups (or without a schedule) are
    left out.
    """
    from croniter import croniter

    if not policy.schedule or not holding:
        return {}
    backups, left, deleted = list(catalogued), set(holding), {}
    slots = croniter(policy.schedule, since.astimezone(timezone.utc))
    for n in range(MAX_FUTURE_BACKUPS):
        at = slots.get_next(datetime)
        backups.append(BackupRecord(f"forecast-{n}", at, True, "scheduled"))
        plan = plan_retention(backups, policy.retention)
        for backup in plan.delete:
            if backup.backup_id in left:
                deleted[backup.backup_id] = at
                left.discard(backup.backup_id)
        if not left:
            break
        backups = plan.keep
    return deleted


def next_run_after(schedule: str | None, moment: datetime) -> datetime | None:
    """The first scheduled backup run at or after ``moment`` (its retention task deletes what expired)."""
    from croniter import croniter

    if not schedule:
        return None
    return croniter(schedule, moment.astimezone(timezone.utc) - timedelta(seconds=1)).get_next(datetime)


def describe(holding: list[HoldingBackup]) -> str:
    """One line for the log and the report: how many backups hold the data and when the last one goes."""
    if not holding:
        return "no backup in the catalog was taken before the anonymization"
    names = ", ".join(f"{h.kind} {h.backup_id}" for h in holding)
    last = last_deletion(holding)
    when = (f"retention will have deleted the last of them by {last:%Y-%m-%d %H:%M} UTC, if every scheduled "
            "backup until then succeeds and is verified (a night without one postpones it)"
            if last else "retention does not delete all of them on its own (no backup schedule, or beyond the "
            "forecast): delete them by hand or wait for the schedule")
    notes = sorted({f"{h.kind}: {h.note}" for h in holding if h.deleted_by is None and h.note})
    return (f"{len(holding)} copies taken before the anonymization still hold the data ({names}); {when}"
            + "".join(f"; {note}" for note in notes))


def last_deletion(holding: list[HoldingBackup]) -> datetime | None:
    """When the last holding backup is gone; None when one of them has no forecast date."""
    dates = [h.deleted_by for h in holding]
    return None if not dates or None in dates else max(dates)


def as_dicts(holding: list[HoldingBackup]) -> list[dict[str, str | None]]:
    """JSON-ready rows for XCom and the ops database."""
    return [{"backup_id": h.backup_id, "kind": h.kind, "taken_at": h.taken_at.isoformat(),
             "deleted_by": h.deleted_by.isoformat() if h.deleted_by else None, "note": h.note} for h in holding]
