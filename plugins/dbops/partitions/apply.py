"""One table's run: create (moving rows out of DEFAULT), finish pending detaches, retire, and pick up
retirements earlier runs left unfinished. Each step's outcome goes to ``record`` as it happens; a step
skipped or failed does not stop the others.

Before any of that, for every table (:func:`recover_moves`): a move out of DEFAULT an earlier run left half
done (its rows invisible through the parent) is finished when this run's plan creates that range, and
otherwise undone (rows back into DEFAULT, the empty table dropped)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

from dbops.partitions import retire
from dbops.partitions.create import create_partition, put_back
from dbops.partitions.locks import StepSkipped
from dbops.partitions.plan import CREATE, Step, TablePlan, subpartitioned
from dbops.partitions.tree import half_done_moves
from dbops.partitions.policy import PartitionsPolicy, TablePolicy

if TYPE_CHECKING:
    from airflow.sdk import Context

    from dbops.core.config import DbopsConfig
    from dbops.core.manifest import Manifest
    from dbops.partitions.tree import TableInspection

log = logging.getLogger(__name__)
Record = Callable[..., None]  # record(step, partition, status, rows=, bytes_=, seconds=, detail=)
Retirement = Callable[..., None]  # retirement(schema, name, lower, upper, status, **fields)


@dataclass
class Drop:
    """What dropping needs beyond the target connection: config, context, store, staging, tool timeout."""

    config: DbopsConfig
    target: str
    context: Context
    staging: Path
    timeout: float


def recover_moves(conn: psycopg.Connection, found: TableInspection, plan: TablePlan, policy: PartitionsPolicy,
                  record: Record, finish: bool = True) -> set[tuple[str, str]]:
    """Find the table's moves out of DEFAULT left half done (marked, unattached tables, read from the catalogs now)
    and finish each one this run's plan creates (``finish``), else put its rows back into DEFAULT and drop it.
    Either way a failure puts the rows back where possible. Return the (schema, name) of each, for
    :func:`apply_plan` to leave alone."""
    conn.autocommit = True
    planned = {(s.schema, s.name, s.lower, s.upper) for s in plan.steps if s.kind == CREATE}
    done = set()
    for half in half_done_moves(conn, found):
        step = Step(CREATE, found.table, half.schema, half.name, half.lower.isoformat(), half.upper.isoformat(),
                    half.rows, reason="a move out of DEFAULT an earlier run left half done")
        done.add((half.schema, half.name))
        finishing = finish and (step.schema, step.name, step.lower, step.upper) in planned
        log.warning("%s holds %d rows moved out of DEFAULT by a run that did not finish: not visible through the "
                    "parent; %s", half.qualified, half.rows,
                    "finishing the move" if finishing else "moving them back into DEFAULT")
        if finishing:
            _guard(f"{step.label} (a move left half done)", "create", step, record,
                   lambda s=step: _create(conn, found, s, policy, record, recovering=True))
        else:
            _guard(f"move back {step.schema}.{step.name} (a move left half done)", "move", step, record,
                   lambda s=step: _move_back(conn, found, s, policy, record))
    return done


def _move_back(conn: psycopg.Connection, found: TableInspection, step: Step, policy: PartitionsPolicy,
               record: Record) -> None:
    started = time.monotonic()
    back, dropped = put_back(conn, found, step, policy)
    record("move", f"{step.schema}.{step.name}", "done", rows=back, seconds=time.monotonic() - started,
           detail=f"a move out of DEFAULT left half done for [{step.lower}, {step.upper}) was undone: {back} rows "
                  "moved back into DEFAULT; " + ("the empty table was dropped" if dropped
                                                 else "the empty table stays (not dropped: its lock)"))


def apply_plan(conn: psycopg.Connection, found: TableInspection, plan: TablePlan, policy: PartitionsPolicy,
               table_policy: TablePolicy, drop: Drop, record: Record, retirement: Retirement,
               unfinished: list[dict[str, Any]], recovered: Collection[tuple[str, str]] = ()) -> None:
    """The plan's steps, then the retirements earlier runs left; ``recovered``: tables :func:`recover_moves`
    already dealt with in this run (their create step is not tried again)."""
    for step in plan.steps:
        if conn.closed or conn.broken:
            log.error("%s: the connection to the target was lost; the table's remaining steps are left to the "
                      "next try or run", found.table)
            return
        if (step.schema, step.name) in recovered:
            continue
        if step.kind == CREATE:
            _guard(step.label, "create", step, record, lambda s=step: _create(conn, found, s, policy, record))
        else:
            _guard(step.label, "detach", step, record,
                   lambda s=step: _retire(conn, found, s, policy, table_policy, drop, record, retirement))
    planned = {(s.schema, s.name) for s in plan.steps}
    for row in unfinished:
        if conn.closed or conn.broken:
            return
        step = Step("retire", found.table, row["partition_schema"], row["partition_name"],
                    row["lower_bound"].isoformat(), row["upper_bound"].isoformat(), expired=True)
        if row["status"] == "detaching":
            if (step.schema, step.name) not in planned:
                _guard(f"retire {step.schema}.{step.name} (detach started by an earlier run)", "detach", step,
                       record, lambda s=step: _resume_detach(conn, found, s, policy, table_policy, drop, record,
                                                             retirement))
            continue
        _guard(f"retire {step.schema}.{step.name} (detached by an earlier run)", _verb(table_policy), step, record,
               lambda s=step: _after_detach(conn, s, policy, table_policy, drop, record, retirement))


def _verb(table_policy: TablePolicy) -> str:
    return {"detach": "keep", "archive_schema": "archive", "drop": "drop"}[table_policy.retire]


def _guard(label: str, kind: str, step: Step, record: Record, work: Callable[[], None]) -> None:
    """Run one step; a skip or failure is recorded with its reason and the run goes on."""
    started = time.monotonic()
    name = f"{step.schema}.{step.name}"
    try:
        work()
    except StepSkipped as err:
        log.warning("%s skipped: %s", label, err)
        record(getattr(err, "step", kind), name, "skipped", seconds=time.monotonic() - started, detail=str(err))
    except Exception as err:  # recorded here; the task fails at the end, after the other steps and tables
        detail = " ".join(str(err).split()) or type(err).__name__
        log.error("%s failed: %s", label, detail)
        record(getattr(err, "step", kind), name, "failed", seconds=time.monotonic() - started, detail=detail)


def _create(conn: psycopg.Connection, found: TableInspection, step: Step, policy: PartitionsPolicy,
            record: Record, recovering: bool = False) -> None:
    created = create_partition(conn, found, step, policy)
    if created.existed:
        return
    log.info("created %s.%s [%s, %s): %d rows moved out of DEFAULT in %d batches, %.2f s", step.schema, step.name,
             step.lower, step.upper, created.rows_moved, created.batches, created.seconds)
    resumed = (f"; finished a move an earlier run left half done ({created.resumed} rows it had moved)"
               if recovering or created.resumed else "")
    record("create", f"{step.schema}.{step.name}", "done", rows=created.rows_moved + created.resumed,
           seconds=created.seconds, detail=f"[{step.lower}, {step.upper}); {created.rows_moved} rows moved out of "
                                           f"DEFAULT in {created.batches} batches{resumed}")


def _retire(conn: psycopg.Connection, found: TableInspection, step: Step, policy: PartitionsPolicy,
            table_policy: TablePolicy, drop: Drop, record: Record, retirement: Retirement) -> None:
    started = time.monotonic()
    if step.refused:  # decided by the plan, before anything is done to the partition
        raise _Failed("detach", f"not detached: {step.refused}")
    # recorded first: a task killed after the DETACH leaves a row the next run resumes
    retirement(step.schema, step.name, step.lower, step.upper, "detaching")
    detached = retire.detach(conn, found, step, policy)
    if detached.how != "already":
        record("finalize" if detached.how == "finalize" else "detach", f"{step.schema}.{step.name}", "done",
               bytes_=detached.bytes, seconds=time.monotonic() - started, detail=f"DETACH ({detached.how})")
    retirement(step.schema, step.name, step.lower, step.upper, "detached")
    if step.expired:  # else a pending detach finalized within retention: recorded, retired once it is due
        _after_detach(conn, step, policy, table_policy, drop, record, retirement)


def _resume_detach(conn: psycopg.Connection, found: TableInspection, step: Step, policy: PartitionsPolicy,
                   table_policy: TablePolicy, drop: Drop, record: Record, retirement: Retirement) -> None:
    """A detach an earlier run started and did not record the end of: retire the table if it is detached."""
    state = retire.attachment(conn, found, step.schema, step.name)
    if state == "absent":
        raise _Failed("detach", f"{step.schema}.{step.name} was being detached by an earlier run and no longer "
                                "exists; find out what removed it, then delete its row from "
                                "dbops.partition_retirements")
    if state != "detached":  # still attached or pending, yet not in this run's plan: a later run does it
        return
    retirement(step.schema, step.name, step.lower, step.upper, "detached")
    _after_detach(conn, step, policy, table_policy, drop, record, retirement)


class _Failed(Exception):
    """A step failed; ``step`` names which (drop, archive) for the record."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


def _after_detach(conn: psycopg.Connection, step: Step, policy: PartitionsPolicy, table_policy: TablePolicy,
                  drop: Drop, record: Record, retirement: Retirement) -> None:
    """Keep, archive or drop (after a verified dump) the detached table."""
    name = f"{step.schema}.{step.name}"
    started = time.monotonic()
    if table_policy.retire == "detach":
        record("keep", name, "done", detail="kept detached (retire: detach)")
        return
    if table_policy.retire == "archive_schema":
        try:
            retire.archive(conn, step.schema, step.name, table_policy.archive_schema, policy)
        except StepSkipped as err:
            err.step = "archive"
            raise
        retirement(step.schema, step.name, step.lower, step.upper, "archived")
        record("archive", name, "done", seconds=time.monotonic() - started,
               detail=f"moved to schema {table_policy.archive_schema}")
        return
    _drop(conn, step, policy, table_policy, drop, record, retirement, started)


def _drop(conn: psycopg.Connection, step: Step, policy: PartitionsPolicy, table_policy: TablePolicy, drop: Drop,
          record: Record, retirement: Retirement, started: float) -> None:
    name = f"{step.schema}.{step.name}"

    def refuse(why: str) -> None:
        retirement(step.schema, step.name, step.lower, step.upper, "drop_refused", error=why)
        raise _Failed("drop", f"not dropped, left detached: {why}")

    if retire.is_partitioned(conn, step.schema, step.name):  # refused before any dump: it cannot be proven
        refuse(subpartitioned(name))
    try:
        with retire.writes_blocked(conn, step.schema, step.name, policy):
            if table_policy.dump_before_drop:
                manifest, rows = _verified_dump(step, drop, refuse)
                freed = _checked_drop(conn, step, rows, drop, policy, refuse)
            else:
                manifest, rows = None, retire.count_rows(conn, step.schema, step.name, drop.timeout, policy)
                freed = retire.drop_locked(conn, step.schema, step.name, policy)
    except StepSkipped as err:
        err.step = "drop"
        raise
    if manifest is None:
        log.warning("dropped %s WITHOUT a dump (dump_before_drop is false): %d rows gone", name, rows)
        retirement(step.schema, step.name, step.lower, step.upper, "dropped", rows=rows, bytes=freed)
        record("drop", name, "done", rows=rows, bytes_=freed, seconds=time.monotonic() - started,
               detail="dropped without a dump (dump_before_drop: false)")
        return
    retirement(step.schema, step.name, step.lower, step.upper, "dropped", backup_id=manifest.backup_id, rows=rows,
               sha256=manifest.files[0].sha256, bytes=freed)
    record("drop", name, "done", rows=rows, bytes_=freed, seconds=time.monotonic() - started,
           detail=f"dropped after its dump {manifest.backup_id} ({rows} rows, sha256 {manifest.files[0].sha256[:12]}) "
                  "was restored and counted")


def _verified_dump(step: Step, drop: Drop, refuse: Callable[[str], None]) -> tuple[Manifest, int]:
    """Dump the detached table to the store and restore it into a scratch database; return (manifest, rows)."""
    from dbops.hooks.store import get_store
    from dbops.partitions.dump import dump_partition, verify_dump

    config = drop.config
    try:
        store = get_store(config.store_for(drop.target))
        manifest = dump_partition(config, drop.target, drop.context, store, step.schema, step.name,
                                  drop.staging / f"{step.schema}.{step.name}", drop.timeout)
    except Exception as err:
        refuse(f"the dump could not be stored: {' '.join(str(err).split()) or type(err).__name__}")
    rows = next(iter(manifest.tables.values()))
    try:
        outcome = verify_dump(config, drop.target, store, manifest, step.schema, drop.timeout)
    except Exception as err:
        outcome = {"ok": False, "error": " ".join(str(err).split()) or type(err).__name__}
    if not outcome["ok"]:
        refuse(f"the dump {manifest.backup_id} could not be verified by a restore: {outcome['error']}")
    log.info("dump %s of %s.%s verified: restored into a scratch database with %d rows, as the manifest says",
             manifest.backup_id, step.schema, step.name, rows)
    return manifest, rows


def _checked_drop(conn: psycopg.Connection, step: Step, rows: int, drop: Drop, policy: PartitionsPolicy,
                  refuse: Callable[[str], None]) -> int:
    """Drop under the SHARE lock held since before the dump; the row count gets the dump's time budget."""
    try:
        return retire.drop_verified(conn, step.schema, step.name, rows, drop.timeout, policy)
    except retire.DropRefused as err:
        refuse(str(err))
    return 0
