"""Weekly maintenance of a MongoDB database: validate every collection, compact where storage is free,
report indexes never used (``$indexStats``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import OperationFailure

NOT_SUPPORTED = {59, 115}  # CommandNotFound, CommandNotSupported


@dataclass
class Validation:
    collection: str
    valid: bool
    problems: list[str] = field(default_factory=list)


def validate(db, name: str) -> Validation:
    """``validate`` one collection; its errors, corrupt records and index inconsistencies are the problems."""
    reply = db.command("validate", name)
    problems = [*reply.get("errors", [])]
    for key in ("nInvalidDocuments", "corruptRecords", "missingIndexEntries", "extraIndexEntries"):
        value = reply.get(key)
        if value:
            problems.append(f"{key}: {value if isinstance(value, int) else len(value)}")
    return Validation(name, bool(reply.get("valid")) and not problems, problems)


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
