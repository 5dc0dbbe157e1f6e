"""The maintenance planner: one action per object with its reason, from measured figures only."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from dbops.maintenance.policy import MaintenancePolicy
from dbops.maintenance.plan import (
    ANALYZE,
    DEFERRED,
    DROP_LEFTOVER,
    RECOMMEND,
    REINDEX,
    VACUUM_ANALYZE,
    VACUUM_FULL,
    Action,
    IndexStats,
    Scan,
    TableStats,
    format_plan,
    plan_daily,
    plan_weekly,
    statement_timeout_for,
    unused_indexes,
)

MB = 2**20
NOW = datetime(2026, 11, 22, 1, 0, tzinfo=timezone.utc)
POLICY = MaintenancePolicy(bloat_pct=30, min_bytes=10 * MB, size_cap=1024 * MB, disk_reserve_pct=10,
                           statement_timeout=3600, rewrite_rate=8 * MB)


def table(name: str = "t", heap: int = 100 * MB, expected: int | None = 100 * MB, indexes: int = 0,
          dead: int = 0, live: int = 100_000, mods: int = 0, analyzed: datetime | None = NOW,
          schema: str = "public", stats_missing: bool = False) -> TableStats:
    return TableStats(oid=1, schema_name=schema, table_name=name, relkind="r", heap_bytes=heap, toast_bytes=0,
                      index_bytes=indexes, total_bytes=heap + indexes, live_tuples_estimate=live,
                      expected_bytes=expected, n_live_tup=live, n_dead_tup=dead, n_mod_since_analyze=mods,
                      last_vacuum=None, last_analyze=analyzed, stats_missing=stats_missing)


def index(name: str = "t_idx", table_name: str = "t", size: int = 50 * MB, expected: int | None = 50 * MB,
          valid: bool = True, scans: int = 10, unique: bool = False, primary: bool = False,
          constraint: bool = False, exclusion: bool = False, duplicates: str | None = None) -> IndexStats:
    return IndexStats(oid=2, table_oid=1, schema_name="public", table_name=table_name, index_name=name,
                      amname="btree", is_valid=valid, is_unique=unique, is_primary=primary,
                      backs_constraint=constraint, index_bytes=size, expected_bytes=expected, idx_scan=scans,
                      last_idx_scan=None, is_exclusion=exclusion, duplicate_keys=duplicates)


def scan(tables=(), indexes=(), blockers=(), free: int | None = None, disk: int | None = None) -> Scan:
    return Scan(tables=list(tables), indexes=list(indexes), scanned_at=NOW, blockers=list(blockers),
                free_bytes=free, disk_bytes=disk)


def only(plan) -> Action:
    assert len(plan.actions) == 1, plan.actions
    return plan.actions[0]


def test_bloated_table_under_the_cap_gets_vacuum_full_with_its_reason():
    action = only(plan_weekly(scan([table(heap=100 * MB, expected=40 * MB)]), POLICY))
    assert action.action == VACUUM_FULL and action.bloat_bytes == 60 * MB
    assert "bloat 60% (60.0 MiB, estimate) >= 30%" in action.reason and "under size_cap" in action.reason
    assert "free disk not measurable" in action.reason


@pytest.mark.parametrize(("heap", "expected", "rewrite"), [
    (100 * MB, 75 * MB, False),  # 25 MB but 25 %: under bloat_pct
    (12 * MB, 4 * MB, False),    # 67 % but 8 MB: under min_bytes
    (20 * MB, 5 * MB, True),     # 75 % and 15 MB: both over
])
def test_bloat_must_pass_both_percentage_and_bytes(heap, expected, rewrite):
    plan = plan_weekly(scan([table(heap=heap, expected=expected)]), POLICY)
    assert [a.action for a in plan.actions] == ([VACUUM_FULL] if rewrite else [])
    assert plan.nothing == (0 if rewrite else 1)


def test_table_over_the_size_cap_is_reported_not_locked():
    plan = plan_weekly(scan([table(heap=2000 * MB, expected=500 * MB)]), POLICY)
    assert plan.actions == []
    assert plan.notes[0].action == RECOMMEND and "over size_cap" in plan.notes[0].reason
    assert "pg_repack" in plan.notes[0].reason


def test_over_the_cap_with_dead_tuples_still_gets_the_light_vacuum():
    plan = plan_weekly(scan([table(heap=2000 * MB, expected=500 * MB, dead=50_000)]), POLICY)
    assert [a.action for a in plan.actions] == [VACUUM_ANALYZE] and plan.notes[0].action == RECOMMEND


def test_rewrite_needs_free_disk_beyond_the_reserve():
    bloated = table(heap=100 * MB, expected=40 * MB)
    tight = plan_weekly(scan([bloated], free=100 * MB, disk=1000 * MB), POLICY)  # 100 - 40 < 100 reserve
    assert tight.actions == [] and tight.notes[0].action == RECOMMEND and "reserve" in tight.notes[0].reason
    roomy = plan_weekly(scan([bloated], free=500 * MB, disk=1000 * MB), POLICY)
    assert only(roomy).action == VACUUM_FULL and "500.0 MiB free" in only(roomy).reason


def test_blockers_defer_rewrites_but_not_light_vacuums():
    plan = plan_weekly(scan([table("a", heap=100 * MB, expected=40 * MB), table("b", dead=50_000)],
                            blockers=["long transaction: pid 42 in transaction for 3600 s"]), POLICY)
    assert [a.action for a in plan.actions] == [VACUUM_ANALYZE]
    assert plan.notes[0].action == DEFERRED and "pid 42" in plan.notes[0].reason


def test_no_statistics_means_analyze_not_a_guess():
    action = only(plan_weekly(scan([table(expected=None, stats_missing=True, analyzed=None)]), POLICY))
    assert action.action == ANALYZE and "no column statistics" in action.reason


def test_indexes_of_a_rewritten_table_are_not_reindexed_too():
    plan = plan_weekly(scan([table(heap=100 * MB, expected=40 * MB)],
                            [index(size=100 * MB, expected=20 * MB)]), POLICY)
    assert [a.action for a in plan.actions] == [VACUUM_FULL] and plan.nothing == 1


def test_bloated_or_invalid_index_gets_reindex_concurrently_and_leftovers_are_dropped():
    plan = plan_weekly(scan([table()], [
        index("bloated_idx", size=100 * MB, expected=20 * MB),
        index("broken_idx", valid=False),
        index("t_idx_ccnew", valid=False),
        index("t_idx_ccold1", valid=False),
        index("fine_idx"),
    ]), POLICY)
    assert [(a.action, a.name) for a in plan.actions] == [
        (DROP_LEFTOVER, "t_idx_ccnew"), (DROP_LEFTOVER, "t_idx_ccold1"),
        (REINDEX, "bloated_idx"), (REINDEX, "broken_idx")]
    assert "invalid" in plan.actions[3].reason and plan.nothing == 2


def test_exclusion_constraint_index_is_reported_not_reindexed_concurrently():
    plan = plan_weekly(scan([table()], [
        index("booking_excl", size=100 * MB, expected=20 * MB, constraint=True, exclusion=True),
        index("broken_excl", valid=False, constraint=True, exclusion=True),
    ]), POLICY)
    assert plan.actions == []
    assert [(n.action, n.name) for n in plan.notes] == [(RECOMMEND, "booking_excl"), (RECOMMEND, "broken_excl")]
    assert all("cannot REINDEX CONCURRENTLY" in n.reason and "REINDEX INDEX in a maintenance window" in n.reason
               for n in plan.notes)


def test_invalid_unique_index_with_duplicates_is_not_planned_until_they_are_gone():
    duplicated = index("users_email", valid=False, unique=True, duplicates="1 duplicated key: (a@x) 2 rows")
    plan = plan_weekly(scan([table()], [duplicated]), POLICY)
    assert plan.actions == []
    [note] = plan.notes
    assert note.action == RECOMMEND
    assert "1 duplicated key: (a@x) 2 rows" in note.reason and "remove or merge the duplicate rows" in note.reason
    cleaned = plan_weekly(scan([table()], [index("users_email", valid=False, unique=True)]), POLICY)
    assert [(a.action, a.name) for a in cleaned.actions] == [(REINDEX, "users_email")]


def test_rewrites_run_leftovers_first_then_biggest_bloat_first():
    plan = plan_weekly(scan([table("small", heap=100 * MB, expected=60 * MB),
                             table("big", heap=100 * MB, expected=10 * MB),
                             table("dead", dead=90_000)],
                            [index("x_ccnew", table_name="dead", valid=False)]), POLICY)
    assert [a.name for a in plan.actions] == ["x_ccnew", "big", "small", "dead"]


def test_work_done_earlier_for_the_same_logical_date_is_not_planned_again():
    bloated = table(heap=100 * MB, expected=40 * MB)
    plan = plan_weekly(scan([bloated]), POLICY, done={("public", "t", VACUUM_FULL)})
    assert plan.actions == [] and [a.action for a in plan.done] == [VACUUM_FULL]
    assert "finished earlier" in format_plan(plan)


def test_daily_plan_vacuums_dead_tuples_and_analyzes_stale_statistics():
    policy = replace(POLICY, vacuum_dead_pct=10, vacuum_min_dead=1000, analyze_mod_pct=10, analyze_min_mod=1000,
                     stats_max_age=7 * 86400)
    plan = plan_daily(scan([
        table("dead", dead=20_000),                                    # 20 % dead
        table("few_dead", dead=5_000),                                 # 5 %: under 10 %
        table("tiny", live=100, dead=500),                             # 500 % but under 1000 rows
        table("modified", mods=30_000),                                # 30 % modified since analyze
        table("old_stats", mods=10, analyzed=NOW - timedelta(days=10)),
        table("old_quiet", mods=0, analyzed=NOW - timedelta(days=10)),
        table("bloated", heap=100 * MB, expected=10 * MB),             # daily never rewrites
    ]), policy)
    assert {a.name: a.action for a in plan.actions} == {"dead": VACUUM_ANALYZE, "modified": ANALYZE,
                                                        "old_stats": ANALYZE}
    assert "20000 dead tuples" in plan.actions[0].reason
    assert plan.nothing == 4


def test_statement_timeout_grows_with_size_up_to_the_cap():
    assert statement_timeout_for(0, POLICY) == 60
    assert statement_timeout_for(800 * MB, POLICY) == 160
    assert statement_timeout_for(10**12, POLICY) == 3600


def test_unused_index_report_leaves_out_what_enforces_something():
    rows = unused_indexes(scan([], [index("unused", scans=0), index("used", scans=5),
                                    index("pk", scans=0, primary=True), index("uniq", scans=0, unique=True),
                                    index("excl", scans=0, constraint=True),
                                    index("broken", scans=0, valid=False)]), POLICY)
    assert [r["index"] for r in rows] == ["unused"]


def test_plan_survives_a_round_trip_through_xcom():
    plan = plan_weekly(scan([table(heap=100 * MB, expected=40 * MB)]), POLICY)
    data = plan.to_dict()
    assert [Action.from_dict(a) for a in data["actions"]] == plan.actions


def test_exact_measurement_candidates_are_half_way_to_both_thresholds_and_under_the_cap():
    from dbops.maintenance.plan import is_candidate

    assert is_candidate(table(heap=100 * MB, expected=80 * MB), POLICY)       # 20 %, 20 MB
    assert not is_candidate(table(heap=100 * MB, expected=90 * MB), POLICY)   # 10 %: under 15 %
    assert not is_candidate(table(heap=6 * MB, expected=2 * MB), POLICY)      # 67 % but 4 MB: under 5 MB
    assert not is_candidate(table(heap=2000 * MB, expected=100 * MB), POLICY)  # over the cap
    assert not is_candidate(table(expected=None, stats_missing=True), POLICY)


@pytest.mark.parametrize(("setting", "message"), [
    ("bloat_pct: 0", "key 'maintenance.bloat_pct': must be between 0 and 100"),
    ("lock_timeout: 2h", "key 'maintenance.lock_timeout': must be shorter than statement_timeout"),
    ("rewrite_rate: 0MB", "key 'maintenance.rewrite_rate': must be greater than 0"),
    ("lock_retries: -1", "key 'maintenance.lock_retries': must not be negative"),
    ("notify: [pager]", "key 'maintenance.notify[0]': unknown notifier 'pager'"),
])
def test_bad_maintenance_settings_name_target_and_key(tmp_path, setting, message):
    from dbops.core.config import parse_config
    from dbops.core.schema import ConfigError

    text = f"ops_conn_id: ops\nstorage: {{}}\ntargets:\n  db1:\n    conn_id: pg\n    maintenance: {{{setting}}}\n"
    with pytest.raises(ConfigError, match="target 'db1': " + message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(text, tmp_path / "dbops.yaml")
