"""Maintenance planning: from measured table and index statistics to one action per object, with the reason.

Pure functions and plain data, no database: the operators scan (``dbops.maintenance.scan``), call
:func:`plan_weekly` or :func:`plan_daily`, and map one task over each :class:`Action` of the plan.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from dbops.core.units import human_bytes
from dbops.maintenance.policy import MaintenancePolicy

NOTHING = "nothing"
VACUUM_FULL = "vacuum_full"
REINDEX = "reindex_concurrently"
VACUUM_ANALYZE = "vacuum_analyze"
ANALYZE = "analyze"
DROP_LEFTOVER = "drop_invalid_leftover"
# Not executed: reported with the reason (over the size cap, too little disk, blocked).
RECOMMEND = "recommend"
DEFERRED = "deferred"
EXECUTED = (DROP_LEFTOVER, VACUUM_FULL, REINDEX, VACUUM_ANALYZE, ANALYZE)  # also the execution order
# What REINDEX CONCURRENTLY leaves behind when it is interrupted: <index>_ccnew[N] / <index>_ccold[N].
LEFTOVER_NAME = re.compile(r"_cc(new|old)[0-9]*$")
MIN_STATEMENT_TIMEOUT = 60.0


@dataclass(frozen=True)
class TableStats:
    """One row of include/sql/queries/maintenance_tables.sql."""

    oid: int
    schema_name: str
    table_name: str
    relkind: str
    heap_bytes: int
    toast_bytes: int
    index_bytes: int
    total_bytes: int
    live_tuples_estimate: int
    expected_bytes: int | None
    n_live_tup: int
    n_dead_tup: int
    n_mod_since_analyze: int
    last_vacuum: datetime | None
    last_analyze: datetime | None
    stats_missing: bool
    fillfactor: int = 100
    bloat_source: str = "estimate"  # or "pgstattuple_approx" (measured on the candidates when installed)

    @property
    def bloat_bytes(self) -> int | None:
        """Heap + TOAST beyond what the live rows need at the fillfactor (None: no statistics)."""
        if self.expected_bytes is None:
            return None
        return max(0, self.heap_bytes + self.toast_bytes - self.expected_bytes)

    @property
    def bloat_pct(self) -> float | None:
        data = self.heap_bytes + self.toast_bytes
        return None if self.bloat_bytes is None else (100.0 * self.bloat_bytes / data if data else 0.0)


@dataclass(frozen=True)
class IndexStats:
    """One row of include/sql/queries/maintenance_indexes.sql."""

    oid: int
    table_oid: int
    schema_name: str
    table_name: str
    index_name: str
    amname: str
    is_valid: bool
    is_unique: bool
    is_primary: bool
    backs_constraint: bool
    index_bytes: int
    expected_bytes: int | None
    idx_scan: int
    last_idx_scan: datetime | None
    is_exclusion: bool = False  # backs an EXCLUDE constraint: PostgreSQL cannot REINDEX it CONCURRENTLY
    duplicate_keys: str | None = None  # an invalid unique index's table breaks it: "2 keys ..." (see scan)

    @property
    def bloat_bytes(self) -> int | None:
        return None if self.expected_bytes is None else max(0, self.index_bytes - self.expected_bytes)

    @property
    def bloat_pct(self) -> float | None:
        bloat = self.bloat_bytes
        return None if bloat is None else (100.0 * bloat / self.index_bytes if self.index_bytes else 0.0)


@dataclass(frozen=True)
class Scan:
    """What the scan measured on a target at ``scanned_at``."""

    tables: list[TableStats]
    indexes: list[IndexStats]
    scanned_at: datetime
    blockers: list[str] = field(default_factory=list)
    free_bytes: int | None = None  # on the data directory's volume; None when not measurable from here
    disk_bytes: int | None = None
    duplicate_indexes: list[dict[str, Any]] = field(default_factory=list)
    stats_reset: datetime | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Action:
    """One object's planned action. ``bytes`` is its size at the scan (table: heap+TOAST+indexes)."""

    object_kind: str  # table | index
    schema_name: str
    name: str
    table_name: str
    action: str
    reason: str
    bytes: int
    bloat_bytes: int | None = None
    statement_timeout: float = MIN_STATEMENT_TIMEOUT
    planned_at: str | None = None  # ISO time of the scan; work another run finished after it is not redone

    @property
    def label(self) -> str:
        return f"{self.action} {self.schema_name}.{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Action:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Plan:
    """Executable actions in execution order; objects deliberately left alone (with reasons); actions that
    finished earlier for the same logical date (not redone)."""

    actions: list[Action] = field(default_factory=list)
    notes: list[Action] = field(default_factory=list)  # recommend / deferred
    done: list[Action] = field(default_factory=list)
    nothing: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"actions": [a.to_dict() for a in self.actions], "notes": [a.to_dict() for a in self.notes],
                "done": [a.to_dict() for a in self.done], "nothing": self.nothing}


def statement_timeout_for(size_bytes: int, policy: MaintenancePolicy) -> float:
    """60 s plus the object's size at ``rewrite_rate``, capped by the policy's statement_timeout."""
    return round(min(policy.statement_timeout, MIN_STATEMENT_TIMEOUT + size_bytes / policy.rewrite_rate), 1)


def _action(obj: TableStats | IndexStats, action: str, reason: str, policy: MaintenancePolicy) -> Action:
    if isinstance(obj, TableStats):
        size = obj.total_bytes
        return Action("table", obj.schema_name, obj.table_name, obj.table_name, action, reason, size,
                      obj.bloat_bytes, statement_timeout_for(size, policy))
    return Action("index", obj.schema_name, obj.index_name, obj.table_name, action, reason, obj.index_bytes,
                  obj.bloat_bytes, statement_timeout_for(obj.index_bytes, policy))


def light_action(table: TableStats, policy: MaintenancePolicy, now: datetime) -> tuple[str, str] | None:
    """VACUUM (ANALYZE) or ANALYZE with its reason when the table's activity passes the thresholds."""
    live = max(table.n_live_tup, table.live_tuples_estimate)
    dead_limit = max(policy.vacuum_min_dead, policy.vacuum_dead_pct / 100 * live)
    if table.n_dead_tup > 0 and table.n_dead_tup >= dead_limit:
        return VACUUM_ANALYZE, (f"{table.n_dead_tup} dead tuples >= {dead_limit:.0f} "
                                f"(max of {policy.vacuum_min_dead} and {policy.vacuum_dead_pct:g}% of {live} live)")
    mod_limit = max(policy.analyze_min_mod, policy.analyze_mod_pct / 100 * live)
    if table.n_mod_since_analyze > 0 and table.n_mod_since_analyze >= mod_limit:
        return ANALYZE, f"{table.n_mod_since_analyze} rows modified since the last analyze >= {mod_limit:.0f}"
    if table.stats_missing and table.heap_bytes > 0:
        return ANALYZE, "no column statistics: the planner and the bloat estimate have none to go by"
    age = timedelta(seconds=policy.stats_max_age)
    if table.last_analyze is not None and now - table.last_analyze > age and table.n_mod_since_analyze > 0:
        days = (now - table.last_analyze).total_seconds() / 86400
        return ANALYZE, (f"statistics {days:.1f} days old (> {policy.stats_max_age / 86400:g}) and "
                         f"{table.n_mod_since_analyze} rows modified since")
    return None


def _disk_problem(needed: int, scan: Scan, policy: MaintenancePolicy) -> str | None:
    """Why a rewrite needing ``needed`` more bytes does not fit, or None (also when disk is unknown)."""
    if scan.free_bytes is None or scan.disk_bytes is None:
        return None
    reserve = int(scan.disk_bytes * policy.disk_reserve_pct / 100)
    if scan.free_bytes - needed < reserve:
        return (f"a rewrite needs up to {human_bytes(needed)} free but only {human_bytes(scan.free_bytes)} is free "
                f"(keeping {policy.disk_reserve_pct:g}% = {human_bytes(reserve)} in reserve)")
    return None


DUPLICATES_ADVICE = ("remove or merge the duplicate rows (the next weekly run then rebuilds the index), or drop "
                     "the index if nothing needs it")


def _not_concurrently(index: IndexStats) -> str | None:
    """Why REINDEX CONCURRENTLY cannot rebuild the index, with what to do instead, or None."""
    if index.is_exclusion:
        return ("it backs an exclusion constraint, which PostgreSQL cannot REINDEX CONCURRENTLY, and a plain "
                "REINDEX blocks writes to the table while it runs: run REINDEX INDEX in a maintenance window")
    if index.duplicate_keys:
        return (f"its table has {index.duplicate_keys}, so REINDEX fails until they are gone and is not "
                f"planned: {DUPLICATES_ADVICE}")
    return None


def _disk_note(scan: Scan) -> str:
    return "free disk not measurable from here" if scan.free_bytes is None else f"{human_bytes(scan.free_bytes)} free"


def _over(bloat: int | None, pct: float | None, policy: MaintenancePolicy) -> bool:
    return bloat is not None and pct is not None and pct >= policy.bloat_pct and bloat >= policy.min_bytes


def _bloat_text(obj: TableStats | IndexStats, policy: MaintenancePolicy) -> str:
    source = getattr(obj, "bloat_source", "estimate")
    return (f"bloat {obj.bloat_pct:.0f}% ({human_bytes(obj.bloat_bytes)}, {source}) >= {policy.bloat_pct:g}% and "
            f">= {human_bytes(policy.min_bytes)}")


def is_candidate(table: TableStats, policy: MaintenancePolicy) -> bool:
    """Worth an exact measurement: the estimate is at least half-way to both thresholds, under the size cap."""
    pct, bloat = table.bloat_pct, table.bloat_bytes
    return (bloat is not None and pct is not None and pct >= policy.bloat_pct / 2 and bloat >= policy.min_bytes / 2
            and table.total_bytes <= policy.size_cap)


def plan_weekly(scan: Scan, policy: MaintenancePolicy, done: set[tuple[str, str, str]] = frozenset()) -> Plan:
    """VACUUM FULL / REINDEX CONCURRENTLY what is measurably bloated; VACUUM (ANALYZE) / ANALYZE the rest.

    :param done: ``(schema, name, action)`` finished earlier for the same logical date (not redone).
    """
    plan = Plan()
    rewritten: set[tuple[str, str]] = set()
    blocked = f"rewrites wait: {scan.blockers[0]}" + (f" (+{len(scan.blockers) - 1} more)"
                                                      if len(scan.blockers) > 1 else "") if scan.blockers else ""
    for table in scan.tables:
        if _over(table.bloat_bytes, table.bloat_pct, policy):
            problem = None
            if table.total_bytes > policy.size_cap:
                problem = (f"{_bloat_text(table, policy)}, but {human_bytes(table.total_bytes)} is over size_cap "
                           f"{human_bytes(policy.size_cap)}: VACUUM FULL would lock it for the whole rewrite; "
                           "use pg_repack or VACUUM FULL in a maintenance window")
            else:
                problem = _disk_problem(table.total_bytes - (table.bloat_bytes or 0), scan, policy)
            if problem:
                plan.notes.append(_action(table, RECOMMEND, problem, policy))
            elif blocked:
                plan.notes.append(_action(table, DEFERRED, f"{_bloat_text(table, policy)}; {blocked}", policy))
            else:
                rewritten.add((table.schema_name, table.table_name))
                plan.actions.append(_action(table, VACUUM_FULL, (
                    f"{_bloat_text(table, policy)}; {human_bytes(table.total_bytes)} under size_cap "
                    f"{human_bytes(policy.size_cap)}; {_disk_note(scan)}"), policy))
                continue
        _plan_light(plan, table, policy, scan)
    for index in scan.indexes:
        if not index.is_valid and LEFTOVER_NAME.search(index.index_name):
            plan.actions.append(_action(index, DROP_LEFTOVER, "invalid leftover of an interrupted REINDEX "
                                        "CONCURRENTLY: slows every write and is never used", policy))
        elif (index.schema_name, index.table_name) in rewritten:
            plan.nothing += 1  # rebuilt by its table's VACUUM FULL
        elif not index.is_valid or _over(index.bloat_bytes, index.bloat_pct, policy):
            reason = ("invalid (an interrupted CREATE INDEX CONCURRENTLY?): not used by queries, still written"
                      if not index.is_valid else _bloat_text(index, policy))
            problem = _not_concurrently(index) or _disk_problem(index.index_bytes, scan, policy)
            if problem:
                plan.notes.append(_action(index, RECOMMEND, f"{reason}; {problem}", policy))
            elif blocked:
                plan.notes.append(_action(index, DEFERRED, f"{reason}; {blocked}", policy))
            else:
                plan.actions.append(_action(index, REINDEX, f"{reason}; {_disk_note(scan)}", policy))
        else:
            plan.nothing += 1
    return _finish(plan, done)


def plan_daily(scan: Scan, policy: MaintenancePolicy, done: set[tuple[str, str, str]] = frozenset()) -> Plan:
    """VACUUM (ANALYZE) tables over the dead-tuple thresholds, ANALYZE those with stale statistics."""
    plan = Plan()
    for table in scan.tables:
        _plan_light(plan, table, policy, scan)
    return _finish(plan, done)


def _plan_light(plan: Plan, table: TableStats, policy: MaintenancePolicy, scan: Scan) -> None:
    """Add the table's VACUUM (ANALYZE) or ANALYZE when one is due, else count it as needing nothing."""
    light = light_action(table, policy, scan.scanned_at)
    if light:
        plan.actions.append(_action(table, light[0], light[1], policy))
    else:
        plan.nothing += 1


def _finish(plan: Plan, done: set[tuple[str, str, str]]) -> Plan:
    """Order the actions (leftovers, rewrites, vacuums, analyzes) and drop what this date did already."""
    plan.done = [a for a in plan.actions if (a.schema_name, a.name, a.action) in done]
    todo = [a for a in plan.actions if (a.schema_name, a.name, a.action) not in done]
    plan.actions = sorted(todo, key=lambda a: (EXECUTED.index(a.action), -(a.bloat_bytes or 0), a.schema_name,
                                               a.name))
    return plan


def unused_indexes(scan: Scan, policy: MaintenancePolicy) -> list[dict[str, Any]]:
    """Valid indexes with fewer than ``unused_index_scans`` scans since the statistics reset that enforce
    nothing (not unique, not primary, no constraint): candidates a DBA may drop. Report only."""
    rows = [{"schema": i.schema_name, "table": i.table_name, "index": i.index_name, "bytes": i.index_bytes,
             "scans": i.idx_scan, "last_scan": i.last_idx_scan.isoformat() if i.last_idx_scan else None}
            for i in scan.indexes
            if i.is_valid and i.idx_scan < policy.unused_index_scans and not (i.is_unique or i.is_primary
                                                                              or i.backs_constraint)]
    return sorted(rows, key=lambda r: -r["bytes"])


def format_plan(plan: Plan) -> str:
    """The plan as a fixed-width table for the task log."""
    rows = [("#", "action", "object", "size", "bloat", "timeout", "reason")]
    marks = ["#"] * len(plan.actions) + ["-"] * len(plan.notes) + ["done"] * len(plan.done)
    for n, (mark, a) in enumerate(zip(marks, plan.actions + plan.notes + plan.done), 1):
        reason = "finished earlier for this logical date: not redone" if mark == "done" else a.reason
        rows.append((str(n) if mark == "#" else mark, a.action, f"{a.schema_name}.{a.name}", human_bytes(a.bytes),
                     human_bytes(a.bloat_bytes), f"{a.statement_timeout:.0f}s" if mark == "#" else "", reason))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:6], widths)) + "  " + r[6] for r in rows]
    lines.append(f"({plan.nothing} other objects need nothing)")
    return "\n".join(lines)


def reclaimable_bytes(plan: Plan) -> int:
    """The bloat the plan's rewrites (VACUUM FULL, REINDEX) are expected to give back."""
    return sum(a.bloat_bytes or 0 for a in plan.actions if a.action in (VACUUM_FULL, REINDEX))


def plan_result(target: str, kind: str, logical_date: datetime, dry_run: bool, scan: Scan, plan: Plan,
                policy: MaintenancePolicy) -> dict[str, Any]:
    """What the plan task hands on (XCom ``plan``, ``dbops.maintenance_runs.plan``): the scan's figures, the
    plan, and (weekly) the unused and duplicate index reports."""
    return {
        "target": target, "kind": kind, "logical_date": logical_date.isoformat(), "dry_run": dry_run,
        "scan": {"tables": len(scan.tables), "indexes": len(scan.indexes), "seconds": round(scan.seconds, 3),
                 "blockers": scan.blockers, "free_bytes": scan.free_bytes, "disk_bytes": scan.disk_bytes,
                 "stats_reset": scan.stats_reset.isoformat() if scan.stats_reset else None},
        "plan": plan.to_dict(),
        "unused_indexes": unused_indexes(scan, policy) if kind == "weekly" else [],
        "duplicate_indexes": scan.duplicate_indexes if kind == "weekly" else [],
    }


def summary_line(result: dict[str, Any], plan: Plan) -> str:
    """The plan task's last line, verdict first: ``OK: weekly plan appdb: scanned ...``."""
    counts: dict[str, int] = {}
    for action in plan.actions:
        counts[action.action] = counts.get(action.action, 0) + 1
    scan = result["scan"]
    return (f"OK: {result['kind']} plan {result['target']}: scanned {scan['tables']} tables and {scan['indexes']} "
            f"indexes in {scan['seconds']:.2f} s; {len(plan.actions)} actions "
            f"({', '.join(f'{k} {v}' for k, v in counts.items()) or 'none'}), {len(plan.notes)} reported only, "
            f"{plan.nothing} need nothing, {len(scan['blockers'])} blockers, estimated reclaimable "
            f"{human_bytes(reclaimable_bytes(plan))}" + ("; dry run: stopping here" if result["dry_run"] else ""))
