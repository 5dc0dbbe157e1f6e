"""The demo target's lifecycle policies (include/config/dbops.yaml) fit the demo schema, and the demo data
(scripts/demo_data.py) has rows on both sides of every cutoff."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import psycopg
from psycopg import sql

from dbops.core.config import DEFAULT_CONFIG_PATH, load_config
from dbops.lifecycle.batches import Scope
from dbops.lifecycle.catalog import check_policies
from scripts import demo_data
from scripts.stack.postgres import libpq_conninfo

NOW = dt.date(2026, 12, 1)


def count(conn: psycopg.Connection, scope: Scope) -> int:
    where, params = scope.where()
    return conn.execute(sql.SQL("SELECT count(*) FROM {} s WHERE {}").format(scope.identifier, where),
                        params).fetchone()[0]


def test_every_cutoff_of_the_demo_policies_has_rows_on_both_sides(scratch_db):
    section = load_config(DEFAULT_CONFIG_PATH).targets["appdb"].lifecycle
    with psycopg.connect(libpq_conninfo(scratch_db()), autocommit=True) as conn:
        demo_data.load(conn, 20, 42, NOW)
        infos, warnings = check_policies(conn, DEFAULT_CONFIG_PATH, "appdb", section.policies)
        assert warnings == []  # every time column leads an index
        end = demo_data.midnight_utc(NOW)
        sides = {}
        for policy in section.policies:
            for key in ("archive_after", "retention"):
                age = getattr(policy, key)
                if age is None:
                    continue
                scope = Scope("public", policy.table, infos[policy.table].primary_key, policy.time_column,
                              end - dt.timedelta(seconds=age), tuple(policy.filter))
                older, total = (count(conn, s) for s in (scope, replace(scope, cutoff=end + dt.timedelta(days=1))))
                sides[(policy.table, key)] = (older > 0, older < total)  # total: the rows the filter keeps
    assert sides and all(both == (True, True) for both in sides.values()), sides
    assert ("orders", "archive_after") in sides and ("user_sessions", "retention") in sides
