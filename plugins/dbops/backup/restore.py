"""Restore a stored backup and prove it: checksums, pg_restore, row counts, constraints, amcheck."""

from __future__ import annotations

import hashlib
import re
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psycopg import sql

from dbops.backup.dump import constraints, count_rows
from dbops.hooks.postgres import DbopsPostgresHook
from dbops.hooks.store import BackupStore
from dbops.hooks.tools import PgTool, candidates, tool_version
from dbops.core.manifest import MANIFEST_NAME, Manifest
from dbops.core.processes import DEFAULT_TIMEOUT, run, tool_failed
from dbops.core.streams import ChecksumMismatch, read_decompressed


@dataclass
class Verification:
    ok: bool
    checks: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    restore_seconds: float | None = None


def read_manifest(store: BackupStore, prefix: str) -> Manifest | None:
    """The manifest of the backup at ``prefix``, or None when the backup is not complete."""
    key = f"{prefix}/{MANIFEST_NAME}"
    return Manifest.from_json(store.read_bytes(key)) if store.exists(key) else None


def fetch(store: BackupStore, manifest: Manifest, prefix: str, staging: Path, key: bytes | None) -> Path:
    """Download the backup's archive, check size and sha256, decrypt and decompress; return the archive
    (a file, or a directory for a directory-format dump)."""
    staging.mkdir(parents=True, exist_ok=True)
    (entry,) = manifest.files
    stored_size = store.size(f"{prefix}/{entry.name}")
    if stored_size != entry.bytes:
        raise ChecksumMismatch(f"{entry.name}: stored size {stored_size} differs from the manifest's {entry.bytes}")
    downloaded = staging / entry.name
    archive = staging / entry.name.removesuffix(".zst")
    store.get_file(f"{prefix}/{entry.name}", downloaded)
    try:
        read_decompressed(downloaded, archive, entry.sha256, key)
    finally:
        downloaded.unlink(missing_ok=True)
    if archive.suffix != ".tar":
        return archive
    directory = staging / "archive.d"  # a directory-format archive: pg_restore reads the directory
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    archive.unlink()
    return directory


def create_database(admin: DbopsPostgresHook, name: str, replace: bool = False, comment: str | None = None) -> None:
    """Create ``name`` (dropping it first when ``replace``) on the admin hook's server, with ``comment``."""
    with admin.get_conn() as conn:
        conn.autocommit = True
        if replace:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        if comment:
            conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)))


def drop_database(admin: DbopsPostgresHook, name: str) -> None:
    with admin.get_conn() as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def database_comment(admin: DbopsPostgresHook, name: str) -> str | None:
    """The comment of database ``name``; None when it has none or does not exist."""
    row = admin.get_first("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
                          parameters=(name,))
    return row[0] if row else None


def database_exists(admin: DbopsPostgresHook, name: str) -> bool:
    return admin.get_first("SELECT 1 FROM pg_database WHERE datname = %s", parameters=(name,)) is not None


def derived_name(database: str, suffix: str) -> str:
    """``<database><suffix>`` within PostgreSQL's 63 bytes: a long name is cut and tagged with its hash."""
    name = database + suffix
    if len(name.encode()) <= 63:
        return name
    tag = f"_{hashlib.sha1(database.encode()).hexdigest()[:8]}{suffix}"
    return database.encode()[:63 - len(tag.encode())].decode(errors="ignore") + tag


def swap_databases(admin: DbopsPostgresHook, new: str, database: str, retired: str) -> bool:
    """Put ``new`` in place of ``database``: the old one (if any) is renamed to ``retired`` first.

    The old database's sessions are terminated only here, just before its rename (renaming needs a
    database nobody is connected to); connections to it are refused from that moment. Return whether
    there was an old database. If a step fails, the old database gets its name and connections back.
    """
    with admin.get_conn() as conn:
        conn.autocommit = True
        old = sql.Identifier(database)
        replaced = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None
        renamed = False
        try:
            if replaced:
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(old))
                conn.execute("SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                             "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(old, sql.Identifier(retired)))
                renamed = True
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(new), old))
        except BaseException:
            if renamed:
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(retired), old))
            if replaced:
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(old))
            raise
    return replaced


def pg_restore(tool: PgTool, admin: DbopsPostgresHook, database: str, archive: Path, jobs: int,
               owners: bool = False, timeout: float = DEFAULT_TIMEOUT) -> float:
    """Restore ``archive`` into ``database`` with ``jobs`` parallel jobs; return seconds.

    With ``owners`` the objects keep their owners and grants (the roles must exist); without, they
    belong to the connecting role and carry no grants. A failure raises a classified ToolError.
    """
    started = time.monotonic()
    keep = [] if owners else ["--no-owner", "--no-privileges"]
    with admin.cli_environment(database) as env:
        result = run([tool.path, *keep, "--exit-on-error", f"--jobs={max(jobs, 1)}", f"--dbname={database}",
                      str(archive)], timeout, env)
    if result.returncode != 0:
        raise tool_failed("pg_restore", result.returncode, result.stderr)
    return time.monotonic() - started


# Words of pg_dump's SQL: a quoted identifier, or a run of anything but blanks, commas, parentheses, quotes.
_WORD = re.compile(r'"(?:[^"]|"")+"|[^\s,;()"]+')
_NOT_ROLES = {"WITH", "GRANT", "OPTION", "GRANTED", "BY", "CASCADE", "RESTRICT", "PUBLIC"}


def archive_roles(tool: PgTool, archive: Path, timeout: float = DEFAULT_TIMEOUT) -> set[str]:
    """Roles that own objects of ``archive`` or appear in its grants (from the SQL pg_restore would run)."""
    result = run([tool.path, "--schema-only", "--file=-", str(archive)], timeout, env={})
    if result.returncode != 0:
        raise tool_failed("pg_restore --schema-only", result.returncode, result.stderr)
    return {role for line in result.stdout.splitlines() for role in _roles_in(line)}


def _roles_in(line: str) -> list[str]:
    """Roles a line of pg_dump's SQL names as owner, grantor or grantee."""
    words = _WORD.findall(line)
    plain = ["" if word.startswith('"') else word.upper() for word in words]
    if line.startswith("SET SESSION AUTHORIZATION "):
        named = words[3:4]
    elif line.startswith("ALTER ") and plain[-3:-1] == ["OWNER", "TO"]:
        named = words[-1:]
    elif line.startswith(("GRANT ", "REVOKE ", "ALTER DEFAULT PRIVILEGES ")):
        last = max((i for i, word in enumerate(plain) if word in ("TO", "FROM")), default=len(words))
        named = [word for word, upper in zip(words[last + 1:], plain[last + 1:]) if upper not in _NOT_ROLES]
        if plain[3:5] == ["FOR", "ROLE"]:
            named.append(words[5])
    else:
        return []
    return [word[1:-1].replace('""', '"') if word.startswith('"') else word for word in named]


def missing_roles(admin: DbopsPostgresHook, roles: set[str]) -> list[str]:
    """Those of ``roles`` that do not exist on the admin hook's server."""
    existing = {row[0] for row in admin.get_records("SELECT rolname FROM pg_roles")}
    return sorted(roles - existing)


def check_restored(hook: DbopsPostgresHook, manifest: Manifest) -> dict[str, Any]:
    """Compare the restored database with the manifest's snapshot: every table's rows, every constraint
    present, and valid where it was valid in the source."""
    with hook.get_conn() as conn:
        restored = count_rows(conn)
        rows = constraints(conn)
    mismatched = {table: {"expected": manifest.tables.get(table), "restored": restored.get(table)}
                  for table in sorted(set(manifest.tables) | set(restored))
                  if manifest.tables.get(table) != restored.get(table)}
    if manifest.not_validated is None:  # older manifest: names as regclass printed them, qualified or not
        present = {name: valid for qualified, bare, valid in rows for name in (qualified, bare)}
        valid_in_source: set[str] = set()  # unknown; pg_restore rebuilds a constraint as it was dumped
    else:
        present = {qualified: valid for qualified, _, valid in rows}
        valid_in_source = set(manifest.constraints) - set(manifest.not_validated)
    missing = sorted(set(manifest.constraints) - set(present))
    invalid = sorted(name for name in valid_in_source & set(present) if not present[name])
    return {
        "row_counts": {"ok": not mismatched, "tables": len(manifest.tables), "rows": sum(restored.values()),
                       "mismatched": mismatched},
        "constraints": {"ok": not missing and not invalid, "count": len(manifest.constraints),
                        "missing": missing, "not_validated": invalid,
                        "not_validated_in_source": manifest.not_validated},
    }


def amcheck(admin: DbopsPostgresHook, database: str, jobs: int, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any]:
    """Run pg_amcheck on the restored database (indexes and heap), when a fitting one exists."""
    server_major = admin.server_version_num() // 10000
    usable = [path for path in candidates("pg_amcheck") if tool_version(path)[0] >= server_major]
    if not usable:
        return {"ok": True, "skipped": f"no pg_amcheck of version {server_major} or newer"}
    with admin.cli_environment(database) as env:
        result = run([usable[0], "--install-missing", f"--jobs={max(jobs, 1)}", f"--database={database}"],
                     timeout, env)
    return {"ok": result.returncode == 0, "output": (result.stdout + result.stderr).strip()[-2000:]}
