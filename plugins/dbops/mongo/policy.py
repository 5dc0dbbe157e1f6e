"""The ``mongo`` section of a MongoDB target: per-collection retention, weekly maintenance, and the largest
collection the backup reads in one snapshot transaction.

Backups and alerts of a MongoDB target use the common ``backup`` and ``alerts`` sections.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dbops.core.schema import ByteSize, Cron, Invalid, Seconds

ENGINES = ("postgres", "mongodb")
# What a MongoDB alert rule's source may run (dbops.mongo.rules): server commands, collStats of every
# collection, and the oplog's time window.
COMMAND_SOURCES = ("hello", "serverStatus", "currentOp", "replSetGetStatus", "dbStats", "collStats", "oplogWindow")
# The lists in the replies of the sources whose shape is known (serverStatus's varies): a rule's ``each``
# names one of them.
REPLY_LISTS = {"hello": ("hosts", "passives", "arbiters"), "currentOp": ("inprog",), "replSetGetStatus": ("members",),
               "dbStats": (), "collStats": ("collections",), "oplogWindow": ()}
RETENTION_METHODS = ("delete", "ttl")
POSTGRES_ONLY = ("lifecycle", "partitions", "pitr", "anonymize")  # sections of other capabilities


@dataclass(frozen=True)
class CollectionRetention:
    """Documents of ``collection`` whose ``time_field`` is older than ``retention`` go.

    ``filter`` narrows it to documents whose fields equal the given values (structured: field -> value,
    never an operator). ``method: delete`` purges in batches by ``_id`` ranges; ``ttl`` ensures a TTL index
    on ``time_field`` instead and lets the server expire the documents.
    """

    collection: str
    time_field: str
    retention: Seconds
    filter: dict[str, str] = field(default_factory=dict)
    method: str = "delete"


@dataclass(frozen=True)
class CommandSource:
    """Where a MongoDB alert rule's value comes from: a server command's reply, at the dotted path ``value``.

    ``each``: a list in the reply (e.g. ``members``): one sample per element, ``value`` and ``labels``
    (label -> path) inside the element. ``percent_of``: the value is 100 * value / the sum of these
    paths. ``behind_newest``: the value is how far it is behind the list's largest (in seconds for
    dates). ``ok_values``: the value is 0 when the reply's value is one of these, else 1. ``missing``:
    the value when the path is absent (default: no sample). A text value counts as 1 (present).
    ``replica_set``: the rule applies to replica sets only (skipped on a standalone server).
    """

    command: str
    value: str
    each: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    percent_of: list[str] = field(default_factory=list)
    behind_newest: bool = False
    ok_values: list[str] = field(default_factory=list)
    missing: float | None = None
    replica_set: bool = False


@dataclass(frozen=True)
class MongoRetentionPolicy:
    policies: list[CollectionRetention]
    schedule: Cron | None = "30 3 * * *"
    batch_size: int = 1000
    notify: list[str] = field(default_factory=lambda: ["log"])


@dataclass(frozen=True)
class MongoMaintenancePolicy:
    weekly: Cron | None = "0 1 * * 0"
    # compact a collection when its free storage is above both.
    compact_free_pct: float = 20.0
    compact_min_bytes: ByteSize = 10 * 1024**2
    # a server that refuses validate's background option is validated in the foreground (an exclusive lock
    # on each collection, blocking its reads and writes) only when true; otherwise reported not validated.
    validate_foreground: bool = False
    notify: list[str] = field(default_factory=lambda: ["log"])


@dataclass(frozen=True)
class MongoPolicy:
    retention: MongoRetentionPolicy | None = None
    maintenance: MongoMaintenancePolicy | None = None
    # larger collections are read outside a transaction (mongod aborts one after 60 s), the oplog replay
    # bringing them to the dump's end as mongodump --oplog does.
    snapshot_max_bytes: ByteSize = 256 * 1024**2


def mongo_sections(config, name: str) -> Iterator[tuple[str, Any]]:
    """``(target, section)`` for every MongoDB target of ``config`` whose ``mongo.<name>`` section is set."""
    for target, settings in config.targets.items():
        section = getattr(settings.mongo, name, None) if settings.engine == "mongodb" else None
        if section is not None:
            yield target, section


def check_engine(target, key: str) -> None:
    """The engine is known and the target's sections fit it (the ``mongo`` section only on MongoDB targets)."""
    if target.engine not in ENGINES:
        raise Invalid(f"{key}.engine", f"unknown engine {target.engine!r} (expected one of: {', '.join(ENGINES)})")
    if target.engine == "postgres":
        if target.mongo is not None:
            raise Invalid(f"{key}.mongo", "only for targets with engine: mongodb")
        return
    if target.maintenance is not None:
        raise Invalid(f"{key}.maintenance", "is for PostgreSQL targets; a MongoDB target's goes under mongo.maintenance")
    for section in POSTGRES_ONLY:
        if getattr(target, section, None) is not None:
            raise Invalid(f"{key}.{section}", "is for PostgreSQL targets only")
    if target.backup is not None and target.backup.tenant_tables:
        raise Invalid(f"{key}.backup.tenant_tables", "tenant exports are for PostgreSQL targets only")
    if target.mongo is not None:
        check_mongo(target.mongo, f"{key}.mongo")


def check_mongo(policy: MongoPolicy, key: str) -> None:
    """What the types cannot say: known methods, positive sizes, plain field names."""
    if policy.retention is not None:
        retention = policy.retention
        if retention.batch_size <= 0:
            raise Invalid(f"{key}.retention.batch_size", "must be greater than 0")
        for i, rule in enumerate(retention.policies):
            where = f"{key}.retention.policies[{i}]"
            if not rule.collection:
                raise Invalid(f"{where}.collection", "must name a collection")
            if not rule.time_field or rule.time_field.startswith("$"):
                raise Invalid(f"{where}.time_field", "must name a field (not an operator)")
            if rule.retention <= 0:
                raise Invalid(f"{where}.retention", "must be greater than 0 (e.g. 30d)")
            if rule.method not in RETENTION_METHODS:
                raise Invalid(f"{where}.method",
                              f"unknown method {rule.method!r} (expected one of: {', '.join(RETENTION_METHODS)})")
            for name in rule.filter:
                if not name or name.startswith("$"):
                    raise Invalid(f"{where}.filter", f"{name!r}: filter keys are field names, never operators")
            if rule.method == "ttl" and rule.filter:
                raise Invalid(f"{where}.filter", "a ttl policy expires whole collections by time; use method: delete")
    if policy.maintenance is not None:
        if not 0 < policy.maintenance.compact_free_pct < 100:
            raise Invalid(f"{key}.maintenance.compact_free_pct", "must be between 0 and 100")
