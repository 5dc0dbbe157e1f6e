"""Retention of MongoDB collections: purges in bounded batches by ``_id`` ranges, or a TTL index per policy.

A purge deletes the documents whose time field is older than the cutoff (and that match the policy's
filter) in batches of at most ``batch_size`` ``_id`` values, each delete acknowledged by a majority
(``w: majority``); the cutoff comes from the run, so a re-run deletes nothing more and a backfill over
past days deletes each day's due documents on that day's run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from airflow.sdk.exceptions import AirflowFailException
from pymongo import WriteConcern

from dbops.mongo.policy import CollectionRetention

MISTYPED_SAMPLE = 1000  # documents read to look for a time field that is not a date


@dataclass
class Purge:
    deleted: int = 0
    batches: int = 0


def policy_key(policy: CollectionRetention) -> str:
    """How a policy is named in logs and the ops database: its time field and filter."""
    return f"{policy.time_field} {json.dumps(policy.filter, sort_keys=True)}" if policy.filter else policy.time_field


def due_filter(policy: CollectionRetention, cutoff: datetime) -> dict[str, Any]:
    """The documents a policy deletes: its filter's values, compared as values, and older than ``cutoff``."""
    return {"$and": [{name: {"$eq": value}} for name, value in sorted(policy.filter.items())]
            + [{policy.time_field: {"$lt": cutoff}}]}


def purge(collection, due: dict[str, Any], batch_size: int,
          on_batch: Callable[[int, int], None] = lambda deleted, batches: None) -> Purge:
    """Delete the ``due`` documents in batches of ``_id`` ranges; ``on_batch(deleted, batch)`` after each."""
    majority = collection.with_options(write_concern=WriteConcern("majority"))
    done = Purge()
    while True:
        ids = [doc["_id"] for doc in collection.find(due, {"_id": 1}).sort("_id", 1).limit(batch_size)]
        if not ids:
            return done
        deleted = majority.delete_many({"$and": [due, {"_id": {"$gte": ids[0], "$lte": ids[-1]}}]}).deleted_count
        if deleted == 0:  # _id values of several BSON types: a range compares within one type only
            deleted = majority.delete_many({"$and": [due, {"_id": {"$in": ids}}]}).deleted_count
        done.deleted += deleted
        done.batches += 1
        on_batch(deleted, done.batches)


def mistyped_time_field(collection, policy: CollectionRetention, sample: int = MISTYPED_SAMPLE) -> str | None:
    """What to warn about when the policy's time field holds other BSON types than dates (absent, null and
    arrays aside) among the collection's first ``sample`` documents (natural order): the cutoff is a date
    and a query compares dates with dates only, so such documents are never due. None when none is found."""
    found = collection.aggregate([{"$limit": sample},
                                  {"$group": {"_id": {"$type": f"${policy.time_field}"}, "n": {"$sum": 1}}}])
    types = {row["_id"]: row["n"] for row in found if row["_id"] not in ("date", "missing", "null", "array")}
    if not types:
        return None
    return (f"time field {policy.time_field} is not a date in {sum(types.values())} of the first {sample} documents "
            f"({', '.join(f'{name}: {n}' for name, n in sorted(types.items()))}): those are never due (the cutoff is "
            "a date); store dates there, or point time_field at a date field")


def ensure_ttl(collection, policy: CollectionRetention) -> str:
    """A TTL index on the policy's time field expiring after its retention; say what was done."""
    seconds = int(policy.retention)
    for index in collection.list_indexes():
        if dict(index["key"]) != {policy.time_field: 1}:
            continue
        if index.get("expireAfterSeconds") == seconds:
            return f"TTL index {index['name']} already expires after {seconds} s"
        if "expireAfterSeconds" not in index:
            raise AirflowFailException(
                f"{collection.name}: index {index['name']} on {policy.time_field} has no TTL; a TTL index cannot "
                "be added beside it: drop it, or use method: delete for this policy")
        collection.database.command("collMod", collection.name,
                                    index={"keyPattern": {policy.time_field: 1}, "expireAfterSeconds": seconds})
        return f"TTL index {index['name']} changed from {index['expireAfterSeconds']} s to {seconds} s"
    name = collection.create_index([(policy.time_field, 1)], expireAfterSeconds=seconds,
                                   name=f"dbops_ttl_{policy.time_field}")
    return f"TTL index {name} created: the server expires documents after {seconds} s"


def record(conn, target: str, run_id: str, logical_date: datetime, collection: str, policy: CollectionRetention,
           cutoff: datetime | None, deleted: int, batches: int, detail: str | None) -> None:
    """Add a policy's figures to its run's row in ``dbops.mongo_retention_log``."""
    conn.execute(
        """
        INSERT INTO dbops.mongo_retention_log (target, run_id, logical_date, collection, policy, method, cutoff,
                                               deleted, batches, detail)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (target, run_id, collection, policy) DO UPDATE
        SET deleted = dbops.mongo_retention_log.deleted + EXCLUDED.deleted,
            batches = dbops.mongo_retention_log.batches + EXCLUDED.batches,
            detail = coalesce(EXCLUDED.detail, dbops.mongo_retention_log.detail), updated_at = now()
        """,
        (target, run_id, logical_date, collection, policy_key(policy), policy.method, cutoff, deleted, batches,
         detail))
