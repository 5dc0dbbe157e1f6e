"""Where a point-in-time restore may make its data directory: never inside or above a directory that
something else lives in (the source's cluster and tablespaces, the store, staging, Airflow, the project,
the system), symlinks resolved first. A copy inside the source's data directory would be copied by every
later base backup; one above a system directory could shadow or be confused with it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dbops.hooks.postgres import DbopsPostgresHook

# refused, and anything inside or above them ("/" itself is above every one)
SYSTEM_DIRS = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/boot", "/proc", "/sys", "/dev", "/run",
               "/var/run", "/var/lib/postgresql", "/var/lib/pgsql")
PROJECT = Path(__file__).resolve().parents[3]  # plugins/dbops/backup/<this> -> the project


class DestinationRefused(Exception):
    """The data directory asked for lies inside or above a protected directory."""


def server_paths(hook: DbopsPostgresHook) -> list[str]:
    """The data directory and tablespace locations of the server behind ``hook``; empty when they cannot be
    read (the server is down, or the role may not read ``data_directory``)."""
    try:
        paths = [hook.get_first("SHOW data_directory")[0]]
        paths += [row[0] for row in hook.get_records(
            "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')")]
    except Exception:  # best effort: the caller falls back to what the base backups recorded
        return []
    return [path for path in paths if path]


def protected_dirs(source: list[str], ops: list[str], store_root: Path | None, staging: Path) -> dict[str, str]:
    """``{directory: what it is}`` that a restore's data directory must be neither inside nor above."""
    found: dict[str, str] = {path: "a system directory" for path in SYSTEM_DIRS}
    found[str(PROJECT)] = "the dbops project"
    found[os.path.expanduser(os.environ.get("AIRFLOW_HOME", "~/airflow"))] = "the Airflow home"
    found[str(staging)] = "staging_dir"
    if store_root is not None:
        found[str(store_root)] = "the backup store"
    for path in ops:
        found[path] = "a directory of the ops database's server"
    for i, path in enumerate(source):
        found[path] = "the source's data directory" if i == 0 else "a tablespace of the source"
    return found


def check_destination(path: Path, protected: dict[str, str]) -> Path:
    """``path`` with its symlinks resolved, once it is neither inside nor above any ``protected`` directory.

    :raises DestinationRefused: naming the directory and what it is.
    """
    resolved = path.resolve()
    found = []  # (inside, depth, message): the innermost directory it is inside is named first
    for directory, what in protected.items():
        other = Path(directory).resolve()
        if resolved == other or resolved.is_relative_to(other):
            found.append((True, len(other.parts), f"{'is' if resolved == other else 'is inside'} {what} {other}"))
        elif other.is_relative_to(resolved):
            found.append((False, -len(other.parts), f"is above {what} {other}"))
    if found:
        shown = f"{path}" + (f" (resolved: {resolved})" if resolved != path else "")
        raise DestinationRefused(f"data_directory {shown} {max(found)[2]}: name a new directory outside it (nothing "
                                 "was changed)")
    return resolved
