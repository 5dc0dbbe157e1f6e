"""db_alert_silence on the real ops database: add, reuse on retry, end early, refuse bad Params unchanged.

One run goes through ``dag.test()`` (Params, the real task runner); the others call the operator with a
FAKE minimal context (the Params and the triggering user), as the task runner would.
"""

from __future__ import annotations

import uuid
from contextlib import closing
from types import SimpleNamespace

import pytest
from airflow.sdk.exceptions import AirflowFailException

from dbops.hooks.ops import OpsDatabaseHook
from dbops.operators.alerting import AlertSilenceOperator
from scripts.stack.paths import ROOT


def silences(comment: str) -> list[tuple]:
    with closing(OpsDatabaseHook(postgres_conn_id="dbops_state").get_conn()) as conn:
        return conn.execute("SELECT id, target, matchers, expires_at > now(), expires_at - starts_at, created_by "
                            "FROM dbops.alert_silences WHERE comment = %s ORDER BY id", (comment,)).fetchall()


def execute(user: str = "alice", **params) -> dict:
    context = {"params": params, "dag_run": SimpleNamespace(triggering_user_name=user)}
    return AlertSilenceOperator(task_id="silence").execute(context)


def test_silence_is_added_listed_and_ended(pg_server, capsys):
    from airflow.dag_processing.dagbag import DagBag

    comment = f"test: reindex of orders tonight ({uuid.uuid4().hex[:8]})"
    params = {"target": "appdb", "rule": "long_running_queries_.*", "labels": {"datname": "appdb"},
              "duration": "90min", "comment": comment}
    dag = DagBag(dag_folder=str(ROOT / "dags")).dags["db_alert_silence"]
    assert dag.test(run_conf=params).state == "success"
    ((silence_id, target, matchers, active, length, who),) = silences(comment)
    assert (target, matchers, active) == ("appdb", {"alertname": "long_running_queries_.*", "datname": "appdb"},
                                          True)
    assert length.total_seconds() == 90 * 60
    assert f"active: silence {silence_id}: target appdb, alertname=~'long_running_queries_.*'" in capsys.readouterr().out

    assert who == "dag_test"
    assert execute(user=who, **params)["added"] == silence_id
    assert len(silences(comment)) == 1, "the same request while the silence is active adds no second one"

    assert execute(target="all", end_silence_id=silence_id, duration="1h", comment="done early")["ended"] == silence_id
    assert silences(comment)[0][3] is False
    with pytest.raises(AirflowFailException, match=f"no active silence has id {silence_id}"):
        execute(target="all", end_silence_id=silence_id, duration="1h", comment="done twice")


@pytest.mark.parametrize(("params", "message"), [
    ({"target": "appdb", "rule": "long_running_(", "duration": "1h", "comment": "bad regex"},
     "is not a valid regular expression"),
    ({"target": "nosuchdb", "rule": "x", "duration": "1h", "comment": "bad target"}, "has no alerts"),
    ({"target": "appdb", "rule": "x", "duration": "forever", "comment": "bad duration"},
     "key 'duration': expected a duration"),
    ({"target": "appdb", "rule": "x", "duration": "60d", "comment": "too long"}, "at most 30d"),
    ({"target": "appdb", "rule": "x", "duration": "1h", "comment": "  "}, "say why in comment"),
    ({"target": "appdb", "duration": "1h", "comment": "no matcher"}, "at least one matcher"),
    ({"target": "appdb", "rule": "x", "duration": "1h", "comment": "bad key", "colour": "red"}, "unknown key"),
])
def test_bad_params_fail_clearly_and_change_nothing(pg_server, params, message):
    with pytest.raises(AirflowFailException, match=message):
        execute(**params)
    assert silences(params["comment"]) == []
