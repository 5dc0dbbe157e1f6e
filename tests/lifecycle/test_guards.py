"""What the check step refuses before a row moves, on the real PostgreSQL 18: row-level security hiding rows
from the role, user triggers the moves would fire, a NOT NULL archive column dropped from the table; and
naive timestamps compared as UTC whatever the database's time zone."""

from __future__ import annotations

from datetime import datetime, timezone

import psycopg
import pytest
from airflow.sdk.exceptions import AirflowFailException

from dbops.lifecycle.archive_table import ArchiveDrift, ensure_archive_table
from dbops.lifecycle.catalog import describe
from dbops.lifecycle.session import prepare
from scripts.stack.paths import PG_HOST, PG_PORT
from tests.lifecycle.conftest import APP_PASSWORD, DAYS, by_table, check, count, day, ops_rows, run, write_config

END = day(DAYS + 365)  # archive cutoff day(DAYS), retention cutoff day(DAYS + 365 - 700)
CHILDREN = """
        - {table: parents, time_column: created_at, archive_after: 365d, retention: 700d}
        - {table: children, time_column: created_at, archive_after: 365d, retention: 700d%s}"""


def rows(dsn: str) -> dict[str, int]:
    """Rows per table, base and archive (0 for an archive table that does not exist)."""
    with psycopg.connect(dsn) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] if conn.execute(
            "SELECT to_regclass(%s)", (t,)).fetchone()[0] else 0
            for t in ("parents", "children", "archive.parents", "archive.children")}


@pytest.mark.parametrize("owner", [False, True], ids=["not_owner", "owner_forced"])
@pytest.mark.parametrize("job", ["archive", "retention"])
def test_row_level_security_hiding_old_rows_fails_naming_table_policy_and_what_the_role_needs(
        lab, app_role, job, owner):
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        if owner:
            conn.execute(f"ALTER TABLE children OWNER TO {app_role}")
        conn.execute("ALTER TABLE children ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        conn.execute(f"CREATE POLICY \"recent only\" ON children USING (created_at >= '{day(600).isoformat()}')")
    before = rows(lab.dsn)
    with pytest.raises(AirflowFailException) as info:
        check(lab, job)
    message = str(info.value)
    assert (f"key 'lifecycle.policies[1].table': table 'children': public.children has row-level security (forced) "
            'with policies "recent only": they would hide rows from the ' in message)
    needs = (f'owns it but FORCE ROW LEVEL SECURITY applies the policies to the owner too: ALTER TABLE '
             f'"public"."children" NO FORCE ROW LEVEL SECURITY, or ALTER ROLE "{app_role}" BYPASSRLS' if owner else
             f"role '{app_role}' needs BYPASSRLS (ALTER ROLE \"{app_role}\" BYPASSRLS, as a superuser), or connect as "
             "the table's owner")
    assert needs in message and "nothing was changed" in message
    with pytest.raises(AirflowFailException, match=r"public.children has row-level security"):
        run(lab, job, END)
    assert rows(lab.dsn) == before  # nothing moved, nothing deleted
    assert ops_rows(lab.name) == []

    # the session itself: with row_security off a statement the policy would filter fails instead
    with psycopg.connect(f"host={PG_HOST} port={PG_PORT} user={app_role} password={APP_PASSWORD} "
                         f"dbname={lab.database}") as conn:
        prepare(conn)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security policy"):
            conn.execute("DELETE FROM children WHERE created_at < %s", (day(DAYS),))
    assert rows(lab.dsn) == before


def test_row_level_security_a_role_bypasses_is_no_obstacle(lab):
    """The lab's connection is a superuser (BYPASSRLS): a forced policy hides nothing from it."""
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE children ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY nothing ON children USING (false)")
    check(lab)
    run(lab, "archive", END)
    assert count(lab.dsn, "SELECT count(*) FROM children WHERE created_at < %s", (day(DAYS),)) == 0


AUDIT = """
CREATE TABLE audit (id bigserial PRIMARY KEY, tbl text NOT NULL, op text NOT NULL);
CREATE FUNCTION audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.audit (tbl, op) VALUES (TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, TG_OP); RETURN NULL; END $$;
"""


def trigger(dsn: str, name: str, event: str, table: str, enabled: bool = True) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not count(dsn, "SELECT count(*) FROM pg_proc WHERE proname = 'audit_row'"):
            conn.execute(AUDIT)
        conn.execute(f'CREATE TRIGGER "{name}" AFTER {event} ON {table} FOR EACH ROW EXECUTE FUNCTION audit_row()')
        if not enabled:
            conn.execute(f'ALTER TABLE {table} DISABLE TRIGGER "{name}"')


def test_a_delete_trigger_on_the_table_refuses_the_run_until_the_policy_says_triggers_fire(lab):
    write_config(lab, CHILDREN % "")
    trigger(lab.dsn, "children audit", "DELETE", "children")
    trigger(lab.dsn, "switched off", "DELETE", "children", enabled=False)  # does not fire: not named
    before = rows(lab.dsn)
    with pytest.raises(AirflowFailException) as info:
        check(lab)
    message = str(info.value)
    assert ("key 'lifecycle.policies[1].triggers': table 'children': DELETE trigger \"children audit\" on "
            "public.children (audit_row) would fire for every row of the archive move. Set `triggers: fire` in the "
            "policy to accept that; or disable them yourself for the run (ALTER TABLE … DISABLE TRIGGER, which "
            "needs ownership of the table") in message
    assert "switched off" not in message and "policies[0]" not in message  # parents: only internal FK triggers
    with pytest.raises(AirflowFailException, match="children audit"):
        run(lab, "archive", END)
    assert rows(lab.dsn) == before and count(lab.dsn, "SELECT count(*) FROM audit") == 0

    write_config(lab, CHILDREN % ", triggers: fire")
    moved = by_table(run(lab, "archive", END))["children"]["rows_moved"]
    assert moved > 0
    assert count(lab.dsn, "SELECT count(*) FROM audit WHERE tbl = 'public.children' AND op = 'DELETE'") == moved


def test_triggers_on_the_archive_table_insert_for_moves_delete_for_purges(lab):
    write_config(lab, CHILDREN % "")
    run(lab, "archive", day(400))  # creates archive.children (no trigger is copied)
    trigger(lab.dsn, "archived", "INSERT", "archive.children")
    trigger(lab.dsn, "forgotten", "DELETE", "archive.children")
    with pytest.raises(AirflowFailException) as archive:
        check(lab, "archive")
    assert 'INSERT trigger archived on archive.children (audit_row) would fire for every row of the archive move' \
        in str(archive.value) and "forgotten" not in str(archive.value)
    with pytest.raises(AirflowFailException) as retention:
        check(lab, "retention")
    assert ('DELETE trigger forgotten on archive.children (audit_row) would fire for every row of the retention '
            'purge' in str(retention.value)) and "archived on" not in str(retention.value)


def test_a_not_null_column_dropped_from_the_table_is_named_by_the_check_with_the_fix(lab):
    run(lab, "archive", day(400))  # archive.children has kind NOT NULL
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE children DROP COLUMN kind")
    before = rows(lab.dsn)
    fix = 'ALTER TABLE "archive"."children" ALTER COLUMN "kind" DROP NOT NULL'
    with pytest.raises(AirflowFailException) as info:
        check(lab)
    assert (f"key 'lifecycle.policies[1].table': table 'children': column 'kind' is NOT NULL in archive.children but "
            f"the table no longer has it (dropped?): the rows moved from now on would have no value for it. Let it "
            f"be NULL in the archive ({fix}; the rows already archived keep their values), then re-run"
            in str(info.value))
    with pytest.raises(AirflowFailException, match="column 'kind' is NOT NULL"):
        run(lab, "archive", day(500))
    assert rows(lab.dsn) == before
    with psycopg.connect(lab.dsn, autocommit=True) as conn:  # between the check and the move: the same words
        with pytest.raises(ArchiveDrift, match=r"public.children: column 'kind' is NOT NULL .* nothing moved"):
            ensure_archive_table(conn, describe(conn, "public", "children"), 1.0)
        conn.execute(fix)
    moved = by_table(run(lab, "archive", day(500)))["children"]["rows_moved"]
    assert moved == count(lab.dsn, "SELECT count(*) FROM archive.children WHERE kind IS NULL") > 0


def test_naive_timestamps_are_utc_whatever_the_database_time_zone(lab):
    with psycopg.connect(lab.dsn, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {lab.database} SET timezone = 'America/New_York'")  # UTC-4 in July
        conn.execute("CREATE TABLE naive (id int PRIMARY KEY, at timestamp without time zone NOT NULL)")
        conn.execute("CREATE INDEX ON naive (at)")
        conn.execute("INSERT INTO naive SELECT g, timestamp '2026-07-13 12:00' + g * interval '1 hour' "
                     "FROM generate_series(0, 24) g")  # hourly, 2026-07-13 12:00 .. 2026-07-14 12:00 (UTC)
    write_config(lab, "\n        - {table: naive, time_column: at, archive_after: 1d, retention: 2d}")
    moved = by_table(run(lab, "archive", datetime(2026, 7, 15, tzinfo=timezone.utc)))["naive"]
    assert moved["cutoff"] == "2026-07-14T00:00:00+00:00"
    assert moved["rows_moved"] == 12  # 12:00 .. 23:00 of the 13th, not the 8 older than 00:00 New York time
    assert count(lab.dsn, "SELECT count(*) FROM archive.naive WHERE at >= '2026-07-14'") == 0
    purged = by_table(run(lab, "retention", datetime(2026, 7, 16, 6, tzinfo=timezone.utc)))["naive"]
    assert purged["rows_purged"] == 12 + 6  # the archive's 12, and the table's 00:00 .. 05:00
    assert count(lab.dsn, "SELECT min(at) = '2026-07-14 06:00' FROM naive")
