"""What a run does to one partitioned table, from its inspection, its policy and the run's logical date.

Pure functions, no database and no clock: the same inspection, retirement records and logical date always
give the same plan, so a backfilled run for a past date creates what that date needed and retires only
partitions older than that date's retention cutoff (never anything newer). It never re-creates a range
``dbops.partition_retirements`` says was retired after the run's logical date (a newer run dumped and dropped
it, or detached it), and it refuses before detaching what ``retire: drop`` cannot prove (a sub-partitioned
partition).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from collections.abc import Sequence
from typing import Any

from dateutil.relativedelta import relativedelta

from dbops.partitions.tree import Partition, TableInspection
from dbops.partitions.policy import TablePolicy

CREATE = "create"  # a new partition (rows of its range in DEFAULT are moved into it first)
RETIRE = "retire"  # detach (or finalize a pending detach), then keep / archive / drop
FINALIZE = "finalize"  # a detach left pending: finish it


@dataclass(frozen=True)
class Step:
    """One change to one partition. Bounds are ISO UTC strings (XCom-safe)."""

    kind: str
    table: str
    schema: str
    name: str
    lower: str
    upper: str
    default_rows: int = 0
    reason: str = ""
    expired: bool = False  # a finalized detach is then retired as the policy says (else only recorded as detached)
    refused: str = ""  # a retirement refused before anything is done to the partition, and why

    @property
    def bounds(self) -> tuple[datetime, datetime]:
        return datetime.fromisoformat(self.lower), datetime.fromisoformat(self.upper)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.schema}.{self.name} [{self.lower[:19]}, {self.upper[:19]})"


@dataclass(frozen=True)
class RetiredRange:
    """A row of ``dbops.partition_retirements``: a range some run retired, and when that was recorded."""

    schema: str
    name: str
    lower: datetime
    upper: datetime
    status: str
    recorded: datetime

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass
class TablePlan:
    table: str
    steps: list[Step] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)  # gaps, overlaps, odd intervals, rows left in DEFAULT
    error: str | None = None  # the table cannot be managed (named with file, target, table and key)

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "steps": [asdict(s) for s in self.steps], "findings": self.findings,
                "error": self.error}


def floor(moment: datetime, interval: str) -> datetime:
    """Start (UTC) of the interval holding ``moment``; weeks start on Monday (as date_trunc's)."""
    day = moment.astimezone(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    if interval == "weekly":
        return day - timedelta(days=day.weekday())
    if interval == "monthly":
        return day.replace(day=1)
    if interval == "yearly":
        return day.replace(month=1, day=1)
    return day


def shift(start: datetime, interval: str, n: int) -> datetime:
    unit = {"daily": "days", "weekly": "weeks", "monthly": "months", "yearly": "years"}[interval]
    return start + relativedelta(**{unit: n})


def retention_cutoff(logical_date: datetime, policy: TablePolicy) -> datetime | None:
    """Partitions whose upper bound is at or before this are retired (None: never)."""
    parts = policy.retention_parts
    return None if parts is None else logical_date.astimezone(timezone.utc) - relativedelta(**{parts[1]: parts[0]})


def partition_name(parent: str, lower: datetime, interval: str) -> str:
    """``<parent>_2026_12`` (monthly), ``_2026`` (yearly), ``_20261201`` (daily, weekly); a parent name too long
    for PostgreSQL's 63 bytes is cut and tagged with its hash."""
    suffix = {"monthly": "%Y_%m", "yearly": "%Y"}.get(interval, "%Y%m%d")
    tail = "_" + lower.strftime(suffix)
    if len((parent + tail).encode()) <= 63:
        return parent + tail
    tag = "_" + hashlib.sha1(parent.encode()).hexdigest()[:6]
    return parent.encode()[:63 - len((tag + tail).encode())].decode(errors="ignore") + tag + tail


def _overlaps(part: Partition, lower: datetime, upper: datetime) -> bool:
    return (part.lower is None or part.lower < upper) and (part.upper is None or lower < part.upper)


def covered_until(found: TableInspection, start: datetime) -> datetime | None:
    """End of the partitions that cover ``start`` onwards without a gap (None: ``start`` is not covered)."""
    end = None
    cursor = start
    for part in found.partitions:
        if part.detach_pending:
            continue
        if (part.lower is None or part.lower <= cursor) and (part.upper is None or cursor < part.upper):
            if part.upper is None:
                return datetime.max.replace(tzinfo=timezone.utc)
            end = cursor = part.upper
    return end


def findings(found: TableInspection, interval: str) -> list[str]:
    """Gaps, overlaps and partitions of another interval among the attached partitions."""
    notes = []
    attached = [p for p in found.partitions if not p.detach_pending]
    for before, after in zip(attached, attached[1:]):
        if before.upper is not None and after.lower is not None and before.upper < after.lower:
            notes.append(f"gap: no partition for [{before.upper:%Y-%m-%d %H:%M}, {after.lower:%Y-%m-%d %H:%M}) "
                         f"between {before.qualified} and {after.qualified}")
        if before.upper is None or (after.lower is not None and after.lower < before.upper):
            notes.append(f"overlap: {before.qualified} and {after.qualified}")
    for part in attached:
        if part.lower is None or part.upper is None:
            notes.append(f"unexpected interval: {part.qualified} is open-ended (MINVALUE / MAXVALUE)")
        elif floor(part.lower, interval) != part.lower or shift(part.lower, interval, 1) != part.upper:
            notes.append(f"unexpected interval: {part.qualified} is [{part.lower:%Y-%m-%d %H:%M}, "
                         f"{part.upper:%Y-%m-%d %H:%M}), not one {interval} interval")
    return notes


def plan_table(found: TableInspection, policy: TablePolicy, logical_date: datetime,
               retired: Sequence[RetiredRange] = ()) -> TablePlan:
    """Create the current interval and ``premake`` ahead (moving their rows out of DEFAULT), retire what is
    wholly older than the retention cutoff, finish pending detaches; report what stays odd.

    :param retired: the table's rows of ``dbops.partition_retirements``; a range one of them covers and recorded
        after ``logical_date`` is never created again (a backfill must not bring back what a newer run retired).
    """
    plan = TablePlan(found.table, findings=findings(found, policy.interval))
    plan.findings += [f"half-done move: {h.qualified} holds {h.rows} rows of [{h.lower:%Y-%m-%d %H:%M}, "
                      f"{h.upper:%Y-%m-%d %H:%M}) moved out of DEFAULT and not attached: not visible through the "
                      "parent (a run stopped mid-move, or one is moving them now); apply finishes the move first "
                      "thing when its plan creates that range, else moves them back into DEFAULT"
                      for h in found.half_done]
    recorded = {(r.schema, r.name) for r in retired}
    plan.findings += [f"not attached: {t.describe(f'{found.schema}.{found.name}')}" for t in found.lookalikes
                      if (t.schema, t.name) not in recorded]
    start = floor(logical_date, policy.interval)
    planned: set[datetime] = set()
    for k in range(policy.premake + 1):
        lower, upper = shift(start, policy.interval, k), shift(start, policy.interval, k + 1)
        same = [p for p in found.partitions if p.lower == lower and p.upper == upper and not p.detach_pending]
        if same:
            continue
        other = [p for p in found.partitions if _overlaps(p, lower, upper)]
        if other:
            plan.findings.append(f"not created: [{lower:%Y-%m-%d}, {upper:%Y-%m-%d}) overlaps "
                                 f"{', '.join(p.qualified for p in other)}")
            continue
        gone = [r for r in retired if r.lower < upper and lower < r.upper and r.recorded > logical_date]
        if gone:
            plan.findings.append(
                f"not created: [{lower:%Y-%m-%d}, {upper:%Y-%m-%d}) was retired after this run's logical date "
                f"{logical_date:%Y-%m-%d %H:%M}: " + ", ".join(
                    f"{r.qualified} {r.status} (recorded {r.recorded:%Y-%m-%d %H:%M} UTC)" for r in gone)
                + "; a backfill never re-creates a retired range")
            continue
        rows = found.default_buckets.get(lower, 0)
        planned.add(lower)
        plan.steps.append(Step(CREATE, found.table, found.schema, partition_name(found.name, lower, policy.interval),
                               lower.isoformat(), upper.isoformat(), rows,
                               f"{k} interval(s) ahead of the logical date" + (
                                   f"; {rows} rows move out of DEFAULT" if rows else "")))
    cutoff = retention_cutoff(logical_date, policy)
    pending = [p for p in found.partitions if p.detach_pending]  # first: PostgreSQL detaches no other meanwhile
    for part in pending + [p for p in found.partitions if not p.detach_pending]:
        expired = cutoff is not None and part.upper is not None and part.upper <= cutoff
        if part.detach_pending:
            plan.steps.append(Step(FINALIZE, found.table, part.schema, part.name, _iso(part.lower), _iso(part.upper),
                                   reason="detach left pending by an interrupted run"
                                   + ("; then retired" if expired else "; kept detached until due"),
                                   expired=expired))
        elif expired:
            refused = _refused(part, policy)
            plan.steps.append(Step(RETIRE, found.table, part.schema, part.name, _iso(part.lower), _iso(part.upper),
                                   reason=f"upper bound {part.upper:%Y-%m-%d} <= cutoff {cutoff:%Y-%m-%d} "
                                          f"(logical date - {policy.retention})"
                                          + (f"; REFUSED, left attached: {refused}" if refused else ""),
                                   expired=True, refused=refused))
    for bucket, rows in sorted(found.default_buckets.items(), key=lambda i: (i[0] is not None, i[0])):
        if bucket is None:
            plan.findings.append(f"DEFAULT: {rows} rows with a NULL key stay (they belong to no range)")
        elif bucket not in planned:
            plan.findings.append(f"DEFAULT: {rows} rows of [{bucket:%Y-%m-%d}, "
                                 f"{shift(bucket, policy.interval, 1):%Y-%m-%d}) stay: no partition is planned "
                                 "for that range")
    return plan


def subpartitioned(qualified: str) -> str:
    """Why ``retire: drop`` refuses a partition that is itself partitioned."""
    return (f"{qualified} is sub-partitioned (a partitioned table itself): retire: drop dumps, restores and counts "
            "one plain table and cannot prove a partitioned one. Retire it by hand (pg_dump --table-and-children, "
            "then DROP TABLE), or set retire: archive_schema or detach for this table")


def _refused(part: Partition, policy: TablePolicy) -> str:
    """Why the partition must not even be detached under its table's policy ('' when it may)."""
    return subpartitioned(part.qualified) if part.subpartitioned and policy.retire == "drop" else ""


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment else ""


def format_plan(plans: list[TablePlan]) -> str:
    """The plan for the task log: one line per step and finding, per table."""
    lines = []
    for plan in plans:
        if plan.error:
            lines.append(f"{plan.table}: ERROR {plan.error}")
            continue
        lines.append(f"{plan.table}: {len(plan.steps)} steps, {len(plan.findings)} findings")
        lines += [f"  {s.label}: {s.reason}" for s in plan.steps]
        lines += [f"  ! {note}" for note in plan.findings]
    return "\n".join(lines)
