"""Weekly maintenance of a MongoDB database: validate every collection, compact where storage is free,
report indexes never used (``$indexStats``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import OperationFailure

NOT_SUPPORTED = {59, 115}  # CommandNotFound, CommandNotSupported


# what mongod answers when it cannot validate in the background (an older server, a storage engine
# without checkpoints): BadValue, FailedToParse, IllegalOperation, InvalidOptions, CommandNotSupported
BACKGROUND_REFUSED = {2, 9, 20, 72, 115}


@dataclass
class Validation:
    """One collection's ``validate``: ``mode`` is how it ran (``background``, ``foreground``) or None when it
    did not run (``valid`` is then None and ``reason`` says why)."""

    collection: str
    valid: bool | None
    problems: list[str] = field(default_factory=list)
    mode: str | None = "background"
    reason: str | None = None


def validate(db, name: str, foreground: bool = False) -> Validation:
    """``validate`` one collection in the background (mongod 4.4+ on WiredTiger: intent locks only, reads and
    writes go on); its errors, corrupt records and index inconsistencies are the problems.

    A server that refuses the background option is asked for a foreground validate only when
    ``foreground`` allows it: that one holds an exclusive lock on the collection, blocking its reads and
    writes until done. Otherwise the collection is returned not validated, with the server's reason.
    """
    try:
        reply = db.command("validate", name, background=True)
        mode = "background"
    except OperationFailure as err:
        if err.code not in BACKGROUND_REFUSED:
            raise
        reason = f"the server refused a background validate: {(err.details or {}).get('errmsg') or err}"
        if not foreground:
            return Validation(name, None, mode=None, reason=f"{reason}; a foreground validate locks the collection "
                                                             "and maintenance.validate_foreground is false")
        reply = db.command("validate", name)
        mode = "foreground"
    problems = [*reply.get("errors", [])]
    for key in ("nInvalidDocuments", "corruptRecords", "missingIndexEntries", "extraIndexEntries"):
        value = reply.get(key)
        if value:
            problems.append(f"{key}: {value if isinstance(value, int) else len(value)}")
    return Validation(name, bool(reply.get("valid")) and not problems, problems, mode)


def validation_summary(results: list[Validation]) -> str:
    """The validate part of the maintenance summary; collections not validated are named with the reason."""
    invalid = sum(v.valid is False for v in results)
    ran = [v for v in results if v.mode is not None]
    modes = ", ".join(f"{sum(v.mode == mode for v in ran)} {mode}" for mode in ("background", "foreground")
                      if any(v.mode == mode for v in ran))
    text = f"{len(ran)} collections validated ({modes or 'none'}; {invalid} invalid)"
    skipped = [v for v in results if v.mode is None]
    if skipped:
        text += f", {len(skipped)} NOT VALIDATED: " + "; ".join(f"{v.collection} ({v.reason})" for v in skipped)
    return text


def free_bytes(stats: dict[str, Any]) -> int | None:
    """Bytes of the collection's file WiredTiger could give back (``collStats``), None when not reported."""
    value = stats.get("wiredTiger", {}).get("block-manager", {}).get("file bytes available for reuse")
    return int(value) if value is not None else None


def compact_due(stats: dict[str, Any], free_pct: float, min_bytes: int) -> str | None:
    """Why the collection should be compacted, or None (free storage below either threshold or not reported)."""
    free, storage = free_bytes(stats), int(stats.get("storageSize") or 0)
    if free is None or not storage:
        return None
    if free > min_bytes and 100.0 * free / storage > free_pct:
        return f"{free} of {storage} storage bytes free ({100.0 * free / storage:.0f} %)"
    return None


def compact(db, name: str) -> tuple[bool, int | None]:
    """``compact`` one collection: (done, bytes freed as the server reports them); (False, None) when the
    server does not support it."""
    try:
        reply = db.command("compact", name)
    except OperationFailure as err:
        if err.code in NOT_SUPPORTED:
            return False, None
        raise
    return True, reply.get("bytesFreed")


def unused_indexes(collection) -> list[str]:
    """Indexes (not ``_id_``) with no access since the server started counting (``$indexStats``)."""
    return sorted(stat["name"] for stat in collection.aggregate([{"$indexStats": {}}])
                  if stat["name"] != "_id_" and not stat.get("accesses", {}).get("ops"))
