"""The lifecycle rules of the postgres_default pack on the real ops database, fed by real archive runs."""

from __future__ import annotations

import psycopg

from dbops.alerting.evaluate import evaluate
from dbops.alerting.rules import load_pack
from scripts.stack.postgres import libpq_conninfo
from tests.lifecycle.conftest import DAYS, HOSTILE_TABLE, day, run, write_config, yaml_policies

RULES = [r for r in load_pack("postgres_default") if r.name.startswith("lifecycle_")]


def samples(target: str) -> dict[tuple[str, str], tuple[float, bool]]:
    with psycopg.connect(libpq_conninfo("dbops_test")) as conn:
        result = evaluate(conn, RULES, params={"target": target})
    assert result.errors == []
    return {(s.rule, s.labels["table_name"]): (s.value, s.breaching) for s in result.samples}


def test_behind_after_a_run_stopped_by_its_time_budget_and_stale_after_two_cadences(lab):
    assert {r.name for r in RULES} == {"lifecycle_policy_stale", "lifecycle_archive_behind"}
    assert all(r.requires_policy == "lifecycle" for r in RULES)
    assert samples(lab.name) == {}  # never ran: nothing to say
    write_config(lab, yaml_policies(), time_budget="1ms")  # one batch per policy: it falls behind
    run(lab, "archive", day(DAYS + 365))
    behind = samples(lab.name)
    assert behind[("lifecycle_archive_behind", "children")][1] is True
    assert behind[("lifecycle_policy_stale", "children")] == (0.0, False)

    write_config(lab, yaml_policies())
    run(lab, "archive", day(DAYS + 365), run_id="caught_up")
    caught_up = samples(lab.name)
    assert {k: v for k, v in caught_up.items() if k[0] == "lifecycle_archive_behind"} == {
        ("lifecycle_archive_behind", t): (0.0, False) for t in ("children", "parents", HOSTILE_TABLE)}

    with psycopg.connect(libpq_conninfo("dbops_test"), autocommit=True) as ops:  # 70 days pass without a run
        ops.execute("UPDATE dbops.lifecycle_runs SET started_at = started_at - interval '70 days', "
                    "finished_at = finished_at - interval '70 days' WHERE target = %s", (lab.name,))
    stale = samples(lab.name)
    assert stale[("lifecycle_policy_stale", "children")][1] is True  # 70 days > 2 x 31 days
