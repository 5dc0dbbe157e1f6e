"""Client-tool discovery by version, and CLI environments that keep the password out of argv."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from dbops.hooks.postgres import DbopsPostgresHook
from dbops.hooks.tools import ToolVersionError, candidates, embedded_bin_dir, find_tool, tool_version
from scripts import devstack

DEBIAN_15_BIN = "/usr/lib/postgresql/15/bin"


@pytest.fixture
def hook(pg_server):
    return DbopsPostgresHook(postgres_conn_id="pg_appdb")


def test_picks_a_tool_at_least_as_new_as_the_server(hook):
    server = hook.server_version_num()
    tool = find_tool("pg_dump", server)
    assert tool.major >= server // 10000
    assert tool_version(tool.path) == (tool.major, tool.minor)


def test_configured_bin_dir_is_searched_first():
    first = candidates("pg_dump", str(embedded_bin_dir()))[0]
    assert Path(first).parent == embedded_bin_dir()


def test_too_old_bin_dir_is_passed_over_for_a_newer_tool(hook):
    """Debian's PostgreSQL 15 client (on this machine image) cannot dump the 18 server."""
    tool = find_tool("pg_dump", hook.server_version_num(), bin_dir=DEBIAN_15_BIN)
    assert tool.major == 18 and not tool.path.startswith(DEBIAN_15_BIN)


def test_no_tool_new_enough_names_both_versions():
    with pytest.raises(ToolVersionError) as info:
        find_tool("pg_restore", 990001, bin_dir=DEBIAN_15_BIN)
    message = str(info.value)
    assert "pg_restore must be version 99 or newer for server 99.1" in message
    assert f"{DEBIAN_15_BIN}/pg_restore is 15." in message
    assert "is 18." in message
    assert "set tools.bin_dir" in message


def test_missing_tool_is_a_clear_error():
    with pytest.raises(ToolVersionError, match="no pg_frobnicate found"):
        find_tool("pg_frobnicate", 180000)


def test_cli_environment_keeps_the_password_out_of_argv_and_env(hook):
    password = devstack.pg_password()
    psql = find_tool("psql", hook.server_version_num()).path
    with hook.cli_environment() as env:
        passfile = env["PGPASSFILE"]
        assert oct(os.stat(passfile).st_mode & 0o777) == "0o600"
        assert password not in " ".join(f"{k}={v}" for k, v in env.items())
        assert not any(k.startswith("AIRFLOW_CONN_") for k in env)
        proc = subprocess.Popen([psql, "-XAtc", "SELECT current_database(), pg_sleep(0.5)"], env=env,
                                stdout=subprocess.PIPE, text=True)
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.startswith("appdb|")
    assert password not in argv
    assert not os.path.exists(passfile)
