"""mongo_retention__: purges by the run's cutoff, in batches, recorded in the ops database; TTL indexes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from dbops.operators.mongo import MongoRetentionOperator
from tests.backup.conftest import context
from tests.mongo.conftest import make_target, ops

DAY = timedelta(days=1)
RUN = datetime(2026, 11, 20, 3, 30, tzinfo=timezone.utc)  # the first of three past days
POLICIES = """    mongo:
      retention:
        batch_size: 7
        policies:
          - {collection: events, time_field: at, retention: 30d}
          - {collection: chat.v2, time_field: last, retention: 180d, filter: {channel: sms}}
          - {collection: sessions, time_field: seen, retention: 1d, method: ttl}
"""


@pytest.fixture
def retention_target(monkeypatch, tmp_path, stack_mongo, pg_server):
    from scripts.stack.paths import MONGO_PORT

    facts = make_target(monkeypatch, tmp_path, MONGO_PORT, sections=POLICIES)
    yield facts
    facts.client.drop_database(facts.database)
    facts.client.close()


def purge(name: str, day: datetime, run_id: str | None = None) -> dict:
    return MongoRetentionOperator(task_id="purge", target=name).execute(
        context(day, run_id=run_id or f"backfill__{day:%Y%m%d}", run_type="backfill"))


def logged(name: str) -> list[tuple]:
    return ops().get_records("SELECT run_id, collection, deleted, cutoff FROM dbops.mongo_retention_log "
                             "WHERE target = %s AND method = 'delete' ORDER BY run_id, collection", parameters=(name,))


def test_unreachable_server_is_transient_and_deletes_nothing(monkeypatch, tmp_path, stack_mongo, pg_server):
    """Guarantee: a server that does not answer is retried (transient), never a green task."""
    from tests.conftest import free_port

    facts = make_target(monkeypatch, tmp_path, free_port(), sections=POLICIES)
    with pytest.raises(AirflowException) as exc:
        purge(facts.name, RUN)
    assert not isinstance(exc.value, AirflowFailException)
    assert logged(facts.name) == []


def test_backfill_over_three_past_days_deletes_each_days_due_documents_once(retention_target):
    """Guarantee: the cutoff comes from the run's date: each of three backfilled days deletes the documents
    that became due that day (not all due by today), a re-run deletes nothing more, the filter holds,
    and each run's figures are in the ops database."""
    db = retention_target.client[retention_target.database]
    cutoffs = [RUN + k * DAY - timedelta(days=30) for k in range(3)]
    # 10 documents due before the first cutoff, 9 between the first and second, 8 before the third,
    # 12 never due in these runs (newer than the third cutoff).
    ages = ([cutoffs[0] - timedelta(hours=h + 1) for h in range(10)] + [cutoffs[1] - timedelta(hours=h + 1) for h in range(9)]
            + [cutoffs[2] - timedelta(hours=h + 1) for h in range(8)] + [cutoffs[2] + timedelta(hours=h) for h in range(12)])
    db.events.insert_many([{"_id": i, "at": at} for i, at in enumerate(ages)])
    old = RUN - timedelta(days=400)
    db["chat.v2"].insert_many([{"last": old, "channel": channel} for channel in ("sms", "web", "sms", "app")])
    deleted = [purge(retention_target.name, RUN + k * DAY)["deleted"] for k in range(3)]
    assert deleted == [10 + 2, 9, 8]  # the first day also purges the two old sms conversations
    assert db.events.count_documents({}) == 12
    assert sorted(d["channel"] for d in db["chat.v2"].find()) == ["app", "web"]
    assert purge(retention_target.name, RUN + DAY)["deleted"] == 0  # re-running the second day
    rows = logged(retention_target.name)
    assert [(run, coll, n) for run, coll, n, _ in rows if coll == "events"] == [
        ("backfill__20261120", "events", 10), ("backfill__20261121", "events", 9), ("backfill__20261122", "events", 8)]
    assert {cutoff for _, coll, _, cutoff in rows if coll == "events"} == set(cutoffs)
    batches = ops().get_first("SELECT batches FROM dbops.mongo_retention_log WHERE target = %s AND run_id = %s "
                              "AND collection = 'events'", parameters=(retention_target.name, "backfill__20261120"))
    assert batches[0] == 2  # 10 due documents in batches of at most 7


def test_ttl_policy_creates_its_index_once(retention_target):
    """Guarantee: a ttl policy ensures one TTL index with the policy's expiry; a re-run changes nothing."""
    first = purge(retention_target.name, RUN)["policies"]["sessions (seen)"]["detail"]
    again = purge(retention_target.name, RUN + DAY)["policies"]["sessions (seen)"]["detail"]
    assert "created" in first and "already expires after 86400 s" in again
    indexes = [i for i in retention_target.client[retention_target.database].sessions.list_indexes()
               if i.get("expireAfterSeconds") is not None]
    assert [(i["name"], i["expireAfterSeconds"]) for i in indexes] == [("dbops_ttl_seen", 86400)]


def test_a_time_field_that_is_not_a_date_is_warned_about_named_and_recorded(retention_target, capsys):
    """Guarantee: a policy whose time field holds strings or numbers deletes nothing (the cutoff is a date)
    and is no longer a silent "0 deleted, OK": the summary says WARNING naming the collection and field,
    the types are counted, and the warning is in the run's row of dbops.mongo_retention_log. A policy
    whose old dates are simply not due yet (``chat.v2``, dates only) gets no warning."""
    db = retention_target.client[retention_target.database]
    old = RUN - timedelta(days=400)
    db.events.insert_many([{"at": old.isoformat()} for _ in range(5)] + [{"at": old.timestamp()} for _ in range(3)]
                          + [{"at": RUN}, {"other": 1}])
    db["chat.v2"].insert_one({"last": RUN, "channel": "sms"})
    capsys.readouterr()
    result = purge(retention_target.name, RUN)
    events = result["policies"]["events (at)"]
    assert result["deleted"] == 0 and events["deleted"] == 0
    assert events["warning"].startswith("time field at is not a date in 8 of the first 1000 documents (double: 3, "
                                        "string: 5)")
    assert "warning" not in result["policies"]['chat.v2 (last {"channel": "sms"})']
    log = capsys.readouterr().out
    assert "retention WARNING" in log and "1 policies deleted nothing and their time field is not a date in some " \
                                          "documents: events (at)" in log
    assert ops().get_records("SELECT collection, deleted, detail FROM dbops.mongo_retention_log WHERE target = %s "
                             "AND method = 'delete'", parameters=(retention_target.name,)) == [
        ("events", 0, events["warning"])]
    assert db.events.count_documents({}) == 10  # nothing deleted


def test_a_policy_with_date_fields_and_nothing_due_is_ok_without_warning(retention_target, capsys):
    """Guarantee: the check only speaks when the field is not a date: dates newer than the cutoff -> OK."""
    retention_target.client[retention_target.database].events.insert_many([{"at": RUN} for _ in range(4)])
    capsys.readouterr()
    result = purge(retention_target.name, RUN)
    assert result["deleted"] == 0 and not any("warning" in r for r in result["policies"].values())
    assert "retention OK" in capsys.readouterr().out
